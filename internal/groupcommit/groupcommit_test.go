package groupcommit_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/internal/groupcommit"
)

var table = []byte("t")

// countingDB counts the transactions that reach the real database.
type countingDB struct {
	database.DB
	updates atomic.Int64
}

func (c *countingDB) Update(tx *database.Tx) error {
	c.updates.Add(1)
	return c.DB.Update(tx)
}

func open(t *testing.T) (*groupcommit.DB, *countingDB) {
	t.Helper()
	raw, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if err := raw.CreateTable(table); err != nil {
		t.Fatal(err)
	}
	c := &countingDB{DB: raw}
	return groupcommit.New(c), c
}

func TestConcurrentWritesAllLandInFewerCommits(t *testing.T) {
	g, c := open(t)
	const n = 200
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := g.Set(table, []byte(fmt.Sprint(i)), []byte("v")); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	entries, err := g.List(table)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != n {
		t.Fatalf("%d entries, want %d", len(entries), n)
	}
	if u := c.updates.Load(); u >= n {
		t.Errorf("%d commits for %d concurrent writes: nothing was grouped", u, n)
	}
	t.Logf("%d writes in %d commits", n, c.updates.Load())
}

func TestCmpAndSwapRaceHasOneWinner(t *testing.T) {
	g, _ := open(t)
	if err := g.Set(table, []byte("k"), []byte("old")); err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wins atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, ok, err := g.CmpAndSwap(table, []byte("k"), []byte("old"), []byte(fmt.Sprint("new", i)))
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins.Add(1)
			}
		}(i)
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d swaps succeeded, want 1", wins.Load())
	}
	cur, _, err := g.CmpAndSwap(table, []byte("k"), []byte("nope"), []byte("x"))
	if err != nil || !bytes.HasPrefix(cur, []byte("new")) {
		t.Fatalf("current value %q, %v", cur, err)
	}
}

func TestFailingRequestDoesNotFailOthers(t *testing.T) {
	g, _ := open(t)
	const n = 40
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tx := new(database.Tx)
			if i%10 == 0 {
				tx.Get(table, []byte("missing")) // fails: not found
			}
			tx.Set(table, []byte(fmt.Sprint(i)), []byte("v"))
			errs[i] = g.Update(tx)
		}(i)
	}
	wg.Wait()
	// A failed Get rolls back its own transaction only, and its error stays
	// a not-found: nosqlstore.RecordIssued guards the challenge that way.
	for i, err := range errs {
		if (i%10 == 0) != (err != nil) || (err != nil && !database.IsErrNotFound(err)) {
			t.Errorf("request %d: err %v", i, err)
		}
	}
	entries, _ := g.List(table)
	if len(entries) != n-n/10 {
		t.Errorf("%d entries landed, want %d", len(entries), n-n/10)
	}
}
