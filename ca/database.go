package ca

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/smallstep/certificates/db"

	"github.com/smimeca/smimeca/internal/groupcommit"
)

// Database is the CA's bbolt database with step-ca's tables. Its DB field
// is what Open and the policy stores use; writes to it are group-committed
// (see internal/groupcommit), so concurrent enrolments share bbolt commits.
type Database struct {
	// DB is the step-ca database with group commit.
	DB  *db.DB
	raw db.AuthDB
}

// OpenDatabase opens, creating it when missing, the bbolt database at path.
func OpenDatabase(path string) (*Database, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ca: database dir: %w", err)
	}
	raw, err := db.New(&db.Config{Type: "bbolt", DataSource: path})
	if err != nil {
		return nil, fmt.Errorf("ca: open database %s (is another smimeca using it?): %w", path, err)
	}
	step, ok := raw.(*db.DB)
	if !ok {
		raw.Shutdown()
		return nil, fmt.Errorf("ca: unexpected database type %T", raw)
	}
	return &Database{DB: &db.DB{DB: groupcommit.New(step.DB)}, raw: raw}, nil
}

// Close closes the database.
func (d *Database) Close() error { return d.raw.Shutdown() }
