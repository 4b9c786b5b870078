package policy

import (
	"context"
	"log/slog"
	"time"
)

// Actor is who asked for an action: an API caller (role and certificate
// name) or a device over SCEP.
type Actor struct {
	Role string `json:"role"`
	Name string `json:"name"`
}

type actorKey struct{}

// WithActor returns ctx carrying the actor on whose behalf policy acts.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor carried by ctx, or the zero Actor.
func ActorFrom(ctx context.Context) Actor {
	a, _ := ctx.Value(actorKey{}).(Actor)
	return a
}

// Event is one audit record. It never holds a secret: no challenge, key or
// password, only identifiers and thumbprints.
type Event struct {
	Time    time.Time `json:"time"`
	Actor   Actor     `json:"actor"`
	Action  string    `json:"action"`
	User    string    `json:"user,omitempty"`
	Device  string    `json:"device,omitempty"`
	Serials []string  `json:"serials,omitempty"`
	SHA256  []string  `json:"sha256,omitempty"`
	Result  string    `json:"result"`
	Detail  string    `json:"detail,omitempty"`
}

// Audit actions.
const (
	ActionChallengeCreate = "challenge.create"
	ActionEnroll          = "certificate.enroll"
	ActionRenew           = "certificate.renew"
	ActionRevoke          = "certificate.revoke"
	ActionRevokeDevice    = "device.revoke"
)

// Auditor records audit events. Implementations must not block for long and
// must not fail the action; they report their own trouble.
type Auditor interface {
	Audit(ctx context.Context, e Event)
}

// LogAuditor writes audit events to a slog logger under the "audit" group.
type LogAuditor struct{ Logger *slog.Logger }

// Audit implements Auditor.
func (l LogAuditor) Audit(ctx context.Context, e Event) {
	if l.Logger == nil {
		return
	}
	l.Logger.LogAttrs(ctx, slog.LevelInfo, "audit",
		slog.String("action", e.Action),
		slog.String("actor_role", e.Actor.Role),
		slog.String("actor", e.Actor.Name),
		slog.String("user", e.User),
		slog.String("device", e.Device),
		slog.Any("serials", e.Serials),
		slog.String("result", e.Result),
		slog.String("detail", e.Detail),
	)
}
