package auditlog_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/auditlog"
)

// Records from many goroutines all land, one JSON line each, and a Record
// that cannot write reports it (so the release it guards does not happen).
func TestFileRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a, err := auditlog.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = a.Record(ctx, policy.Event{Action: policy.ActionKeyRelease, User: fmt.Sprintf("u%d@example.com", i), Result: "ok"})
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e policy.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		seen[e.User] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct events in the file, want %d", len(seen), n)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("audit file mode %o", st.Mode().Perm())
	}
	a.Close()
	if err := a.Record(ctx, policy.Event{Action: policy.ActionKeyRelease}); err == nil {
		t.Error("a Record on a closed file reported success")
	}
}
