package api

import (
	"context"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// EnrollmentPolicy is what the Enrollment service needs from policy;
// *policy.Enrollment implements it.
type EnrollmentPolicy interface {
	CreateChallenge(ctx context.Context, user, device string, ttl time.Duration) (policy.NewChallenge, error)
	ListCertificates(ctx context.Context, f policy.Filter) ([]policy.CertificateStatus, error)
	RevokeCertificate(ctx context.Context, serial string, reasonCode int, reason string) (policy.Issued, error)
	RevokeDevice(ctx context.Context, user, device string, reasonCode int, reason string) ([]string, error)
}

// EnrollmentService implements smimeca.v1.Enrollment.
type EnrollmentService struct {
	pb.UnimplementedEnrollmentServer
	policy  EnrollmentPolicy
	scepURL string
	log     *slog.Logger
}

// NewEnrollmentService returns the Enrollment service. scepURL is returned
// with every challenge.
func NewEnrollmentService(p EnrollmentPolicy, scepURL string, log *slog.Logger) *EnrollmentService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &EnrollmentService{policy: p, scepURL: scepURL, log: log}
}

// CreateChallenge implements pb.EnrollmentServer.
func (s *EnrollmentService) CreateChallenge(ctx context.Context, req *pb.CreateChallengeRequest) (*pb.CreateChallengeResponse, error) {
	if req.GetTtlSeconds() < 0 {
		return nil, status.Error(codes.InvalidArgument, "ttl_seconds must not be negative")
	}
	c, err := s.policy.CreateChallenge(ctx, req.GetUser(), req.GetDeviceId(), time.Duration(req.GetTtlSeconds())*time.Second)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &pb.CreateChallengeResponse{
		Challenge: c.Secret, User: c.User, DeviceId: c.Device,
		ExpiresAt: timestamppb.New(c.ExpiresAt), ScepUrl: s.scepURL,
	}, nil
}

// ListCertificates implements pb.EnrollmentServer.
func (s *EnrollmentService) ListCertificates(ctx context.Context, req *pb.ListCertificatesRequest) (*pb.ListCertificatesResponse, error) {
	certs, err := s.policy.ListCertificates(ctx, policy.Filter{User: req.GetUser(), Device: req.GetDeviceId()})
	if err != nil {
		return nil, s.status(ctx, err)
	}
	out := &pb.ListCertificatesResponse{Certificates: make([]*pb.Certificate, 0, len(certs))}
	for _, c := range certs {
		pc := certificateToProto(c.Issued)
		pc.Revoked = c.Revoked
		out.Certificates = append(out.Certificates, pc)
	}
	return out, nil
}

// RevokeCertificate implements pb.EnrollmentServer.
func (s *EnrollmentService) RevokeCertificate(ctx context.Context, req *pb.RevokeCertificateRequest) (*pb.RevokeCertificateResponse, error) {
	rec, err := s.policy.RevokeCertificate(ctx, req.GetSerial(), int(req.GetReason()), req.GetComment())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	pc := certificateToProto(rec)
	pc.Revoked = true
	return &pb.RevokeCertificateResponse{Certificate: pc}, nil
}

// RevokeDevice implements pb.EnrollmentServer.
func (s *EnrollmentService) RevokeDevice(ctx context.Context, req *pb.RevokeDeviceRequest) (*pb.RevokeDeviceResponse, error) {
	serials, err := s.policy.RevokeDevice(ctx, req.GetUser(), req.GetDeviceId(), int(req.GetReason()), req.GetComment())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &pb.RevokeDeviceResponse{RevokedSerials: serials}, nil
}

func certificateToProto(r policy.Issued) *pb.Certificate {
	return &pb.Certificate{
		Serial: r.Serial, SerialHex: serialHex(r.Serial), User: r.User, DeviceId: r.Device,
		NotBefore: timestamppb.New(r.NotBefore), NotAfter: timestamppb.New(r.NotAfter),
		IssuedAt: timestamppb.New(r.IssuedAt), RenewedFrom: r.RenewedFrom, Sha256: r.SHA256,
	}
}

func serialHex(dec string) string {
	n, ok := new(big.Int).SetString(dec, 10)
	if !ok {
		return ""
	}
	return strings.ToUpper(n.Text(16))
}

// status maps a domain error to a gRPC status.
func (s *EnrollmentService) status(ctx context.Context, err error) error {
	return statusFor(ctx, s.log, err)
}
