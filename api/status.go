package api

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/policy"
)

// kindCodes maps each kind of refusal to its gRPC code.
var kindCodes = map[policy.Kind]codes.Code{
	policy.KindInvalid:            codes.InvalidArgument,
	policy.KindNotFound:           codes.NotFound,
	policy.KindFailedPrecondition: codes.FailedPrecondition,
	policy.KindExhausted:          codes.ResourceExhausted,
	policy.KindDenied:             codes.PermissionDenied,
}

// statusFor maps a domain error to a gRPC status, once, here at the edge.
// Refusals say which rule and what to fix; anything else is logged and
// reported without detail.
func statusFor(ctx context.Context, log *slog.Logger, err error) error {
	switch {
	case errors.Is(err, policy.ErrUnavailable):
		return status.Error(codes.Unavailable, "Vault is unavailable; nothing was changed, retry later")
	case errors.Is(err, policy.ErrConflict):
		return status.Error(codes.Aborted, "too many concurrent changes to this user's escrow; retry")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "request canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	}
	if re, ok := policy.IsReject(err); ok {
		code, known := kindCodes[re.Reason.Kind()]
		if !known {
			code = codes.InvalidArgument
		}
		return status.Error(code, re.Reason.String()+": "+re.Detail)
	}
	log.ErrorContext(ctx, "api: internal error", "err", err)
	return status.Error(codes.Internal, "internal error; see the server log")
}
