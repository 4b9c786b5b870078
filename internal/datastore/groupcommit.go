package datastore

import (
	"fmt"
	"sync"

	"github.com/smallstep/nosql/database"
)

// GroupCommit coalesces concurrent writes to a smallstep nosql
// database into one transaction, so that N enrolments finishing at the same
// time pay for one bbolt commit (and its fsyncs) instead of N. Every write
// still returns only after the transaction holding it committed: durability
// is unchanged, only the number of commits goes down (the idea of bbolt's
// DB.Batch, which the nosql interface does not expose).
//
// Reads, table management and Close pass straight through. It is safe for
// concurrent use.
type GroupCommit struct {
	database.DB

	mu       sync.Mutex
	pending  []*request
	inFlight bool
	// maxOps bounds the operations merged into one transaction.
	maxOps int
}

type request struct {
	tx   *database.Tx
	err  error
	done chan struct{}
	// lead is how a leader hands the next commit to this waiter.
	lead chan struct{}
}

var _ database.DB = (*GroupCommit)(nil)

// NewGroupCommit returns db with group commit for Set, Del, CmpAndSwap and Update.
func NewGroupCommit(db database.DB) *GroupCommit {
	return &GroupCommit{DB: db, maxOps: 1024}
}

// Pending returns the number of writes waiting for a commit.
func (g *GroupCommit) Pending() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.pending)
}

// Update runs tx, possibly in one transaction with concurrent writers.
//
// One writer at a time leads: it commits the pending writes (its own
// first, since it is the oldest pending), and when that commit is done it
// hands the lead to the oldest writer still waiting and returns. So no
// writer waits for more than the commits queued ahead of it when it
// arrived, however busy the period.
func (g *GroupCommit) Update(tx *database.Tx) error {
	r := &request{tx: tx, done: make(chan struct{}), lead: make(chan struct{}, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, r)
	if g.inFlight {
		g.mu.Unlock()
		select {
		case <-r.done:
			return r.err
		case <-r.lead:
		}
	} else {
		g.inFlight = true
		g.mu.Unlock()
	}
	g.leadOnce()
	<-r.done
	return r.err
}

// leadOnce commits one batch from the front of the queue (the leader's own
// write is its first) and passes the lead on, or ends it when nobody waits.
func (g *GroupCommit) leadOnce() {
	g.mu.Lock()
	batch := g.pending
	n, ops := 0, 0
	for n < len(batch) && (n == 0 || ops+len(batch[n].tx.Operations) <= g.maxOps) {
		ops += len(batch[n].tx.Operations)
		n++
	}
	batch, g.pending = batch[:n], batch[n:]
	g.mu.Unlock()
	g.commit(batch)
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.pending) == 0 {
		g.inFlight = false
		return
	}
	g.pending[0].lead <- struct{}{}
}

func (g *GroupCommit) commit(batch []*request) {
	// A panic below must not leave writers waiting forever (and every later
	// writer queued behind a commit that never ends): fail the batch.
	defer func() {
		if r := recover(); r != nil {
			for _, req := range batch {
				select {
				case <-req.done:
				default:
					req.err = fmt.Errorf("datastore: commit panicked: %v", r)
					close(req.done)
				}
			}
		}
	}()
	if len(batch) == 1 {
		batch[0].err = g.DB.Update(batch[0].tx)
		close(batch[0].done)
		return
	}
	merged := &database.Tx{}
	for _, r := range batch {
		merged.Operations = append(merged.Operations, r.tx.Operations...)
	}
	if err := g.DB.Update(merged); err == nil {
		for _, r := range batch {
			close(r.done)
		}
		return
	}
	// One request made the merged transaction fail (and roll back): run each
	// on its own so that only the faulty one sees an error.
	for _, r := range batch {
		for _, op := range r.tx.Operations {
			op.Result, op.Swapped = nil, false
		}
		r.err = g.DB.Update(r.tx)
		close(r.done)
	}
}

// Set implements database.DB through Update.
func (g *GroupCommit) Set(bucket, key, value []byte) error {
	tx := new(database.Tx)
	tx.Set(bucket, key, value)
	return g.Update(tx)
}

// Del implements database.DB through Update.
func (g *GroupCommit) Del(bucket, key []byte) error {
	tx := new(database.Tx)
	tx.Del(bucket, key)
	return g.Update(tx)
}

// CmpAndSwap implements database.DB through Update. Compare-and-swaps on the
// same key within one merged transaction are applied in arrival order, so
// of two racing swaps from the same old value exactly one succeeds.
func (g *GroupCommit) CmpAndSwap(bucket, key, oldValue, newValue []byte) ([]byte, bool, error) {
	tx := &database.Tx{Operations: []*database.TxEntry{{
		Bucket: bucket, Key: key, CmpValue: oldValue, Value: newValue, Cmd: database.CmpAndSwap,
	}}}
	if err := g.Update(tx); err != nil {
		return nil, false, err
	}
	op := tx.Operations[0]
	return op.Result, op.Swapped, nil
}
