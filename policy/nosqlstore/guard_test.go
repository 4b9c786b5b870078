package nosqlstore

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/ca"
)

// RecordIssued relies on a Get of a missing key rolling back the whole
// transaction (the challenge guard), also when group commit merged it with
// other writers' transactions: the others must still commit.
func TestGetGuardRollsBackOnlyItsTransaction(t *testing.T) {
	db, err := ca.OpenDatabase(filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s, err := New(db.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	const n = 32
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			tx := &database.Tx{}
			if i%2 == 0 { // guarded by a key that does not exist
				tx.Operations = append(tx.Operations, &database.TxEntry{Bucket: challengesTable, Key: []byte("missing"), Cmd: database.Get})
			}
			tx.Set(serialTable, []byte(fmt.Sprint(i)), []byte("dev"))
			errs[i] = s.db.Update(tx)
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		_, getErr := s.db.Get(serialTable, []byte(fmt.Sprint(i)))
		if i%2 == 0 {
			if !database.IsErrNotFound(errs[i]) || !database.IsErrNotFound(getErr) {
				t.Errorf("guarded %d: update %v, stored %v; want both not found", i, errs[i], getErr)
			}
		} else if errs[i] != nil || getErr != nil {
			t.Errorf("unguarded %d: update %v, read %v", i, errs[i], getErr)
		}
	}
}
