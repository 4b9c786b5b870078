package tlog_test

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/smimeca/smimeca/policy/auditlog/tlog"
)

// BenchmarkAppend appends b.N audit-sized events (an enrolment's event is
// ≈ 450 bytes of JSON) and waits until they are in the tree; it reports
// the log's bytes on disk per event (what a million events cost in disk is
// that × 10⁶).
func BenchmarkAppend(b *testing.B) {
	dir, keys := b.TempDir(), b.TempDir()
	signer, err := tlog.LoadOrCreateKey(keys, "bench")
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	l, err := tlog.Open(ctx, dir, signer, nil)
	if err != nil {
		b.Fatal(err)
	}
	event := fmt.Sprintf(`{"time":"2026-12-03T10:00:00.000000000Z","actor":{"role":"device","name":"scep transaction %064d"},"action":"certificate.enroll","user":"alice.example@example.com","device":"8f14e45f-ceea-467f-a8f6-1d2b3c4d5e6f","serials":["%038d"],"sha256":["%064d"],"result":"ok","detail":"issued for challenge created by admin (serial 4BDD448D147FAD967871A2666A8EDE51)"}`, 0, 0, 0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.Append(ctx, []byte(event))
	}
	if err := l.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	var size int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	b.ReportMetric(float64(size)/float64(b.N), "disk-bytes/event")
	b.ReportMetric(float64(len(event)), "event-bytes")
}
