package nosqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

var _ policy.Leases = (*Store)(nil)

// lease is a lease's row in metaTable, under "lease/<name>".
type lease struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

// TryLease implements policy.Leases with one compare-and-swap: of two nodes
// taking a free or expired lease at once, one wins.
func (s *Store) TryLease(_ context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error) {
	key := []byte("lease/" + name)
	old, err := s.db.Get(metaTable, key)
	switch {
	case database.IsErrNotFound(err):
		old = nil
	case err != nil:
		return false, fmt.Errorf("nosqlstore: read lease %s: %w", name, err)
	default:
		var l lease
		if err := json.Unmarshal(old, &l); err == nil && l.Holder != holder && now.Before(l.Until) {
			return false, nil
		}
	}
	b, err := json.Marshal(lease{Holder: holder, Until: now.Add(ttl)})
	if err != nil {
		return false, err
	}
	_, swapped, err := s.db.CmpAndSwap(metaTable, key, old, b)
	if err != nil {
		return false, fmt.Errorf("nosqlstore: take lease %s: %w", name, err)
	}
	return swapped, nil
}
