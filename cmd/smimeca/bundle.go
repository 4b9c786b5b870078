package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"

	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"google.golang.org/grpc"
)

// bundleFile is DIR/bundle.json.
type bundleFile struct {
	User    string `json:"user"`
	Device  string `json:"device"`
	Signing struct {
		SCEPURL   string `json:"scep_url"`
		Challenge string `json:"challenge,omitempty"`
		// ChallengeFile is the challenge enveloped to the device (CMS).
		ChallengeFile       string   `json:"challenge_file,omitempty"`
		ChallengeExpiresAt  string   `json:"challenge_expires_at"`
		Subject             string   `json:"subject"`
		RFC822Name          string   `json:"rfc822_name"`
		KeySize             int32    `json:"key_size"`
		KeyType             string   `json:"key_type"`
		AppleKeyUsage       int32    `json:"apple_key_usage"`
		CAFingerprintSHA256 string   `json:"ca_fingerprint_sha256"`
		CAFingerprintSHA1   string   `json:"ca_fingerprint_sha1"`
		CAFingerprintMD5    string   `json:"ca_fingerprint_md5"`
		IssuedSerials       []string `json:"issued_serials"`
	} `json:"signing"`
	Encryption []bundleEntry `json:"encryption"`
	CAFile     string        `json:"ca_file"`
	// RecipientSHA256 is the device identity certificate the passwords
	// are encrypted to (CMS delivery).
	RecipientSHA256 string `json:"recipient_sha256,omitempty"`
	// KeyEscrowNotice tells the user that the encryption keys are escrowed.
	KeyEscrowNotice string `json:"key_escrow_notice,omitempty"`
}

type bundleEntry struct {
	File                  string   `json:"file"`
	Password              string   `json:"password,omitempty"`
	EnvelopedPasswordFile string   `json:"enveloped_password_file,omitempty"`
	Current               bool     `json:"current"`
	Expired               bool     `json:"expired"`
	SHA1                  string   `json:"sha1"`
	SHA256                string   `json:"sha256"`
	Serial                string   `json:"serial"`
	Emails                []string `json:"emails"`
	NotAfter              string   `json:"not_after"`
}

func bundleCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "get" {
		return usagef("usage: smimeca bundle get --user EMAIL --device ID --out DIR [--key-transport pkcs1|oaep] [--encoding legacy|modern] [--break-glass --reason R]")
	}
	var cf clientFlags
	var user, device, out, encoding, transport, reason string
	var breakGlass bool
	f := newFlags("bundle get")
	cf.register(f, "profile")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&device, "device", "", "registered device id (required)")
	f.fs.StringVar(&out, "out", "", "output directory (required; created 0700)")
	f.fs.StringVar(&transport, "key-transport", "pkcs1", "how each password's envelope key is encrypted to the device identity: pkcs1 (iOS, openssl) or oaep (RSA-OAEP SHA-256)")
	f.fs.StringVar(&encoding, "encoding", "legacy", "PKCS#12 encoding: legacy (3DES, iOS) or modern (AES-256)")
	f.fs.BoolVar(&breakGlass, "break-glass", false, "ADMIN ONLY, AUDITED: plain PKCS#12 files with their passwords instead of envelopes to the device (needs --reason and admin --credentials)")
	f.fs.StringVar(&reason, "reason", "", "why a break-glass release is needed (recorded in the audit trail)")
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	if user == "" || device == "" || out == "" {
		return usagef("bundle get needs --user, --device and --out")
	}
	req := &pb.GetUserBundleRequest{User: user, DeviceId: device, Format: pb.DeliveryFormat_DELIVERY_FORMAT_CMS}
	if breakGlass {
		if reason == "" {
			return usagef("--break-glass needs --reason")
		}
		req.Format, req.BreakGlass, req.BreakGlassReason = pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12, true, reason
	}
	switch transport {
	case "pkcs1":
	case "oaep":
		req.KeyTransport = pb.KeyTransport_KEY_TRANSPORT_RSA_OAEP_SHA256
	default:
		return usagef("--key-transport %q: use pkcs1 or oaep", transport)
	}
	switch encoding {
	case "legacy":
	case "modern":
		req.Encoding = pb.Pkcs12Encoding_PKCS12_ENCODING_MODERN
	default:
		return usagef("--encoding %q: use legacy or modern", encoding)
	}
	var resp *pb.GetUserBundleResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewProfileBundlesClient(conn).GetUserBundle(ctx, req)
		return err
	}); err != nil {
		return err
	}
	return writeBundle(out, resp, stdout)
}

// writeBundle writes a bundle into out: bundle.json, the enveloped
// challenge, each PKCS#12 with its enveloped password (or, break-glass,
// the password in bundle.json), and the CA chain.
func writeBundle(out string, resp *pb.GetUserBundleResponse, stdout io.Writer) error {
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	var bf bundleFile
	bf.User, bf.Device = resp.GetUser(), resp.GetDeviceId()
	s := resp.GetSigning()
	bf.Signing.SCEPURL, bf.Signing.Challenge = s.GetScepUrl(), s.GetChallenge()
	bf.Signing.ChallengeExpiresAt = s.GetChallengeExpiresAt().AsTime().Format("2006-01-02T15:04:05Z07:00")
	bf.Signing.Subject, bf.Signing.RFC822Name = s.GetSubject(), s.GetRfc822Name()
	bf.Signing.KeySize, bf.Signing.KeyType, bf.Signing.AppleKeyUsage = s.GetKeySize(), s.GetKeyType(), s.GetAppleKeyUsage()
	bf.Signing.CAFingerprintSHA256 = hex.EncodeToString(s.GetCaFingerprintSha256())
	bf.Signing.CAFingerprintSHA1 = hex.EncodeToString(s.GetCaFingerprintSha1())
	bf.Signing.CAFingerprintMD5 = hex.EncodeToString(s.GetCaFingerprintMd5())
	bf.Signing.IssuedSerials = s.GetIssuedSerials()
	if len(s.GetEnvelopedChallenge()) > 0 {
		bf.Signing.ChallengeFile = "challenge.cms"
		if err := os.WriteFile(filepath.Join(out, bf.Signing.ChallengeFile), s.GetEnvelopedChallenge(), 0o600); err != nil {
			return err
		}
	}
	bf.Encryption = []bundleEntry{}
	for _, e := range resp.GetEncryptionCertificates() {
		m := e.GetMetadata()
		be := bundleEntry{File: m.GetSha1() + ".p12", Password: e.GetPassword(), Current: e.GetCurrent(), Expired: m.GetExpired(),
			SHA1: m.GetSha1(), SHA256: m.GetSha256(), Serial: m.GetSerial(), Emails: m.GetEmails(),
			NotAfter: m.GetNotAfter().AsTime().Format("2006-01-02T15:04:05Z07:00")}
		if err := os.WriteFile(filepath.Join(out, be.File), e.GetPkcs12(), 0o600); err != nil {
			return err
		}
		if len(e.GetEnvelopedPassword()) > 0 {
			be.EnvelopedPasswordFile = m.GetSha1() + ".password.cms"
			if err := os.WriteFile(filepath.Join(out, be.EnvelopedPasswordFile), e.GetEnvelopedPassword(), 0o600); err != nil {
				return err
			}
		}
		bf.Encryption = append(bf.Encryption, be)
	}
	var caPEM []byte
	for _, der := range resp.GetCaChainDer() {
		caPEM = append(caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	bf.CAFile, bf.RecipientSHA256, bf.KeyEscrowNotice = "ca.pem", resp.GetRecipientSha256(), resp.GetKeyEscrowNotice()
	if err := os.WriteFile(filepath.Join(out, bf.CAFile), caPEM, 0o644); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(bf, "", "  ")
	if err := os.WriteFile(filepath.Join(out, "bundle.json"), append(b, '\n'), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: signing reference, %d encryption certificate(s), CA chain\n", out, len(bf.Encryption))
	return nil
}
