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
	// Name is the credential's name (the API caller's identity) or, for a
	// device, what identifies it.
	Name string `json:"name"`
	// Credential is the serial (hex) of the API credential that called.
	Credential string `json:"credential,omitempty"`
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
	// Recipient is the SHA-256 of the certificate released keys were
	// encrypted to ("" for an administrator's plain break-glass release).
	Recipient string `json:"recipient_sha256,omitempty"`
	Result    string `json:"result"`
	Detail    string `json:"detail,omitempty"`
	// EscrowNotice records that a key release told the subscriber that
	// the released keys are escrowed (KeyEscrowNotice).
	EscrowNotice bool `json:"escrow_notice_given,omitempty"`
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

// Recorder is an Auditor that reports whether an event was durably
// recorded. A key is released only after its event was recorded: no audit,
// no release.
type Recorder interface {
	Auditor
	Record(ctx context.Context, e Event) error
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
		slog.String("credential", e.Actor.Credential),
		slog.String("user", e.User),
		slog.String("device", e.Device),
		slog.Any("serials", e.Serials),
		slog.Any("sha256", e.SHA256),
		slog.String("recipient_sha256", e.Recipient),
		slog.String("result", e.Result),
		slog.String("detail", e.Detail),
	)
}

// FileAuditor appends audit events as JSON lines to a file (mode 0600).
// Each event is one write of one line, so lines never interleave.
type FileAuditor struct {
	mu      sync.Mutex // guards writes and written
	f       *os.File
	log     *slog.Logger
	written uint64 // lines written
	// syncMu serialises syncs; synced is the number of lines the last
	// sync covered. Concurrent Records share one sync: the first waiter
	// syncs every line written so far, those behind it find theirs covered.
	syncMu sync.Mutex
	synced uint64
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
func (a *FileAuditor) Audit(ctx context.Context, e Event) {
	if _, err := a.write(e); err != nil && a.log != nil {
		a.log.Error("audit file write failed", "err", err, "action", e.Action)
	}
}

// Record implements Recorder: the event is written and synced to disk
// before it returns nil. Concurrent Records share syncs.
func (a *FileAuditor) Record(_ context.Context, e Event) error {
	mine, err := a.write(e)
	if err != nil {
		return err
	}
	a.syncMu.Lock()
	defer a.syncMu.Unlock()
	if a.synced >= mine {
		return nil
	}
	a.mu.Lock()
	target := a.written
	a.mu.Unlock()
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("policy: audit file sync: %w", err)
	}
	a.synced = target
	return nil
}

// write appends e as one line and returns the number of lines written so
// far, its own included.
func (a *FileAuditor) write(e Event) (uint64, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("policy: audit event: %w", err)
	}
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(b); err != nil {
		return 0, fmt.Errorf("policy: audit file: %w", err)
	}
	a.written++
	return a.written, nil
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

// Record implements Recorder: every Recorder among them must record the
// event (the others are told as by Audit); the first failure is returned.
func (as Auditors) Record(ctx context.Context, e Event) error {
	var first error
	for _, a := range as {
		if r, ok := a.(Recorder); ok {
			if err := r.Record(ctx, e); err != nil && first == nil {
				first = err
			}
			continue
		}
		a.Audit(ctx, e)
	}
	return first
}

// Record implements Recorder; a log line is not durable, so it never fails
// the action (a FileAuditor beside it is what makes a release durable).
func (l LogAuditor) Record(ctx context.Context, e Event) error {
	l.Audit(ctx, e)
	return nil
}
