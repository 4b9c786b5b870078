// Package datastore opens smimeca's one database — an embedded bbolt file,
// or PostgreSQL shared by several nodes — once, with group commit and
// SERIALIZABLE retries, for the CA and the policy stores to share.
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
// the database is created when missing), through step-ca's own driver
// (smallstep/nosql). Every transaction runs SERIALIZABLE — the DSN's
// default_transaction_isolation is set so — so that the read that guards a
// write (a challenge still unused, a certificate still renewable) holds
// across nodes as bbolt's single writer makes it hold in one process: of two
// nodes consuming one challenge, one commits and the other's transaction
// fails with a serialization failure; such failures are retried, and the
// retry sees the challenge gone. Sessions use index scans for lookups (see
// below), so that two transactions conflict only when their rows do.
func OpenPostgres(dsn string) (*Database, error) {
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, errors.New("datastore: --db is not a postgres:// URL (postgres://user@host:5432/smimeca)")
	}
	q := u.Query()
	q.Set("default_transaction_isolation", "serializable")
	// Every lookup is by primary key. A sequential scan — which the
	// planner prefers for a table of a few pages, such as the live
	// challenges — takes a predicate lock on the whole table under
	// SERIALIZABLE, so that any concurrent write to it aborts one of the
	// two transactions (PostgreSQL's manual, "Serializable Isolation
	// Level", advises steering the planner to index scans). Listing a
	// whole table still scans it.
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
// serialization failure (SQLSTATE 40001), as SERIALIZABLE requires of its
// clients. Each attempt runs every operation again from the start.
//
// PostgreSQL's serializable isolation tracks reads by index page, so
// concurrent transactions on neighbouring keys (devices registered one
// after another) abort each other now and then even when they touch
// different rows; retries back off exponentially with random jitter, so
// that transactions aborted together do not collide again in lockstep.
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

// Get is the database's, again after a serialization failure: under
// SERIALIZABLE even a lone read can be chosen as a conflict's victim.
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
