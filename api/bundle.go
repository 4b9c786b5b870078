package api

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smimeca/smimeca/escrow"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// BundlePolicy is what ProfileBundles needs; *policy.Bundles implements it.
type BundlePolicy interface {
	Bundle(ctx context.Context, req policy.BundleRequest) (*policy.Bundle, error)
}

// BundleService implements smimeca.v1.ProfileBundles.
type BundleService struct {
	pb.UnimplementedProfileBundlesServer
	policy BundlePolicy
	log    *slog.Logger
}

// NewBundleService returns the ProfileBundles service.
func NewBundleService(p BundlePolicy, log *slog.Logger) *BundleService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &BundleService{policy: p, log: log}
}

// GetUserBundle implements pb.ProfileBundlesServer.
func (s *BundleService) GetUserBundle(ctx context.Context, req *pb.GetUserBundleRequest) (*pb.GetUserBundleResponse, error) {
	br := policy.BundleRequest{User: req.GetUser(), Device: req.GetDeviceId(), Delivery: policy.DeliverPKCS12}
	switch req.GetFormat() {
	case pb.DeliveryFormat_DELIVERY_FORMAT_UNSPECIFIED, pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12:
	case pb.DeliveryFormat_DELIVERY_FORMAT_CMS:
		br.Delivery = policy.DeliverCMS
		if len(req.GetDeviceCertificateDer()) == 0 {
			return nil, status.Error(codes.InvalidArgument, "device_certificate_der is required with DELIVERY_FORMAT_CMS")
		}
		c, err := x509.ParseCertificate(req.GetDeviceCertificateDer())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "device_certificate_der is not a DER certificate")
		}
		br.DeviceCert = c
	default:
		return nil, status.Error(codes.InvalidArgument, "unknown delivery format")
	}
	switch req.GetEncoding() {
	case pb.Pkcs12Encoding_PKCS12_ENCODING_LEGACY:
		br.Encoding = pfxconnector.Legacy
	case pb.Pkcs12Encoding_PKCS12_ENCODING_MODERN:
		br.Encoding = pfxconnector.Modern
	default:
		return nil, status.Error(codes.InvalidArgument, "unknown PKCS#12 encoding")
	}
	b, err := s.policy.Bundle(ctx, br)
	if err != nil {
		if errors.Is(err, escrow.ErrUnavailable) {
			return nil, status.Error(codes.Unavailable, "Vault is unavailable; retry later")
		}
		return nil, statusFor(ctx, s.log, err)
	}
	sg := b.Signing
	out := &pb.GetUserBundleResponse{
		User: b.User, DeviceId: b.Device,
		Signing: &pb.SigningReference{
			ScepUrl: sg.SCEPURL, Challenge: sg.Challenge, ChallengeExpiresAt: timestamppb.New(sg.ExpiresAt),
			Subject: sg.Subject, Rfc822Name: sg.RFC822Name, KeySize: int32(sg.KeySize), KeyType: "RSA",
			AppleKeyUsage:       1,
			CaFingerprintSha256: sg.CAFingerprint.SHA256, CaFingerprintSha1: sg.CAFingerprint.SHA1, CaFingerprintMd5: sg.CAFingerprint.MD5,
			IssuedSerials: sg.IssuedSerials,
		},
		EncryptionCertificates: make([]*pb.EncryptionCertificate, 0, len(b.Encryption)),
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
	return out, nil
}
