package api

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// EscrowPolicy is what EscrowAdmin needs from policy; *policy.Escrow
// implements it.
type EscrowPolicy interface {
	ConnectorKey() *rsa.PublicKey
	// ConnectorHashes lists the OAEP hashes the connector key decrypts with.
	ConnectorHashes() []string
	Import(ctx context.Context, req policy.ImportRequest) (policy.ImportResult, error)
	ImportIntune(ctx context.Context, record []byte) (policy.ImportResult, error)
	List(ctx context.Context, user string) ([]policy.Escrowed, error)
	Delete(ctx context.Context, user, thumbprint string) (policy.Escrowed, error)
	Purge(ctx context.Context, user string) ([]policy.Escrowed, error)
	Revoke(ctx context.Context, user, thumbprint, reason string) (policy.Escrowed, error)
}

// EscrowService implements smimeca.v1.EscrowAdmin.
type EscrowService struct {
	pb.UnimplementedEscrowAdminServer
	policy EscrowPolicy
	// sync reconciles the published directory (nil: none configured).
	sync DirectorySync
	// intuneSync fills Intune's imported-PFX store (nil: not configured).
	intuneSync IntuneSync
	log        *slog.Logger
	now        func() time.Time
}

// NewEscrowService returns the EscrowAdmin service.
func NewEscrowService(p EscrowPolicy, log *slog.Logger) *EscrowService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &EscrowService{policy: p, log: log, now: time.Now}
}

// GetConnectorKey implements pb.EscrowAdminServer.
func (s *EscrowService) GetConnectorKey(context.Context, *pb.GetConnectorKeyRequest) (*pb.GetConnectorKeyResponse, error) {
	der, err := x509.MarshalPKIXPublicKey(s.policy.ConnectorKey())
	if err != nil {
		return nil, status.Error(codes.Internal, "internal error")
	}
	sum := sha256.Sum256(der)
	return &pb.GetConnectorKeyResponse{
		PublicKeyPem: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})),
		KeyId:        hex.EncodeToString(sum[:]),
		OaepHashes:   s.policy.ConnectorHashes(),
	}, nil
}

var passwordHashes = map[pb.PasswordHash]string{
	pb.PasswordHash_PASSWORD_HASH_UNSPECIFIED: "SHA256",
	pb.PasswordHash_PASSWORD_HASH_SHA256:      "SHA256",
	pb.PasswordHash_PASSWORD_HASH_SHA384:      "SHA384",
	pb.PasswordHash_PASSWORD_HASH_SHA512:      "SHA512",
	pb.PasswordHash_PASSWORD_HASH_SHA1:        "SHA1",
}

// ImportPfx implements pb.EscrowAdminServer.
func (s *EscrowService) ImportPfx(ctx context.Context, req *pb.ImportPfxRequest) (*pb.ImportPfxResponse, error) {
	h, ok := passwordHashes[req.GetPasswordHash()]
	if !ok {
		return nil, status.Error(codes.InvalidArgument, "password_hash: use SHA256, SHA384, SHA512 or SHA1")
	}
	res, err := s.policy.Import(ctx, policy.ImportRequest{
		User: req.GetUser(), PFX: req.GetPfx(), Password: req.GetPassword(),
		EncryptedPassword: req.GetEncryptedPassword(), PasswordHash: h, Purpose: req.GetPurpose(),
	})
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return s.importResponse(res), nil
}

func (s *EscrowService) importResponse(res policy.ImportResult) *pb.ImportPfxResponse {
	return &pb.ImportPfxResponse{Certificate: s.toProto(res.Metadata), Duplicate: res.Duplicate, Expired: res.Expired}
}

// ImportIntunePfx implements pb.EscrowAdminServer.
func (s *EscrowService) ImportIntunePfx(ctx context.Context, req *pb.ImportIntunePfxRequest) (*pb.ImportPfxResponse, error) {
	res, err := s.policy.ImportIntune(ctx, req.GetRecord())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return s.importResponse(res), nil
}

// ListUserCertificates implements pb.EscrowAdminServer.
func (s *EscrowService) ListUserCertificates(ctx context.Context, req *pb.ListUserCertificatesRequest) (*pb.ListUserCertificatesResponse, error) {
	list, err := s.policy.List(ctx, req.GetUser())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	out := &pb.ListUserCertificatesResponse{Certificates: make([]*pb.EscrowedCertificate, 0, len(list))}
	for _, m := range list {
		out.Certificates = append(out.Certificates, s.toProto(m))
	}
	return out, nil
}

// DeleteUserCertificate implements pb.EscrowAdminServer.
func (s *EscrowService) DeleteUserCertificate(ctx context.Context, req *pb.DeleteUserCertificateRequest) (*pb.DeleteUserCertificateResponse, error) {
	m, err := s.policy.Delete(ctx, req.GetUser(), req.GetThumbprint())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &pb.DeleteUserCertificateResponse{Certificate: s.toProto(m)}, nil
}

// PurgeUser implements pb.EscrowAdminServer.
func (s *EscrowService) PurgeUser(ctx context.Context, req *pb.PurgeUserRequest) (*pb.PurgeUserResponse, error) {
	list, err := s.policy.Purge(ctx, req.GetUser())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	out := &pb.PurgeUserResponse{}
	for _, m := range list {
		out.Purged = append(out.Purged, s.toProto(m))
	}
	return out, nil
}

func (s *EscrowService) toProto(m policy.Escrowed) *pb.EscrowedCertificate {
	return escrowedToProto(m, s.now())
}

// escrowedToProto converts escrow metadata; expired is judged at now.
func escrowedToProto(m policy.Escrowed, now time.Time) *pb.EscrowedCertificate {
	out := &pb.EscrowedCertificate{
		Sha1: m.SHA1, Sha256: m.SHA256, Serial: m.Serial, Issuer: m.Issuer, Subject: m.Subject,
		Emails: m.Emails, NotBefore: timestamppb.New(m.NotBefore), NotAfter: timestamppb.New(m.NotAfter),
		Purpose: m.Purpose, ImportedAt: timestamppb.New(m.ImportedAt), ImportedBy: m.ImportedBy,
		Expired: now.After(m.NotAfter), RevocationReason: m.RevocationReason,
	}
	if !m.RevokedAt.IsZero() {
		out.RevokedAt = timestamppb.New(m.RevokedAt)
	}
	return out
}

// DirectorySync reconciles a published recipient directory with the escrow.
type DirectorySync func(ctx context.Context) (*pb.SyncDirectoryResponse, error)

// SetDirectorySync enables SyncDirectory.
func (s *EscrowService) SetDirectorySync(f DirectorySync) { s.sync = f }

// SyncDirectory implements pb.EscrowAdminServer.
func (s *EscrowService) SyncDirectory(ctx context.Context, _ *pb.SyncDirectoryRequest) (*pb.SyncDirectoryResponse, error) {
	if s.sync == nil {
		return nil, status.Error(codes.FailedPrecondition, "no directory to publish to is configured (--ldap-publish-url)")
	}
	res, err := s.sync(ctx)
	if err != nil {
		s.log.Warn("directory sync", "err", err)
		return res, status.Error(codes.Unavailable, "the directory or the escrow could not be reached; see the server log, then run it again")
	}
	return res, nil
}

// IntuneSync is what SyncIntune runs (*policy.PFXSync).
type IntuneSync interface {
	SyncUser(ctx context.Context, user string) (policy.SyncResult, error)
	SyncAll(ctx context.Context, progress func(done, total int)) (policy.SyncResult, error)
}

// SetIntuneSync enables SyncIntune.
func (s *EscrowService) SetIntuneSync(f IntuneSync) { s.intuneSync = f }

// SyncIntune implements pb.EscrowAdminServer.
func (s *EscrowService) SyncIntune(req *pb.SyncIntuneRequest, stream pb.EscrowAdmin_SyncIntuneServer) error {
	if s.intuneSync == nil {
		return status.Error(codes.FailedPrecondition, "Intune's imported-PFX store is not configured (--intune-tenant and --intune-pfx-connector-key)")
	}
	if (req.GetUser() == "") == !req.GetAll() {
		return status.Error(codes.InvalidArgument, "name one user, or ask for all")
	}
	ctx := stream.Context()
	var res policy.SyncResult
	var err error
	if req.GetAll() {
		res, err = s.intuneSync.SyncAll(ctx, func(done, total int) {
			stream.Send(&pb.SyncIntuneProgress{Done: int32(done), Total: int32(total)})
		})
	} else {
		res, err = s.intuneSync.SyncUser(ctx, req.GetUser())
	}
	if err != nil {
		if _, ok := policy.IsReject(err); ok {
			return s.status(ctx, err)
		}
		s.log.Warn("intune sync", "err", err)
		return status.Error(codes.Unavailable, "Intune, the escrow or the audit could not be reached; see the server log, then run it again (what was done stays done)")
	}
	return stream.Send(&pb.SyncIntuneProgress{Done: int32(res.Users), Total: int32(res.Users), Report: &pb.SyncIntuneReport{
		Users: int32(res.Users), Uploaded: int32(res.Uploaded), Present: int32(res.Present), Deleted: int32(res.Deleted),
		Failed: int32(res.Failed), Errors: res.Errors}})
}

// RevokeUserCertificate implements pb.EscrowAdminServer.
func (s *EscrowService) RevokeUserCertificate(ctx context.Context, req *pb.RevokeUserCertificateRequest) (*pb.RevokeUserCertificateResponse, error) {
	m, err := s.policy.Revoke(ctx, req.GetUser(), req.GetThumbprint(), req.GetReason())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &pb.RevokeUserCertificateResponse{Certificate: s.toProto(m)}, nil
}

func (s *EscrowService) status(ctx context.Context, err error) error {
	return statusFor(ctx, s.log, err)
}
