package nosqlstore_test

import (
	"os"
	"testing"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/internal/testing/testpg"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
	"github.com/smimeca/smimeca/policy/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testpg.Stop()
	os.Exit(code)
}

// The store conformance suite on bbolt: two Store values on one database
// file stand for two nodes (each has its own in-process locks).
func TestConformanceBbolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (policy.Store, policy.Store) {
		db := openDB(t)
		return mustStore(t, db), mustStore(t, db)
	})
}

// The suite on PostgreSQL, as several nodes use it: two connections to one
// database, every transaction at REPEATABLE READ with its reads promoted
// to writes (datastore.OpenPostgres).
func TestConformancePostgres(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (policy.Store, policy.Store) {
		a, b := postgresPair(t)
		return mustStore(t, a), mustStore(t, b)
	})
}

// postgresPair opens two connections (two nodes) to one new database.
func postgresPair(t *testing.T) (database.DB, database.DB) {
	t.Helper()
	dsn := testpg.DSN(t)
	var dbs [2]database.DB
	for i := range dbs {
		db, err := datastore.OpenPostgres(dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		dbs[i] = db.DB.DB
	}
	return dbs[0], dbs[1]
}

func mustStore(t *testing.T, db database.DB) *nosqlstore.Store {
	t.Helper()
	s, err := nosqlstore.New(db)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A pinned setting is the first node's, on bbolt and on PostgreSQL seen
// from two nodes: a second node with another value learns the first one.
func TestPinSetting(t *testing.T) {
	bolt := openDB(t)
	pgA, pgB := postgresPair(t)
	for name, pair := range map[string][2]database.DB{"bbolt": {bolt, bolt}, "postgres": {pgA, pgB}} {
		a, b := mustStore(t, pair[0]), mustStore(t, pair[1])
		if got, err := a.PinSetting("x", []byte("one")); err != nil || string(got) != "one" {
			t.Fatalf("%s: first pin: %q %v", name, got, err)
		}
		if got, err := b.PinSetting("x", []byte("two")); err != nil || string(got) != "one" {
			t.Errorf("%s: a second node's pin: %q %v, want the first one's", name, got, err)
		}
		if got, err := b.PinSetting("x", []byte("one")); err != nil || string(got) != "one" {
			t.Errorf("%s: the same value again: %q %v", name, got, err)
		}
	}
}
