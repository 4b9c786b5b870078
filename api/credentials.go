package api

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// CredentialPolicy is what the Credentials service needs;
// *policy.Credentials implements it.
type CredentialPolicy interface {
	Issue(ctx context.Context, name, role string, ttl time.Duration, csr *x509.CertificateRequest) (policy.Credential, *x509.Certificate, error)
	Revoke(ctx context.Context, name string) ([]policy.Credential, error)
	RevokeSerial(ctx context.Context, serial string) (policy.Credential, error)
	List(ctx context.Context) ([]policy.Credential, error)
}

// CredentialService implements smimeca.v1.Credentials.
type CredentialService struct {
	pb.UnimplementedCredentialsServer
	policy CredentialPolicy
	apiCA  *x509.Certificate
	log    *slog.Logger
}

// NewCredentialService returns the Credentials service; apiCA is returned
// with each new credential.
func NewCredentialService(p CredentialPolicy, apiCA *x509.Certificate, log *slog.Logger) *CredentialService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &CredentialService{policy: p, apiCA: apiCA, log: log}
}

// IssueCredential implements pb.CredentialsServer.
func (s *CredentialService) IssueCredential(ctx context.Context, req *pb.IssueCredentialRequest) (*pb.IssueCredentialResponse, error) {
	if req.GetTtlSeconds() < 0 {
		return nil, status.Error(codes.InvalidArgument, "ttl_seconds must not be negative")
	}
	if len(req.GetCsrDer()) > 16<<10 {
		return nil, status.Error(codes.InvalidArgument, "csr_der is larger than 16 KiB")
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsrDer())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "csr_der is not a DER PKCS#10 request")
	}
	cred, crt, err := s.policy.Issue(ctx, req.GetName(), req.GetRole(), time.Duration(req.GetTtlSeconds())*time.Second, csr)
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return &pb.IssueCredentialResponse{Credential: credentialToProto(cred), CertificateDer: crt.Raw, CaDer: s.apiCA.Raw}, nil
}

// ListCredentials implements pb.CredentialsServer.
func (s *CredentialService) ListCredentials(ctx context.Context, _ *pb.ListCredentialsRequest) (*pb.ListCredentialsResponse, error) {
	list, err := s.policy.List(ctx)
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	out := &pb.ListCredentialsResponse{}
	for _, c := range list {
		out.Credentials = append(out.Credentials, credentialToProto(c))
	}
	return out, nil
}

// RevokeCredential implements pb.CredentialsServer.
func (s *CredentialService) RevokeCredential(ctx context.Context, req *pb.RevokeCredentialRequest) (*pb.RevokeCredentialResponse, error) {
	var revoked []policy.Credential
	var err error
	switch {
	case (req.GetName() == "") == (req.GetSerial() == ""):
		return nil, status.Error(codes.InvalidArgument, "give either name (every live serial of it) or serial (that one credential)")
	case req.GetSerial() != "":
		var c policy.Credential
		if c, err = s.policy.RevokeSerial(ctx, req.GetSerial()); err == nil {
			revoked = []policy.Credential{c}
		}
	default:
		revoked, err = s.policy.Revoke(ctx, req.GetName())
	}
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	out := &pb.RevokeCredentialResponse{}
	for _, c := range revoked {
		out.Revoked = append(out.Revoked, credentialToProto(c))
	}
	return out, nil
}

func credentialToProto(c policy.Credential) *pb.Credential {
	out := &pb.Credential{Name: c.Name, Role: c.Role, Serial: c.Serial, Sha256: c.SHA256,
		IssuedAt: timestamppb.New(c.IssuedAt), ExpiresAt: timestamppb.New(c.ExpiresAt), IssuedBy: c.IssuedBy, RevokedBy: c.RevokedBy}
	if c.Revoked() {
		out.RevokedAt = timestamppb.New(c.RevokedAt)
	}
	return out
}
