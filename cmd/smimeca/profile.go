package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/profile"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

func profileCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "render" {
		return usagef("usage: smimeca profile render [--format mobileconfig|ddm|outlook-ios|outlook-android|windows|android] --user EMAIL --device ID --settings FILE.yaml --out FILE [--plain [--sign]]")
	}
	var r profileRender
	var settingsPath string
	var plain bool
	var ch channelFlags
	cf, ui := &r.cf, &r.ui
	f := newFlags("profile render")
	cf.register(f, "profile")
	f.fs.StringVar(&r.user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&r.device, "device", "", "device id (required)")
	f.fs.StringVar(&settingsPath, "settings", "", "e-mail settings, JSON or YAML with Graph iosEasEmailProfileConfiguration fields (required)")
	f.fs.StringVar(&r.out, "out", "", "output .mobileconfig (required; written 0600)")
	f.fs.StringVar(&r.org, "organization", "", "PayloadOrganization")
	f.fs.BoolVar(&plain, "plain", false, "LABS, ADMIN ONLY, AUDITED AS BREAK-GLASS: fetch the keys with their passwords and render here, unencrypted (default: the server renders the profile encrypted to the device and signed)")
	f.fs.BoolVar(&r.sign, "sign", false, "with --plain: sign the profile with the CA's profile-signing certificate")
	f.fs.StringVar(&r.signerDir, "signer-dir", filepath.Join(defaultDataDir(), "ca"), "directory with profile_signer.crt and intermediate_ca.crt (and the key, with --kms softkms)")
	f.fs.StringVar(&r.kms, "kms", envOr("SMIMECA_KMS", keystore.KMSSoft), "where the profile-signing key is: softkms (a file in --signer-dir) or the server's pkcs11: URI ($SMIMECA_KMS; PIN also from $SMIMECA_KMS_PIN)")
	f.fs.StringVar(&ui.UPN, "upn", "", "user principal name (default: the user address)")
	f.fs.StringVar(&ui.PrimarySMTP, "primary-smtp", "", "primary SMTP address (default: the user address)")
	f.fs.StringVar(&ui.SAMAccountName, "sam-account-name", "", "sAMAccountName, for usernameAADSource samAccountName")
	f.fs.StringVar(&ui.FullDomain, "domain", "", "full domain name, for DOMAIN\\user")
	f.fs.StringVar(&ui.NetBIOSDomain, "netbios-domain", "", "NetBIOS domain name, for DOMAIN\\user")
	ch.register(f)
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	if ch.format != "mobileconfig" {
		if plain || r.sign {
			return usagef("--plain and --sign go with --format mobileconfig only")
		}
		return ch.render(&r.cf, r.user, r.device, settingsPath, r.out, stdout)
	}
	if r.user == "" || r.device == "" || settingsPath == "" || r.out == "" {
		return usagef("profile render needs --user, --device, --settings and --out")
	}
	raw, err := os.ReadFile(settingsPath)
	if err != nil {
		return usagef("--settings: %v", err)
	}
	if r.settings, err = profile.ParseSettings(raw); err != nil {
		return usagef("%s: %v", settingsPath, err)
	}
	if plain {
		return r.plain(stdout)
	}
	if r.sign {
		return usagef("--sign goes with --plain: the server always signs the profiles it renders")
	}
	return r.onServer(raw, stdout)
}

// profileRender is one `profile render`.
type profileRender struct {
	cf                                     clientFlags
	user, device, out, org, signerDir, kms string
	ui                                     profile.UserInfo
	settings                               *profile.Settings
	sign                                   bool
}

// onServer has the server render the device's profile, encrypted to its
// identity and signed.
func (r *profileRender) onServer(raw []byte, stdout io.Writer) error {
	var resp *pb.RenderDeviceProfileResponse
	if err := r.cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewProfileBundlesClient(conn).RenderDeviceProfile(ctx, &pb.RenderDeviceProfileRequest{
			User: r.user, DeviceId: r.device, Settings: raw, Upn: r.ui.UPN, PrimarySmtp: r.ui.PrimarySMTP,
			SamAccountName: r.ui.SAMAccountName, Domain: r.ui.FullDomain, NetbiosDomain: r.ui.NetBIOSDomain, Organization: r.org})
		return err
	}); err != nil {
		return err
	}
	if err := os.WriteFile(r.out, resp.GetMobileconfig(), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: signed, payloads encrypted to device identity %s, %d encryption certificate(s)\n",
		r.out, resp.GetRecipientSha256(), len(resp.GetEncryptionSha256()))
	return nil
}

// plain fetches the keys with their passwords (a break-glass release) and
// renders the profile here, unencrypted, signed with --sign.
func (r *profileRender) plain(stdout io.Writer) error {
	cf, user, device, out, org, ui, settings, sign, kms, signerDir := &r.cf, r.user, r.device, r.out, r.org, r.ui, r.settings, r.sign, r.kms, r.signerDir
	// --plain is a break-glass release: the admin credentials by default.
	if cf.credentials == filepath.Join(defaultDataDir(), "credentials", "profile") {
		cf.credentials = filepath.Join(defaultDataDir(), "credentials", "admin")
	}
	var signer *x509.Certificate
	var signerKey crypto.Signer
	var chain []*x509.Certificate
	if sign {
		var inter *x509.Certificate
		keys, err := keystore.Open(kms, signerDir, os.Getenv(kmsPINEnv))
		if err != nil {
			return err
		}
		defer keys.Close()
		if signer, signerKey, inter, err = ca.ReadDelegated(signerDir, keys, keystore.Profile, profileSignerCertFile); err != nil {
			return fmt.Errorf("%w (pass --signer-dir DATA/ca and the server's --kms)", err)
		}
		chain = []*x509.Certificate{inter}
	}

	var resp *pb.GetUserBundleResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewProfileBundlesClient(conn).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: user, DeviceId: device,
			Format: pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12, BreakGlass: true, BreakGlassReason: "profile render --plain"})
		return err
	}); err != nil {
		return err
	}
	b, err := bundleFromProto(resp)
	if err != nil {
		return err
	}
	mc, err := profile.Render(profile.Input{Bundle: b, Settings: settings, User: ui, Organization: org})
	if err != nil {
		return usagef("%v", err)
	}
	if sign {
		if mc, err = profile.Sign(mc, signer, signerKey, chain); err != nil {
			return err
		}
	}
	if err := os.WriteFile(out, mc, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: SCEP signing identity, %d encryption certificate(s), Exchange account %s\n", out, len(b.Encryption), settings.HostName)
	return nil
}

func bundleFromProto(r *pb.GetUserBundleResponse) (profile.Bundle, error) {
	if len(r.GetCaChainDer()) != 2 {
		return profile.Bundle{}, fmt.Errorf("the bundle carries %d CA certificates, want root and issuing CA", len(r.GetCaChainDer()))
	}
	root, err := x509.ParseCertificate(r.GetCaChainDer()[0])
	if err != nil {
		return profile.Bundle{}, err
	}
	inter, err := x509.ParseCertificate(r.GetCaChainDer()[1])
	if err != nil {
		return profile.Bundle{}, err
	}
	s := r.GetSigning()
	b := profile.Bundle{
		User: r.GetUser(), Device: r.GetDeviceId(), Root: root, Intermediate: inter,
		SCEP: profile.SCEPRef{URL: s.GetScepUrl(), Challenge: s.GetChallenge(), CommonName: s.GetRfc822Name(),
			RFC822Name: s.GetRfc822Name(), KeySize: int(s.GetKeySize()), KeyType: s.GetKeyType(), AppleKeyUsage: int(s.GetAppleKeyUsage()),
			CAFingerprint: s.GetCaFingerprintSha1(),
			CAName:        inter.Subject.CommonName},
	}
	for _, e := range r.GetEncryptionCertificates() {
		m := e.GetMetadata()
		b.Encryption = append(b.Encryption, profile.Identity{
			PFX: e.GetPkcs12(), Password: e.GetPassword(), SHA1: m.GetSha1(), Current: e.GetCurrent(),
			Label: "until " + m.GetNotAfter().AsTime().Format(time.DateOnly),
		})
	}
	return b, nil
}

// profileSignerCertFile is the profile signer's certificate in the CA
// directory.
const profileSignerCertFile = "profile_signer.crt"

// profileSigner is the certificate that signs configuration profiles
// (RenderDeviceProfile, profile render --sign): issued by the intermediate
// for an ECDSA P-256 key in the CA's key store, valid five years and
// renewed at start-up within 60 days of its end.
func profileSigner(caName string) ca.Delegate {
	return ca.Delegate{
		Key: keystore.Profile, Spec: keystore.Spec{Type: ca.KeyTypeEC, Bits: 256},
		CertFile: profileSignerCertFile, What: "profile signing certificate",
		Template: x509.Certificate{
			Subject:  pkix.Name{CommonName: caName + " Profile Signing", Organization: []string{caName}},
			KeyUsage: x509.KeyUsageDigitalSignature,
		},
		Lifetime: 5 * 365 * 24 * time.Hour, RenewBefore: 60 * 24 * time.Hour,
	}
}
