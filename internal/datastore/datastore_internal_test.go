package datastore

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/smallstep/nosql/database"
)

// flakyDB fails each call with a serialization failure until fails reaches
// zero.
type flakyDB struct {
	database.DB
	fails, calls int
	err          error
}

func (f *flakyDB) next() error {
	f.calls++
	if f.fails > 0 {
		f.fails--
		return f.err
	}
	return nil
}

func (f *flakyDB) Get(_, _ []byte) ([]byte, error)          { return []byte("v"), f.next() }
func (f *flakyDB) List(_ []byte) ([]*database.Entry, error) { return nil, f.next() }
func (f *flakyDB) Set(_, _, _ []byte) error                 { return f.next() }
func (f *flakyDB) Del(_, _ []byte) error                    { return f.next() }
func (f *flakyDB) Update(_ *database.Tx) error              { return f.next() }

func TestSerializationFailuresAreRetried(t *testing.T) {
	// As pgx returns it, wrapped.
	serialization := fmt.Errorf("failed to get x: %w", &pgconn.PgError{Code: "40001", Message: "could not serialize access due to read/write dependencies among transactions"})
	ops := map[string]func(database.DB) error{
		"Get":    func(d database.DB) error { _, err := d.Get(nil, nil); return err },
		"List":   func(d database.DB) error { _, err := d.List(nil); return err },
		"Set":    func(d database.DB) error { return d.Set(nil, nil, nil) },
		"Del":    func(d database.DB) error { return d.Del(nil, nil) },
		"Update": func(d database.DB) error { return d.Update(&database.Tx{}) },
	}
	for name, op := range ops {
		f := &flakyDB{fails: 5, err: serialization}
		if err := op(serialRetry{f}); err != nil || f.calls != 6 {
			t.Errorf("%s after 5 serialization failures: err=%v after %d calls, want success on the 6th", name, err, f.calls)
		}
		other := &flakyDB{fails: 1, err: &pgconn.PgError{Code: "42P01", Message: "relation does not exist"}}
		if err := op(serialRetry{other}); err == nil || other.calls != 1 {
			t.Errorf("%s: another error was retried (%d calls) or lost (%v)", name, other.calls, err)
		}
		always := &flakyDB{fails: 1 << 30, err: serialization}
		if err := op(serialRetry{always}); err == nil || always.calls != serialAttempts {
			t.Errorf("%s: endless serialization failures: err=%v after %d calls, want the failure after %d", name, err, always.calls, serialAttempts)
		}
	}
}
