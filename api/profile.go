package api

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/profile"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// ProfileSigner signs rendered profiles: the CA's profile-signing
// certificate, its key and the chain up to (not including) the root.
type ProfileSigner struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// maxSettingsBytes bounds the settings of one profile.
const maxSettingsBytes = 64 << 10

// RenderDeviceProfile implements pb.ProfileBundlesServer: the whole profile
// is rendered here, its payloads encrypted to the device's registered
// identity and signed, so the caller never holds a key or a password.
func (s *BundleService) RenderDeviceProfile(ctx context.Context, req *pb.RenderDeviceProfileRequest) (*pb.RenderDeviceProfileResponse, error) {
	if s.signer == nil {
		return nil, status.Error(codes.Unimplemented, "this server has no profile signer")
	}
	if len(req.GetSettings()) > maxSettingsBytes {
		return nil, status.Errorf(codes.InvalidArgument, "settings are larger than %d KiB", maxSettingsBytes>>10)
	}
	settings, err := profile.ParseSettings(req.GetSettings())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "settings: "+err.Error())
	}
	br := policy.BundleRequest{User: req.GetUser(), Device: req.GetDeviceId()}
	if br.Encoding, br.KeyTransport, err = wireOptions(req.GetEncoding(), req.GetKeyTransport()); err != nil {
		return nil, err
	}
	ui := profile.UserInfo{UPN: req.GetUpn(), PrimarySMTP: req.GetPrimarySmtp(), SAMAccountName: req.GetSamAccountName(),
		FullDomain: req.GetDomain(), NetBIOSDomain: req.GetNetbiosDomain()}
	var sums []string
	var recipient, notice string
	mc, err := s.policy.Sealed(ctx, br, func(b *policy.Bundle, encrypt func([]byte) ([]byte, error)) ([]byte, error) {
		for _, e := range b.Encryption {
			sums = append(sums, e.Metadata.SHA256)
		}
		recipient, notice = thumb(b.Recipient), b.EscrowNotice
		plain, err := profile.Render(profile.Input{Bundle: ProfileBundle(b), Settings: settings, User: ui,
			Organization: req.GetOrganization(), Encrypt: encrypt})
		if err != nil {
			return nil, err
		}
		return profile.Sign(plain, s.signer.Cert, s.signer.Key, s.signer.Chain)
	})
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return &pb.RenderDeviceProfileResponse{Mobileconfig: mc, RecipientSha256: recipient, EncryptionSha256: sums, KeyEscrowNotice: notice}, nil
}

// ProfileBundle is the renderer's view of a bundle: the SCEP reference, the
// chain and each re-wrapped certificate with its password.
func ProfileBundle(b *policy.Bundle) profile.Bundle {
	out := profile.Bundle{User: b.User, Device: b.Device, EscrowNotice: b.EscrowNotice,
		SCEP: profile.SCEPRef{URL: b.Signing.SCEPURL, Challenge: b.Signing.Challenge, CommonName: b.User,
			RFC822Name: b.Signing.RFC822Name, KeySize: b.Signing.KeySize, KeyType: b.Signing.KeyType,
			AppleKeyUsage: profile.AppleKeyUsage(b.Signing.KeyUsage), CAFingerprint: b.Signing.CAFingerprint.SHA1}}
	if len(b.Chain) == 2 {
		out.Root, out.Intermediate = b.Chain[0], b.Chain[1]
	}
	for _, e := range b.Encryption {
		out.Encryption = append(out.Encryption, profile.Identity{PFX: e.PFX, Password: e.Password, SHA1: e.Metadata.SHA1,
			Current: e.Current, Label: "until " + e.Metadata.NotAfter.Format(time.DateOnly)})
	}
	return out
}

func thumb(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}
