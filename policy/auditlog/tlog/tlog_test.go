package tlog_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/tessera/client"

	"github.com/smimeca/smimeca/policy/auditlog/tlog"
)

// writeLog appends events to the log in dir signed by the key in keyDir
// and returns once a checkpoint commits to all the log holds (total).
func writeLog(t *testing.T, dir, keyDir string, events []string, total int) {
	t.Helper()
	signer, err := tlog.LoadOrCreateKey(keyDir, "test audit log")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l, err := tlog.Open(ctx, dir, signer, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		l.Append(ctx, []byte(e))
	}
	want := fmt.Sprintf("\n%d\n", total)
	deadline := time.Now().Add(20 * time.Second)
	for {
		cp, err := l.Checkpoint(ctx)
		if err == nil && bytes.Contains(cp, []byte(want)) {
			if _, err := os.Stat(filepath.Join(dir, tlog.HistoryDir, fmt.Sprint(total))); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			l.Close(ctx)
			t.Fatalf("no checkpoint of %d entries: %s %v", total, cp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func verify(t *testing.T, dir, keyDir string, history ...[]byte) (tlog.Report, []string, error) {
	t.Helper()
	vkey, err := os.ReadFile(filepath.Join(keyDir, tlog.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	v, err := tlog.NewVerifier(string(vkey))
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	r, err := tlog.Verify(context.Background(), client.FileFetcher{Root: dir}, v, history, func(_ uint64, e []byte) error {
		seen = append(seen, string(e))
		return nil
	})
	return r, seen, err
}

func events(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf(`{"action":"test.event","detail":"event %03d"}`, i))
	}
	return out
}

// bundlePath is the file holding the first entries (full or partial).
func bundlePath(t *testing.T, dir string) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, "tile", "entries", "000*"))
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil && fi.IsDir() {
			sub, _ := filepath.Glob(filepath.Join(m, "*"))
			matches = append(matches, sub...)
		}
	}
	// The partial bundle of the final size is the one the checkpoint names.
	var best string
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil && !fi.IsDir() && fi.Size() > 0 {
			best = m
		}
	}
	if best == "" {
		t.Fatalf("no entry bundle under %s", dir)
	}
	return best
}

// The log holds every event in order and verifies; the earlier checkpoints
// it kept verify as prefixes.
func TestLogVerifies(t *testing.T) {
	dir, keys := t.TempDir(), t.TempDir()
	all := events(40)
	writeLog(t, dir, keys, all[:25], 25)
	first, err := os.ReadFile(filepath.Join(dir, tlog.HistoryDir, "25"))
	if err != nil {
		t.Fatal(err)
	}
	writeLog(t, dir, keys, all[25:], 40)
	r, seen, err := verify(t, dir, keys, first)
	if err != nil {
		t.Fatal(err)
	}
	if r.Size != 40 || r.Extended != 1 || strings.Join(seen, "\n") != strings.Join(all, "\n") {
		t.Fatalf("report %+v, %d entries seen", r, len(seen))
	}
	if fi, _ := os.Stat(filepath.Join(keys, tlog.KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", fi.Mode())
	}
}

// One changed byte, one removed entry, and a checkpoint that does not
// extend an earlier one each fail, naming the entry or the checkpoint.
func TestVerifyFindsTampering(t *testing.T) {
	all := events(12)
	t.Run("changed byte", func(t *testing.T) {
		dir, keys := t.TempDir(), t.TempDir()
		writeLog(t, dir, keys, all, len(all))
		p := bundlePath(t, dir)
		b, _ := os.ReadFile(p)
		i := bytes.Index(b, []byte("event 007"))
		b[i+len("event 00")] = '8'
		os.WriteFile(p, b, 0o644)
		if _, _, err := verify(t, dir, keys); err == nil || !strings.Contains(err.Error(), "entry 7:") {
			t.Fatalf("a changed byte in entry 7: %v", err)
		}
	})
	t.Run("removed entry", func(t *testing.T) {
		dir, keys := t.TempDir(), t.TempDir()
		writeLog(t, dir, keys, all, len(all))
		p := bundlePath(t, dir)
		b, _ := os.ReadFile(p)
		// Entries are a 2-byte big-endian length and the bytes.
		var out []byte
		for i, off := 0, 0; off < len(b); i++ {
			n := int(binary.BigEndian.Uint16(b[off:]))
			if i != 4 {
				out = append(out, b[off:off+2+n]...)
			}
			off += 2 + n
		}
		os.WriteFile(p, out, 0o644)
		if _, _, err := verify(t, dir, keys); err == nil || !strings.Contains(err.Error(), "entry 4:") {
			t.Fatalf("entry 4 removed: %v", err)
		}
	})
	t.Run("forked checkpoint", func(t *testing.T) {
		dir, keys := t.TempDir(), t.TempDir()
		writeLog(t, dir, keys, all[:6], 6)
		published, _ := os.ReadFile(filepath.Join(dir, tlog.HistoryDir, "6"))
		// A holder of the key rewrites the log: other first events, more
		// of them, a valid checkpoint for the new tree.
		os.RemoveAll(dir)
		forked := append([]string{`{"action":"forged"}`}, all[1:]...)
		writeLog(t, dir, keys, forked, len(forked))
		if _, _, err := verify(t, dir, keys); err != nil {
			t.Fatalf("the forked log alone verifies (it is consistent): %v", err)
		}
		if _, _, err := verify(t, dir, keys, published); err == nil || !strings.Contains(err.Error(), "checkpoint of 6 entries") {
			t.Fatalf("the fork against the published checkpoint: %v", err)
		}
	})
	t.Run("other key", func(t *testing.T) {
		dir, keys := t.TempDir(), t.TempDir()
		writeLog(t, dir, keys, all[:3], 3)
		other := t.TempDir()
		tlog.LoadOrCreateKey(other, "test audit log")
		if _, _, err := verify(t, dir, other); err == nil || !strings.Contains(err.Error(), "does not verify") {
			t.Fatalf("another key: %v", err)
		}
	})
}
