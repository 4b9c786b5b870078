package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
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

// FileAuditor appends audit events as JSON lines to a file (mode 0600).
// Each event is one write of one line, so lines never interleave.
type FileAuditor struct {
	mu  sync.Mutex
	f   *os.File
	log *slog.Logger
}

// OpenFileAuditor opens (creating) the audit file at path for appending.
// Trouble writing later is reported to log, never to the audited action.
func OpenFileAuditor(path string, log *slog.Logger) (*FileAuditor, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("policy: audit file: %w", err)
	}
	return &FileAuditor{f: f, log: log}, nil
}

// Audit implements Auditor.
func (a *FileAuditor) Audit(_ context.Context, e Event) {
	b, err := json.Marshal(e)
	if err == nil {
		b = append(b, '\n')
		a.mu.Lock()
		_, err = a.f.Write(b)
		a.mu.Unlock()
	}
	if err != nil && a.log != nil {
		a.log.Error("audit file write failed", "err", err, "action", e.Action)
	}
}

// Close closes the file.
func (a *FileAuditor) Close() error { return a.f.Close() }

// Auditors sends each event to every auditor in turn.
type Auditors []Auditor

// Audit implements Auditor.
func (as Auditors) Audit(ctx context.Context, e Event) {
	for _, a := range as {
		a.Audit(ctx, e)
	}
}
