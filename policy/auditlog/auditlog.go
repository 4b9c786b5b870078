// Package auditlog writes policy's audit events where they are kept: a
// JSON-lines file synced before a key release is answered (File), and the
// server's log (Log). policy decides what is audited; this package only
// writes.
package auditlog

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/smimeca/smimeca/policy"
)

// Log writes audit events to a slog logger under the "audit" group.
type Log struct{ Logger *slog.Logger }

// Audit implements policy.Auditor.
func (l Log) Audit(ctx context.Context, e policy.Event) {
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

// File appends audit events as JSON lines to a file (mode 0600). Each
// event is one write of one line, so lines never interleave.
type File struct {
	mu      sync.Mutex // guards writes and written
	f       *os.File
	log     *slog.Logger
	written uint64 // lines written
	// syncMu serialises syncs; synced is the number of lines the last
	// sync covered. Concurrent Records share one sync: the first waiter
	// syncs every line written so far, those behind it find theirs covered.
	syncMu sync.Mutex
	synced uint64
	// mirror, when set, gets every line, in the file's order (Mirror).
	mirror func(ctx context.Context, line []byte)
}

// Mirror sends every line written from now on, in the file's order, to
// mirror too (the transparency log, package tlog); it must not block.
// Call it before the file is used.
func (a *File) Mirror(mirror func(ctx context.Context, line []byte)) { a.mirror = mirror }

// Open opens (creating) the audit file at path for appending. Trouble
// writing later is reported to log, never to the audited action; Record
// reports it, so that what must be audited is not done.
func Open(path string, log *slog.Logger) (*File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("auditlog: file: %w", err)
	}
	return &File{f: f, log: log}, nil
}

// Audit implements policy.Auditor.
func (a *File) Audit(ctx context.Context, e policy.Event) {
	if _, err := a.write(ctx, e); err != nil && a.log != nil {
		a.log.Error("audit file write failed", "err", err, "action", e.Action)
	}
}

// Record implements policy.Recorder: the event is written and synced to disk
// before it returns nil. Concurrent Records share syncs.
func (a *File) Record(ctx context.Context, e policy.Event) error {
	mine, err := a.write(ctx, e)
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
		return fmt.Errorf("auditlog: file sync: %w", err)
	}
	a.synced = target
	return nil
}

// write appends e as one line and returns the number of lines written so
// far, its own included.
func (a *File) write(ctx context.Context, e policy.Event) (uint64, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("auditlog: event: %w", err)
	}
	b = append(b, '\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(b); err != nil {
		return 0, fmt.Errorf("auditlog: file: %w", err)
	}
	if a.mirror != nil {
		a.mirror(ctx, b[:len(b)-1])
	}
	a.written++
	return a.written, nil
}

// Close closes the file.
func (a *File) Close() error { return a.f.Close() }

// Record implements policy.Recorder; a log line is not durable, so it never fails
// the action (a File beside it is what makes a release durable).
func (l Log) Record(ctx context.Context, e policy.Event) error {
	l.Audit(ctx, e)
	return nil
}
