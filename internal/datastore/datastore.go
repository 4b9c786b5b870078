// Package datastore opens smimeca's one database — an embedded bbolt file,
// or PostgreSQL shared by several nodes — once, with group commit and
// serialization-failure retries, for the CA and the policy stores to share.
package datastore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"
)

// Database is the CA's database with step-ca's tables: an embedded bbolt
// file, or PostgreSQL shared by several nodes (OpenPostgres). Its DB field
// is what Open and the policy stores use; writes to it are group-committed
// (see GroupCommit), so concurrent enrolments share bbolt commits.
type Database struct {
	// DB is the step-ca database with group commit.
	DB    *db.DB
	close func() error
}

// OpenBolt opens, creating it when missing, the bbolt database at path.
func OpenBolt(path string) (*Database, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("datastore: database dir: %w", err)
	}
	raw, err := db.New(&db.Config{Type: "bbolt", DataSource: path})
	if err != nil {
		return nil, fmt.Errorf("datastore: open database %s (is another smimeca using it?): %w", path, err)
	}
	step, ok := raw.(*db.DB)
	if !ok {
		raw.Shutdown()
		return nil, fmt.Errorf("datastore: unexpected database type %T", raw)
	}
	return &Database{DB: &db.DB{DB: NewGroupCommit(step.DB)}, close: raw.Shutdown}, nil
}

// Close closes the database.
func (d *Database) Close() error { return d.close() }

// OpenPostgres opens the CA's database in PostgreSQL (dsn: postgres://…;
// the database is created when missing, by step-ca's own driver,
// smallstep/nosql, whose tables it uses; the work goes through pgx, see
// pgDB).
//
// Transactions run at REPEATABLE READ, PostgreSQL's snapshot isolation,
// which is serializable for the transactions smimeca runs: inside a
// transaction every read is also a write of its row — a guard that must
// find its row rewrites it unchanged, a guard followed by the deletion of
// its row is the deletion (a challenge used up), a compare-and-swap locks
// its row, inserts only into a key it saw absent, and when it does not
// swap, no other write of its transaction depends on it — and other reads
// happen before the transaction. Of two concurrent transactions that
// write one row, the second to commit fails with a serialization failure
// (first committer wins) and is run again (serialRetry), so two nodes
// that consume one challenge give one certificate, as bbolt's single
// writer does in one process, and a device's retirement and an issuance
// to it are ordered. With no read left that is not a write, snapshot
// isolation's one anomaly, write skew, has nothing to act on (Fekete et
// al., "Making Snapshot Isolation Serializable", 2005: promotion), while
// SERIALIZABLE, with its predicate locks, nearly doubled the database's
// CPU per enrolment and aborted 3 % of transactions (BENCHMARKS.md, #22).
func OpenPostgres(dsn string) (*Database, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, errors.New("datastore: --db is not a postgres:// URL (postgres://user@host:5432/smimeca)")
	}
	q := u.Query()
	q.Set("default_transaction_isolation", "repeatable read")
	// Every lookup is by primary key: an index scan, even on a table of
	// a few pages (the live challenges) that the planner would scan
	// whole, so that a plan kept on a connection stays right as the
	// table grows. Listing a whole table still scans it.
	q.Set("enable_seqscan", "off")
	u.RawQuery = q.Encode()
	// step-ca's driver creates the database when missing and its tables;
	// the work goes through pgx (see pgDB).
	raw, err := db.New(&db.Config{Type: "postgresql", DataSource: u.String()})
	if err != nil {
		return nil, fmt.Errorf("datastore: open database %s: %w", redactDSN(dsn), err)
	}
	raw.Shutdown()
	pg, err := openPGX(u.String())
	if err != nil {
		return nil, fmt.Errorf("datastore: open database %s: %w", redactDSN(dsn), err)
	}
	return &Database{DB: &db.DB{DB: serialRetry{pg}}, close: pg.Close}, nil
}

// redactDSN drops a DSN's password, for messages.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return u.Redacted()
}

// serialRetry re-runs a transaction that PostgreSQL aborted with a
// serialization failure (SQLSTATE 40001: it wrote a row that a concurrent
// transaction wrote and committed first). Each attempt runs every
// operation again from the start, with a fresh snapshot; retries back off
// exponentially with random jitter, so that transactions aborted together
// do not collide again in lockstep.
type serialRetry struct {
	database.DB
}

const serialAttempts = 30

// serialBackoffCap bounds one wait between attempts.
const serialBackoffCap = 100 * time.Millisecond

func retrySerial(f func() error) error {
	var err error
	for attempt := 0; attempt < serialAttempts; attempt++ {
		if err = f(); !isSerializationFailure(err) {
			return err
		}
		time.Sleep(time.Millisecond + rand.N(min(time.Millisecond<<attempt, serialBackoffCap)))
	}
	return err
}

// Update runs tx, again after a serialization failure.
func (s serialRetry) Update(tx *database.Tx) error {
	return retrySerial(func() error {
		for _, op := range tx.Operations {
			op.Result, op.Swapped = nil, false
		}
		return s.DB.Update(tx)
	})
}

// CmpAndSwap is the database's, again after a serialization failure.
func (s serialRetry) CmpAndSwap(bucket, key, oldValue, newValue []byte) (out []byte, swapped bool, err error) {
	err = retrySerial(func() error {
		out, swapped, err = s.DB.CmpAndSwap(bucket, key, oldValue, newValue)
		return err
	})
	return out, swapped, err
}

// Get is the database's, again after a serialization failure.
func (s serialRetry) Get(bucket, key []byte) (out []byte, err error) {
	err = retrySerial(func() error {
		out, err = s.DB.Get(bucket, key)
		return err
	})
	return out, err
}

// List is the database's, again after a serialization failure.
func (s serialRetry) List(bucket []byte) (out []*database.Entry, err error) {
	err = retrySerial(func() error {
		out, err = s.DB.List(bucket)
		return err
	})
	return out, err
}

// Set is the database's, again after a serialization failure.
func (s serialRetry) Set(bucket, key, value []byte) error {
	return retrySerial(func() error { return s.DB.Set(bucket, key, value) })
}

// Del is the database's, again after a serialization failure.
func (s serialRetry) Del(bucket, key []byte) error {
	return retrySerial(func() error { return s.DB.Del(bucket, key) })
}
