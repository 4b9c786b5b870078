package nosqlstore

import (
	"context"
	"fmt"
	"sort"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

// pfxSyncTable is the SyncLedger: user\x00thumbprint → the record's ID in
// Intune's imported-PFX store.
var pfxSyncTable = []byte("smimeca_intune_pfx")

var _ policy.SyncLedger = (*Store)(nil)

// Synced implements policy.SyncLedger.
func (s *Store) Synced(_ context.Context, user string) (map[string]string, error) {
	entries, err := s.db.List(pfxSyncTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("nosqlstore: list synced: %w", err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if u, thumb := splitDevKey(e.Key); u == user {
			out[thumb] = string(e.Value)
		}
	}
	return out, nil
}

// SyncedUsers implements policy.SyncLedger.
func (s *Store) SyncedUsers(context.Context) ([]string, error) {
	entries, err := s.db.List(pfxSyncTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("nosqlstore: list synced: %w", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		if u, _ := splitDevKey(e.Key); !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	sort.Strings(out)
	return out, nil
}

// SetSynced implements policy.SyncLedger.
func (s *Store) SetSynced(_ context.Context, user, thumbprint, id string) error {
	if err := s.db.Set(pfxSyncTable, devKey(user, thumbprint), []byte(id)); err != nil {
		return fmt.Errorf("nosqlstore: record synced: %w", err)
	}
	return nil
}

// Unsynced implements policy.SyncLedger.
func (s *Store) Unsynced(_ context.Context, user, thumbprint string) error {
	if err := s.db.Del(pfxSyncTable, devKey(user, thumbprint)); err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("nosqlstore: forget synced: %w", err)
	}
	return nil
}
