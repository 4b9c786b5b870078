package datastore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/smallstep/nosql/database"
)

// pgDB is the nosql interface on PostgreSQL through pgx, made for the way
// smimeca uses it: a pool sized to the node's concurrency (step-ca's driver
// keeps two idle database/sql connections, so one transaction in ~13
// opened a new session), statements prepared once per connection (pgx's
// statement cache), and a whole transaction sent as one batch — one round
// trip, run by PostgreSQL as one implicit transaction at the session's
// isolation (REPEATABLE READ, see OpenPostgres) — instead of one round
// trip per operation.
//
// Its tables are step-ca's driver's (nkey, nvalue BYTEA): a database
// written by either driver works with the other.
type pgDB struct {
	pool *pgxpool.Pool

	mu      sync.Mutex
	queries map[string]bucketQueries // by bucket
}

// bucketQueries are one table's statements.
type bucketQueries struct {
	get, guard, take, set, del, list, cas string
}

// openPGX opens a pool on dsn (whose options the session inherits).
func openPGX(dsn string) (*pgDB, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(max(8, 4*runtime.GOMAXPROCS(0)))
	// Every statement reads or writes one row by its primary key, or
	// scans a table: a generic plan is the plan. Without this setting
	// PostgreSQL plans a prepared statement anew on each of its first
	// five runs on a connection and then chooses by estimated cost; with
	// it, a statement is planned once per connection and after each
	// invalidation (an ANALYZE of a growing table). Planning was about
	// 15 % of the database's CPU per enrolment (pg_stat_statements); the
	// setting measured 13 % less of that CPU.
	if _, set := cfg.ConnConfig.RuntimeParams["plan_cache_mode"]; !set {
		cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_generic_plan"
	}
	cfg.MinConns = int32(min(4, cfg.MaxConns))
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(context.Background()); err != nil {
		pool.Close()
		return nil, err
	}
	return &pgDB{pool: pool, queries: map[string]bucketQueries{}}, nil
}

// q returns the statements of bucket.
func (d *pgDB) q(bucket []byte) bucketQueries {
	d.mu.Lock()
	defer d.mu.Unlock()
	if q, ok := d.queries[string(bucket)]; ok {
		return q
	}
	t := pgx.Identifier{string(bucket)}.Sanitize()
	q := bucketQueries{
		get: "SELECT nvalue FROM " + t + " WHERE nkey = $1",
		// A read that must find its row, and that the transaction
		// depends on: dividing by the count of rows fails the
		// transaction (SQLSTATE 22012) when it is 0, and the row is
		// rewritten unchanged, so that a concurrent write of it (the
		// device's retirement) conflicts with this transaction under
		// snapshot isolation (see OpenPostgres).
		guard: "WITH u AS (UPDATE " + t + " SET nvalue = nvalue WHERE nkey = $1 RETURNING nvalue) SELECT (SELECT nvalue FROM u), 1 / (SELECT count(*) FROM u)",
		// A guard read followed by the deletion of the same row (a
		// challenge used up, a certificate's right to renew spent): one
		// statement that fails the transaction when there was no row.
		take: "WITH d AS (DELETE FROM " + t + " WHERE nkey = $1 RETURNING nvalue) SELECT (SELECT nvalue FROM d), 1 / (SELECT count(*) FROM d)",
		set:  "INSERT INTO " + t + " (nkey, nvalue) VALUES ($1, $2) ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue",
		del:  "DELETE FROM " + t + " WHERE nkey = $1",
		list: "SELECT nkey, nvalue FROM " + t,
		// Compare and swap in one statement: the current value (locked),
		// and the write only when it equals $2 (NULL: no row).
		cas: "WITH cur AS (SELECT nvalue FROM " + t + " WHERE nkey = $1 FOR UPDATE), " +
			"upd AS (INSERT INTO " + t + " (nkey, nvalue) SELECT $1, $3 WHERE (SELECT nvalue FROM cur) IS NOT DISTINCT FROM $2 " +
			"ON CONFLICT (nkey) DO UPDATE SET nvalue = excluded.nvalue RETURNING 1) " +
			"SELECT (SELECT nvalue FROM cur), EXISTS (SELECT 1 FROM upd)",
	}
	d.queries[string(bucket)] = q
	return q
}

// bg is the context of the nosql interface, which has none.
var bg = context.Background()

// nullable is v as a query parameter: nil for no value.
func nullable(v []byte) any {
	if len(v) == 0 {
		return nil
	}
	return v
}

// Open implements database.DB; the pool is opened by openPGX.
func (d *pgDB) Open(string, ...database.Option) error { return nil }

// Close implements database.DB.
func (d *pgDB) Close() error {
	d.pool.Close()
	return nil
}

// Get implements database.DB.
func (d *pgDB) Get(bucket, key []byte) ([]byte, error) {
	var v []byte
	err := d.pool.QueryRow(bg, d.q(bucket).get, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s/%s: %w", bucket, key, database.ErrNotFound)
	}
	return v, err
}

// Set implements database.DB.
func (d *pgDB) Set(bucket, key, value []byte) error {
	_, err := d.pool.Exec(bg, d.q(bucket).set, key, value)
	return err
}

// Del implements database.DB.
func (d *pgDB) Del(bucket, key []byte) error {
	_, err := d.pool.Exec(bg, d.q(bucket).del, key)
	return err
}

// List implements database.DB.
func (d *pgDB) List(bucket []byte) ([]*database.Entry, error) {
	rows, err := d.pool.Query(bg, d.q(bucket).list)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, fmt.Errorf("%s: %w", bucket, database.ErrNotFound)
		}
		return nil, err
	}
	defer rows.Close()
	var out []*database.Entry
	for rows.Next() {
		var k, v []byte
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out = append(out, &database.Entry{Bucket: bucket, Key: k, Value: v})
	}
	return out, rows.Err()
}

// CmpAndSwap implements database.DB in one statement.
func (d *pgDB) CmpAndSwap(bucket, key, oldValue, newValue []byte) ([]byte, bool, error) {
	var cur []byte
	var swapped bool
	if err := d.pool.QueryRow(bg, d.q(bucket).cas, key, nullable(oldValue), newValue).Scan(&cur, &swapped); err != nil {
		return nil, false, err
	}
	if swapped {
		return newValue, true, nil
	}
	return cur, false, nil
}

// Update implements database.DB: the operations go as one batch, which
// PostgreSQL runs as one transaction; a Get that finds no row rolls it back
// with database.ErrNotFound (a Get followed by the Delete of its row is one
// DELETE … RETURNING). A CmpAndSwap that does not swap leaves the
// others committed, as with bbolt.
func (d *pgDB) Update(tx *database.Tx) error {
	b := &pgx.Batch{}
	ops := tx.Operations
	// taken[i]: operation i, a Get, and i+1, the Delete of the same row,
	// go as one statement.
	taken := make([]bool, len(ops))
	for i, op := range ops {
		if i > 0 && taken[i-1] {
			continue
		}
		q := d.q(op.Bucket)
		switch op.Cmd {
		case database.Get:
			if i+1 < len(ops) && ops[i+1].Cmd == database.Delete && bytes.Equal(ops[i+1].Bucket, op.Bucket) && bytes.Equal(ops[i+1].Key, op.Key) {
				taken[i] = true
				b.Queue(q.take, op.Key)
				continue
			}
			b.Queue(q.guard, op.Key)
		case database.Set:
			b.Queue(q.set, op.Key, op.Value)
		case database.Delete:
			b.Queue(q.del, op.Key)
		case database.CmpAndSwap:
			b.Queue(q.cas, op.Key, nullable(op.CmpValue), op.Value)
		case database.CreateTable:
			b.Queue(createTableSQL(op.Bucket))
		default:
			return database.ErrOpNotSupported
		}
	}
	res := d.pool.SendBatch(bg, b)
	var failed error
	for i, op := range ops {
		if i > 0 && taken[i-1] {
			continue // answered with its Get
		}
		var err error
		switch op.Cmd {
		case database.Get:
			var v []byte
			var one int
			err = res.QueryRow().Scan(&v, &one)
			if isDivisionByZero(err) {
				err = fmt.Errorf("%s/%s: %w", op.Bucket, op.Key, database.ErrNotFound)
			}
			op.Result = v
		case database.CmpAndSwap:
			var cur []byte
			var swapped bool
			err = res.QueryRow().Scan(&cur, &swapped)
			op.Result, op.Swapped = cur, swapped
			if swapped {
				op.Result = op.Value
			}
		default:
			_, err = res.Exec()
		}
		if err != nil && failed == nil {
			failed = err
		}
	}
	if err := res.Close(); err != nil && failed == nil {
		failed = err
	}
	return failed
}

// CreateTable implements database.DB.
func (d *pgDB) CreateTable(bucket []byte) error {
	_, err := d.pool.Exec(bg, createTableSQL(bucket))
	return err
}

// DeleteTable implements database.DB.
func (d *pgDB) DeleteTable(bucket []byte) error {
	_, err := d.pool.Exec(bg, "DROP TABLE "+pgx.Identifier{string(bucket)}.Sanitize())
	if isUndefinedTable(err) {
		return fmt.Errorf("%s: %w", bucket, database.ErrNotFound)
	}
	return err
}

// createTableSQL is step-ca's driver's table.
func createTableSQL(bucket []byte) string {
	return "CREATE TABLE IF NOT EXISTS " + pgx.Identifier{string(bucket)}.Sanitize() +
		" (nkey BYTEA CHECK (octet_length(nkey) <= 255), nvalue BYTEA, PRIMARY KEY (nkey))"
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func isDivisionByZero(err error) bool { return sqlState(err) == "22012" }
func isUndefinedTable(err error) bool { return sqlState(err) == "42P01" }

// isSerializationFailure reports a serialization failure or deadlock
// (SQLSTATE 40001, 40P01).
func isSerializationFailure(err error) bool {
	s := sqlState(err)
	return s == "40001" || s == "40P01"
}

var _ database.DB = (*pgDB)(nil)
