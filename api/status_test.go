package api

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/policy"
)

// Every refusal's gRPC code, pinned by the reason's stable name: a new
// reason fails here until its code is chosen, and a changed kind shows.
func TestStatusForEveryReason(t *testing.T) {
	want := map[string]codes.Code{
		"bad-user":                    codes.InvalidArgument,
		"bad-device":                  codes.InvalidArgument,
		"domain-not-allowed":          codes.InvalidArgument,
		"bad-ttl":                     codes.InvalidArgument,
		"challenge-missing":           codes.InvalidArgument,
		"challenge-unknown":           codes.InvalidArgument,
		"challenge-expired":           codes.InvalidArgument,
		"challenge-used":              codes.InvalidArgument,
		"bad-csr":                     codes.InvalidArgument,
		"weak-key":                    codes.InvalidArgument,
		"name-not-bound":              codes.InvalidArgument,
		"renewal-not-authorized":      codes.InvalidArgument,
		"unknown-certificate":         codes.NotFound,
		"already-revoked":             codes.FailedPrecondition,
		"bad-serial":                  codes.InvalidArgument,
		"bad-reason-code":             codes.InvalidArgument,
		"unknown-device":              codes.NotFound,
		"device-retired":              codes.FailedPrecondition,
		"bad-identity-certificate":    codes.InvalidArgument,
		"no-identity-certificate":     codes.FailedPrecondition,
		"bad-format":                  codes.InvalidArgument,
		"bad-device-certificate":      codes.InvalidArgument,
		"break-glass-required":        codes.PermissionDenied,
		"break-glass-off":             codes.FailedPrecondition,
		"bad-recipient-certificate":   codes.InvalidArgument,
		"unknown-recovery":            codes.NotFound,
		"recovery-closed":             codes.FailedPrecondition,
		"self-approval":               codes.PermissionDenied,
		"double-vote":                 codes.FailedPrecondition,
		"not-requester":               codes.PermissionDenied,
		"bad-pfx":                     codes.InvalidArgument,
		"wrong-password":              codes.InvalidArgument,
		"no-private-key":              codes.InvalidArgument,
		"key-mismatch":                codes.InvalidArgument,
		"ca-certificate":              codes.InvalidArgument,
		"cannot-encrypt":              codes.InvalidArgument,
		"user-mismatch":               codes.InvalidArgument,
		"bad-purpose":                 codes.InvalidArgument,
		"bad-thumbprint":              codes.InvalidArgument,
		"not-escrowed":                codes.NotFound,
		"entry-full":                  codes.ResourceExhausted,
		"bad-credential-request":      codes.InvalidArgument,
		"credential-exists":           codes.FailedPrecondition,
		"unknown-credential":          codes.NotFound,
		"bad-intune-record":           codes.InvalidArgument,
		"bad-text":                    codes.InvalidArgument,
		"identity-in-use":             codes.FailedPrecondition,
		"identity-change-needs-rekey": codes.FailedPrecondition,
		"identity-on-hold":            codes.FailedPrecondition,
		"challenge-refused":           codes.PermissionDenied,
		"challenge-unverified":        codes.FailedPrecondition,
		"issue-failed":                codes.FailedPrecondition,
		"not-the-device-identity":     codes.PermissionDenied,
		"bad-asset":                   codes.InvalidArgument,
	}
	log := slog.New(slog.DiscardHandler)
	seen := map[string]bool{}
	for _, r := range policy.Reasons() {
		name := r.String()
		if seen[name] || strings.HasPrefix(name, "reason(") {
			t.Errorf("reason %d: name %q not unique or missing", int(r), name)
		}
		seen[name] = true
		code, ok := want[name]
		if !ok {
			t.Errorf("reason %q has no pinned gRPC code", name)
			continue
		}
		err := statusFor(context.Background(), log, fmt.Errorf("wrapped: %w", &policy.RejectError{Reason: r, Detail: "what to fix"}))
		st, _ := status.FromError(err)
		if st.Code() != code || !strings.HasPrefix(st.Message(), name+": what to fix") {
			t.Errorf("%s: %s %q, want %s", name, st.Code(), st.Message(), code)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d reasons, %d pinned", len(seen), len(want))
	}
}
