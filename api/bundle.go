package api

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/profile"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// BundlePolicy is what ProfileBundles needs; *policy.Bundles implements it.
type BundlePolicy interface {
	Bundle(ctx context.Context, req policy.BundleRequest) (*policy.Bundle, error)
	Sealed(ctx context.Context, req policy.BundleRequest, seal policy.Sealer) ([]byte, error)
}

// BundleService implements smimeca.v1.ProfileBundles.
type BundleService struct {
	pb.UnimplementedProfileBundlesServer
	policy   BundlePolicy
	signer   *ProfileSigner
	log      *slog.Logger
	delivery DeliveryConfig
}

// NewBundleService returns the ProfileBundles service; signer signs the
// profiles RenderDeviceProfile renders (nil: that RPC is unimplemented).
func NewBundleService(p BundlePolicy, signer *ProfileSigner, log *slog.Logger) *BundleService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BundleService{policy: p, signer: signer, log: log}
}

// wireOptions maps the PKCS#12 encoding and key transport of a request.
func wireOptions(enc pb.Pkcs12Encoding, kt pb.KeyTransport) (policy.PKCS12Encoding, policy.KeyTransport, error) {
	var e policy.PKCS12Encoding
	var k policy.KeyTransport
	switch enc {
	case pb.Pkcs12Encoding_PKCS12_ENCODING_LEGACY:
		e = policy.EncodingLegacy
	case pb.Pkcs12Encoding_PKCS12_ENCODING_MODERN:
		e = policy.EncodingModern
	default:
		return e, k, status.Error(codes.InvalidArgument, "unknown PKCS#12 encoding")
	}
	switch kt {
	case pb.KeyTransport_KEY_TRANSPORT_RSA_PKCS1V15:
		k = policy.TransportPKCS1v15
	case pb.KeyTransport_KEY_TRANSPORT_RSA_OAEP_SHA256:
		k = policy.TransportOAEPSHA256
	default:
		return e, k, status.Error(codes.InvalidArgument, "unknown key transport")
	}
	return e, k, nil
}

// GetUserBundle implements pb.ProfileBundlesServer. Keys go out only
// encrypted to the device's registered identity; plain PKCS#12 is an
// administrator's break-glass release.
func (s *BundleService) GetUserBundle(ctx context.Context, req *pb.GetUserBundleRequest) (*pb.GetUserBundleResponse, error) {
	//lint:ignore SA1019 the deprecated field is read only to refuse it
	if len(req.GetDeviceCertificateDer()) > 0 {
		return nil, status.Error(codes.InvalidArgument, "device_certificate_der is not accepted: keys are only encrypted to the identity certificate registered for the device (Devices/RegisterDevice); leave it empty")
	}
	br := policy.BundleRequest{User: req.GetUser(), Device: req.GetDeviceId(), Delivery: policy.DeliverCMS,
		BreakGlass: req.GetBreakGlass(), BreakGlassReason: req.GetBreakGlassReason()}
	switch req.GetFormat() {
	case pb.DeliveryFormat_DELIVERY_FORMAT_UNSPECIFIED, pb.DeliveryFormat_DELIVERY_FORMAT_CMS:
		if br.BreakGlass {
			return nil, status.Error(codes.InvalidArgument, "break_glass goes with DELIVERY_FORMAT_PKCS12 only")
		}
	case pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12:
		br.Delivery = policy.DeliverPKCS12
	default:
		return nil, status.Error(codes.InvalidArgument, "unknown delivery format")
	}
	if br.BreakGlass {
		if policy.ActorFrom(ctx).Role != string(RoleAdmin) {
			return nil, status.Error(codes.PermissionDenied, "only an admin credential may ask for a break-glass release")
		}
		if strings.TrimSpace(br.BreakGlassReason) == "" {
			return nil, status.Error(codes.InvalidArgument, "break_glass_reason is required: say why the keys leave in the clear")
		}
	}
	var err error
	if br.Encoding, br.KeyTransport, err = wireOptions(req.GetEncoding(), req.GetKeyTransport()); err != nil {
		return nil, err
	}
	b, err := s.policy.Bundle(ctx, br)
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	sg := b.Signing
	out := &pb.GetUserBundleResponse{
		User: b.User, DeviceId: b.Device,
		Signing: &pb.SigningReference{
			ScepUrl: sg.SCEPURL, Challenge: sg.Challenge, EnvelopedChallenge: sg.EnvelopedChallenge, ChallengeExpiresAt: timestamppb.New(sg.ExpiresAt),
			Subject: sg.Subject, Rfc822Name: sg.RFC822Name, KeySize: int32(sg.KeySize), KeyType: sg.KeyType,
			AppleKeyUsage:       int32(profile.AppleKeyUsage(sg.KeyUsage)),
			CaFingerprintSha256: sg.CAFingerprint.SHA256, CaFingerprintSha1: sg.CAFingerprint.SHA1, CaFingerprintMd5: sg.CAFingerprint.MD5,
			IssuedSerials: sg.IssuedSerials,
		},
		EncryptionCertificates: make([]*pb.EncryptionCertificate, 0, len(b.Encryption)),
		KeyEscrowNotice:        b.EscrowNotice,
	}
	now := time.Now()
	for _, e := range b.Encryption {
		out.EncryptionCertificates = append(out.EncryptionCertificates, &pb.EncryptionCertificate{
			Metadata: escrowedToProto(e.Metadata, now), Pkcs12: e.PFX, Password: e.Password,
			EnvelopedPassword: e.EnvelopedPassword, Current: e.Current,
		})
	}
	for _, c := range b.Chain {
		out.CaChainDer = append(out.CaChainDer, c.Raw)
	}
	if b.Recipient != nil {
		out.RecipientCertificateDer, out.RecipientSha256 = b.Recipient.Raw, thumb(b.Recipient)
	}
	return out, nil
}
