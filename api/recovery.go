package api

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// RecoveryPolicy is what the KeyRecovery service needs; *policy.Recoveries
// implements it.
type RecoveryPolicy interface {
	Request(ctx context.Context, user string, thumbprints []string, reason string, recipientDER []byte) (policy.RecoveryRequest, error)
	Vote(ctx context.Context, id string, approve bool, comment string) (policy.RecoveryRequest, error)
	Download(ctx context.Context, id string) ([]byte, policy.RecoveryRequest, error)
	Get(ctx context.Context, id string) (policy.RecoveryRequest, error)
	List(ctx context.Context, user string) ([]policy.RecoveryRequest, error)
}

// RecoveryService implements smimeca.v1.KeyRecovery.
type RecoveryService struct {
	pb.UnimplementedKeyRecoveryServer
	policy RecoveryPolicy
	log    *slog.Logger
}

// NewRecoveryService returns the KeyRecovery service.
func NewRecoveryService(p RecoveryPolicy, log *slog.Logger) *RecoveryService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &RecoveryService{policy: p, log: log}
}

// maxThumbprints bounds a request's thumbprint list.
const maxThumbprints = 256

// RequestRecovery implements pb.KeyRecoveryServer.
func (s *RecoveryService) RequestRecovery(ctx context.Context, req *pb.RequestRecoveryRequest) (*pb.Recovery, error) {
	if len(req.GetThumbprints()) > maxThumbprints {
		return nil, status.Errorf(codes.InvalidArgument, "at most %d thumbprints", maxThumbprints)
	}
	r, err := s.policy.Request(ctx, req.GetUser(), req.GetThumbprints(), req.GetReason(), req.GetRecipientCertificateDer())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return recoveryToProto(r), nil
}

// ApproveRecovery implements pb.KeyRecoveryServer.
func (s *RecoveryService) ApproveRecovery(ctx context.Context, req *pb.VoteRecoveryRequest) (*pb.Recovery, error) {
	return s.vote(ctx, req, true)
}

// RejectRecovery implements pb.KeyRecoveryServer.
func (s *RecoveryService) RejectRecovery(ctx context.Context, req *pb.VoteRecoveryRequest) (*pb.Recovery, error) {
	return s.vote(ctx, req, false)
}

func (s *RecoveryService) vote(ctx context.Context, req *pb.VoteRecoveryRequest, approve bool) (*pb.Recovery, error) {
	r, err := s.policy.Vote(ctx, req.GetId(), approve, req.GetComment())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return recoveryToProto(r), nil
}

// ListRecoveries implements pb.KeyRecoveryServer.
func (s *RecoveryService) ListRecoveries(ctx context.Context, req *pb.ListRecoveriesRequest) (*pb.ListRecoveriesResponse, error) {
	list, err := s.policy.List(ctx, req.GetUser())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	out := &pb.ListRecoveriesResponse{}
	for _, r := range list {
		out.Recoveries = append(out.Recoveries, recoveryToProto(r))
	}
	return out, nil
}

// GetRecovery implements pb.KeyRecoveryServer.
func (s *RecoveryService) GetRecovery(ctx context.Context, req *pb.GetRecoveryRequest) (*pb.Recovery, error) {
	r, err := s.policy.Get(ctx, req.GetId())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return recoveryToProto(r), nil
}

// DownloadRecovery implements pb.KeyRecoveryServer.
func (s *RecoveryService) DownloadRecovery(ctx context.Context, req *pb.DownloadRecoveryRequest) (*pb.DownloadRecoveryResponse, error) {
	env, r, err := s.policy.Download(ctx, req.GetId())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return &pb.DownloadRecoveryResponse{EnvelopedData: env, Thumbprints: r.Thumbprints}, nil
}

func recoveryToProto(r policy.RecoveryRequest) *pb.Recovery {
	out := &pb.Recovery{Id: r.ID, User: r.User, Thumbprints: r.Thumbprints, Reason: r.Reason,
		RequesterName: r.Requester.Name, RequesterSerial: r.Requester.Credential, RecipientSha256: r.RecipientSHA256(),
		CreatedAt: timestamppb.New(r.CreatedAt), Deadline: timestamppb.New(r.Deadline), Quorum: int32(r.Quorum), State: r.State}
	if !r.ReleasedAt.IsZero() {
		out.ReleasedAt = timestamppb.New(r.ReleasedAt)
	}
	for _, v := range r.Votes {
		out.Votes = append(out.Votes, &pb.RecoveryVote{ApproverName: v.Approver.Name, ApproverSerial: v.Approver.Credential,
			Approve: v.Approve, Comment: v.Comment, At: timestamppb.New(v.At)})
	}
	return out
}
