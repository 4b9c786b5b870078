package nosqlstore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

func open(t *testing.T) *nosqlstore.Store {
	t.Helper()
	db, err := ca.OpenDatabase(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	s, err := nosqlstore.New(db.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Concurrent enrolments of one device (renewals racing a new enrolment)
// must all land in the device's record.
func TestConcurrentRecordsOfOneDevice(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	const n = 50
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rec := policy.Issued{Serial: fmt.Sprint(1000 + i), User: "a@example.com", Device: "dev", IssuedAt: time.Now()}
			if err := s.RecordIssued(ctx, rec); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	list, err := s.ListIssued(ctx, policy.Filter{Device: "dev"})
	if err != nil || len(list) != n {
		t.Fatalf("%d records, %v; want %d", len(list), err, n)
	}
	for i := 0; i < n; i++ {
		r, err := s.IssuedBySerial(ctx, fmt.Sprint(1000+i))
		if err != nil || r.Device != "dev" {
			t.Fatalf("serial %d: %+v %v", 1000+i, r, err)
		}
	}
	if _, err := s.IssuedBySerial(ctx, "1"); err != policy.ErrNotFound {
		t.Errorf("unknown serial: %v", err)
	}
	if err := s.RecordIssued(ctx, policy.Issued{Serial: "7", User: "b@example.com", Device: "other", IssuedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	byUser, _ := s.ListIssued(ctx, policy.Filter{User: "b@example.com"})
	all, _ := s.ListIssued(ctx, policy.Filter{User: "a@example.com"})
	if len(byUser) != 1 || len(all) != n {
		t.Errorf("by user: %d and %d", len(byUser), len(all))
	}
}
