package datastore_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smallstep/nosql"
	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/internal/datastore"
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

func open(t *testing.T) (*datastore.GroupCommit, *countingDB) {
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
	return datastore.NewGroupCommit(c), c
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

// gatedDB holds each commit until its gate opens, and says when one
// started.
type gatedDB struct {
	database.DB
	started chan int
	gates   []chan struct{}
	n       atomic.Int64
}

func (g *gatedDB) Update(tx *database.Tx) error {
	i := int(g.n.Add(1)) - 1
	g.started <- i
	<-g.gates[i]
	return g.DB.Update(tx)
}

// The writer that leads a commit returns when its own write is committed:
// it does not go on committing the writes that queued up meanwhile (a
// leader of a busy period used to wait for all of them: 3 s with a 10 ms
// sync). The next waiter leads the next commit.
func TestLeaderReturnsAfterItsOwnCommit(t *testing.T) {
	raw, err := nosql.New("bbolt", filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	raw.CreateTable(table)
	gd := &gatedDB{DB: raw, started: make(chan int, 4), gates: []chan struct{}{make(chan struct{}), make(chan struct{})}}
	g := datastore.NewGroupCommit(gd)
	set := func(k string) chan error {
		c := make(chan error, 1)
		go func() { c <- g.Set(table, []byte(k), []byte("v")) }()
		return c
	}
	leader := set("a")
	if i := <-gd.started; i != 0 {
		t.Fatalf("first commit is %d", i)
	}
	b, c := set("b"), set("c")
	// Let b and c queue behind the leader's commit (they wait on it).
	for g.Pending() < 2 {
		runtime.Gosched()
	}
	close(gd.gates[0])
	select {
	case err := <-leader:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the leader is still committing the others' writes")
	}
	if i := <-gd.started; i != 1 {
		t.Fatalf("second commit is %d", i)
	}
	close(gd.gates[1])
	for _, ch := range []chan error{b, c} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if n := gd.n.Load(); n != 2 {
		t.Errorf("%d commits for a leader and two queued writes, want 2", n)
	}
}
