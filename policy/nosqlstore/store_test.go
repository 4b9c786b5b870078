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
			if err := s.RecordIssued(ctx, rec, policy.Commit{}); err != nil {
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
	if err := s.RecordIssued(ctx, policy.Issued{Serial: "7", User: "b@example.com", Device: "other", IssuedAt: time.Now()}, policy.Commit{}); err != nil {
		t.Fatal(err)
	}
	byUser, _ := s.ListIssued(ctx, policy.Filter{User: "b@example.com"})
	all, _ := s.ListIssued(ctx, policy.Filter{User: "a@example.com"})
	if len(byUser) != 1 || len(all) != n {
		t.Errorf("by user: %d and %d", len(byUser), len(all))
	}
}

// A challenge pays for one certificate: of concurrent issuances using it
// exactly one is recorded; the others store nothing and are told it was
// used. The challenge then reads as used.
func TestRecordIssuedUsesTheChallengeOnce(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	hash := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now().UTC()
	if err := s.PutChallenge(ctx, hash, policy.Challenge{User: "a@example.com", Device: "d", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			rec := policy.Issued{Serial: fmt.Sprint(500 + i), User: "a@example.com", Device: fmt.Sprintf("d%d", i), IssuedAt: now}
			errs[i] = s.RecordIssued(ctx, rec, policy.Commit{Challenge: hash, At: now})
		}(i)
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		_, lookupErr := s.IssuedBySerial(ctx, fmt.Sprint(500+i))
		if err == nil {
			won++
			if lookupErr != nil {
				t.Errorf("winner %d not recorded: %v", i, lookupErr)
			}
			continue
		}
		if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonChallengeUsed {
			t.Errorf("loser %d: %v, want ReasonChallengeUsed", i, err)
		}
		if lookupErr != policy.ErrNotFound {
			t.Errorf("loser %d was recorded: %v", i, lookupErr)
		}
	}
	if won != 1 {
		t.Fatalf("%d issuances used one challenge", won)
	}
	c, err := s.Challenge(ctx, hash)
	if err != nil || c.ConsumedAt.IsZero() || c.User != "a@example.com" {
		t.Fatalf("challenge after use: %+v %v", c, err)
	}
	// Used challenges are purged like expired ones.
	if n, err := s.PurgeChallenges(now.Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("purge: %d %v", n, err)
	}
	if _, err := s.Challenge(ctx, hash); err != policy.ErrNotFound {
		t.Errorf("after purge: %v", err)
	}
}

// A record written before used challenges moved to their own table (still
// in the challenge table, with ConsumedAt set) is refused as used.
func TestLegacyConsumedChallengeIsRefused(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	hash := []byte("legacy-challenge-hash-0123456789")
	now := time.Now().UTC()
	if err := s.PutChallenge(ctx, hash, policy.Challenge{User: "a@example.com", Device: "d", ExpiresAt: now.Add(time.Hour), ConsumedAt: now}); err != nil {
		t.Fatal(err)
	}
	err := s.RecordIssued(ctx, policy.Issued{Serial: "9", User: "a@example.com", Device: "d"}, policy.Commit{Challenge: hash, At: now})
	if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonChallengeUsed {
		t.Fatalf("%v, want ReasonChallengeUsed", err)
	}
	if _, err := s.IssuedBySerial(ctx, "9"); err != policy.ErrNotFound {
		t.Errorf("recorded: %v", err)
	}
}
