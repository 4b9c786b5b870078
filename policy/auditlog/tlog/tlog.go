// Package tlog keeps the audit trail tamper-evident: every audit event is
// also an entry of a transparency log (Tessera's tlog-tiles layout on its
// POSIX storage) whose checkpoints smimeca signs, and Verify recomputes
// such a log offline from its files or its URL. It holds no rule: what is
// audited is policy's; the JSON-lines file (package auditlog) stays the
// durable record a release waits for.
package tlog

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
	"k8s.io/klog/v2"
)

// Files under a key directory.
const (
	// KeyFile holds the checkpoint signing key (a note signer key, 0600).
	KeyFile = "audit_log.key"
	// PublicKeyFile holds its verifier key (note format), which auditors
	// pass to Verify (smimeca audit verify --key).
	PublicKeyFile = "audit_log.pub"
	// HistoryDir, inside the log directory, keeps every checkpoint the
	// log published, named by tree size: Verify checks the log extends
	// each (a witness keeps its own copies).
	HistoryDir = "checkpoints"
)

// Timing of the log: entries are sequenced in batches at least every
// batchAge, and a new checkpoint is signed at most every checkpointEvery.
const (
	batchAge        = 100 * time.Millisecond
	checkpointEvery = time.Second
)

// LoadOrCreateKey returns the checkpoint signer kept in dir, creating on
// first use an Ed25519 key whose name — the log's origin line — is origin
// with every space or '+' made '-' (a note key name has neither).
func LoadOrCreateKey(dir, origin string) (note.Signer, error) {
	path := filepath.Join(dir, KeyFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		origin = strings.Map(func(r rune) rune {
			if unicode.IsSpace(r) || r == '+' {
				return '-'
			}
			return r
		}, origin)
		skey, vkey, err := note.GenerateKey(rand.Reader, origin)
		if err != nil {
			return nil, fmt.Errorf("tlog: checkpoint key: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, PublicKeyFile), []byte(vkey+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("tlog: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("tlog: %w", err)
		}
		if _, err := f.WriteString(skey + "\n"); err != nil {
			f.Close()
			return nil, fmt.Errorf("tlog: %w", err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("tlog: %w", err)
		}
		b = []byte(skey)
	} else if err != nil {
		return nil, fmt.Errorf("tlog: read the checkpoint key: %w", err)
	}
	s, err := note.NewSigner(string(bytes.TrimSpace(b)))
	if err != nil {
		return nil, fmt.Errorf("tlog: %s is not a note signer key", path)
	}
	return s, nil
}

// klogOnce sets klog's output once per process.
var klogOnce sync.Once

// Log appends audit events to the transparency log in dir.
type Log struct {
	add      tessera.AddFn
	reader   tessera.LogReader
	shutdown func(context.Context) error
	dir      string
	log      *slog.Logger
	stop     context.CancelFunc
	history  sync.WaitGroup
	// pending holds the futures of appended entries; one goroutine waits
	// for each in turn (drained closes when it is done).
	mu      sync.Mutex // guards closed and sends on pending
	closed  bool
	pending chan tessera.IndexFuture
	drained chan struct{}
}

// Open opens (creating) the log in dir, signing its checkpoints with
// signer. Several processes may share dir on a POSIX file system with
// advisory locks (Tessera's POSIX storage sequences under a lock on it).
func Open(ctx context.Context, dir string, signer note.Signer, logger *slog.Logger) (*Log, error) {
	if err := os.MkdirAll(filepath.Join(dir, HistoryDir), 0o755); err != nil {
		return nil, fmt.Errorf("tlog: %w", err)
	}
	// Tessera reports through klog, a process-wide logger that cannot be
	// set while in use: into the first Open's log (nowhere without one).
	klogOnce.Do(func() {
		if logger != nil {
			klog.SetSlogLogger(logger.With("component", "audit-tlog"))
		} else {
			klog.SetSlogLogger(slog.New(slog.DiscardHandler))
		}
	})
	// The appender's loops live until Close, not as long as ctx.
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	driver, err := posix.New(actx, posix.Config{Path: dir})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("tlog: storage: %w", err)
	}
	opts := tessera.NewAppendOptions().WithCheckpointSigner(signer).
		WithBatching(tessera.DefaultBatchMaxSize, batchAge).WithCheckpointInterval(checkpointEvery)
	app, shutdown, reader, err := tessera.NewAppender(actx, driver, opts)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("tlog: appender: %w", err)
	}
	l := &Log{add: app.Add, reader: reader, shutdown: shutdown, dir: dir, log: logger, stop: cancel,
		pending: make(chan tessera.IndexFuture, 1<<14), drained: make(chan struct{})}
	l.history.Add(1)
	go l.keepHistory(actx)
	go l.watch()
	return l, nil
}

// Append adds line as the log's next entry (entries keep the order of the
// calls). It does not wait for the entry to be sequenced (within
// batchAge); a failure is logged. After Close it does nothing.
func (l *Log) Append(ctx context.Context, line []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.pending <- l.add(context.WithoutCancel(ctx), tessera.NewEntry(append([]byte(nil), line...)))
}

// watch waits for every appended entry to be sequenced, logging failures.
func (l *Log) watch() {
	defer close(l.drained)
	for f := range l.pending {
		if _, err := f(); err != nil && l.log != nil {
			l.log.Error("audit transparency log: entry not appended", "err", err)
		}
	}
}

// Checkpoint returns the latest signed checkpoint.
func (l *Log) Checkpoint(ctx context.Context) ([]byte, error) { return l.reader.ReadCheckpoint(ctx) }

// Close waits (until ctx ends) for every appended entry to be sequenced,
// then shuts the log down: Tessera's shutdown integrates what was
// sequenced, but an entry still in its batch would be lost.
func (l *Log) Close(ctx context.Context) error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.pending)
	}
	l.mu.Unlock()
	var err error
	select {
	case <-l.drained:
	case <-ctx.Done():
		err = fmt.Errorf("tlog: entries still pending at shutdown: %w", ctx.Err())
	}
	if serr := l.shutdown(ctx); serr != nil && err == nil {
		err = serr
	}
	l.stop()
	l.history.Wait()
	return err
}

// keepHistory copies every new checkpoint into HistoryDir.
func (l *Log) keepHistory(ctx context.Context) {
	defer l.history.Done()
	t := time.NewTicker(checkpointEvery / 2)
	defer t.Stop()
	for {
		if cp, err := l.reader.ReadCheckpoint(ctx); err == nil {
			if err := l.saveCheckpoint(cp); err != nil && l.log != nil {
				l.log.Warn("audit transparency log: checkpoint history", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (l *Log) saveCheckpoint(cp []byte) error {
	c, _, err := parseUnverified(cp)
	if err != nil {
		return err
	}
	path := filepath.Join(l.dir, HistoryDir, strconv.FormatUint(c.Size, 10))
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, cp, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// parseUnverified reads a checkpoint's body without its signatures.
func parseUnverified(cp []byte) (log.Checkpoint, []byte, error) {
	var c log.Checkpoint
	body, _, ok := bytes.Cut(cp, []byte("\n\n"))
	if !ok {
		return c, nil, errors.New("tlog: not a signed checkpoint")
	}
	rest, err := c.Unmarshal(append(body, '\n'))
	if err != nil {
		return c, nil, fmt.Errorf("tlog: checkpoint: %w", err)
	}
	return c, rest, nil
}
