package nosqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

// recoveriesTable holds recovery requests: id → request (JSON).
var recoveriesTable = []byte("smimeca_recoveries")

var _ policy.RecoveryStore = (*RecoveryStore)(nil)

// RecoveryStore implements policy.RecoveryStore in the same database. Each
// change is a compare-and-swap of the request's row, so two nodes voting
// or downloading at once are applied one after the other.
type RecoveryStore struct{ db database.DB }

// NewRecoveryStore returns the recovery store on db, creating its table.
func NewRecoveryStore(db database.DB) (*RecoveryStore, error) {
	if err := db.CreateTable(recoveriesTable); err != nil {
		return nil, fmt.Errorf("nosqlstore: create table %s: %w", recoveriesTable, err)
	}
	return &RecoveryStore{db: db}, nil
}

// CreateRecovery implements policy.RecoveryStore.
func (s *RecoveryStore) CreateRecovery(_ context.Context, r policy.RecoveryRequest) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, swapped, err := s.db.CmpAndSwap(recoveriesTable, []byte(r.ID), nil, b); err != nil {
		return fmt.Errorf("nosqlstore: store recovery %s: %w", r.ID, err)
	} else if !swapped {
		return fmt.Errorf("nosqlstore: recovery %s exists", r.ID)
	}
	return nil
}

// Recovery implements policy.RecoveryStore.
func (s *RecoveryStore) Recovery(_ context.Context, id string) (policy.RecoveryRequest, error) {
	r, _, err := s.read(id)
	return r, err
}

func (s *RecoveryStore) read(id string) (policy.RecoveryRequest, []byte, error) {
	b, err := s.db.Get(recoveriesTable, []byte(id))
	if database.IsErrNotFound(err) {
		return policy.RecoveryRequest{}, nil, policy.ErrNotFound
	} else if err != nil {
		return policy.RecoveryRequest{}, nil, fmt.Errorf("nosqlstore: read recovery %s: %w", id, err)
	}
	var r policy.RecoveryRequest
	if err := json.Unmarshal(b, &r); err != nil {
		return policy.RecoveryRequest{}, nil, fmt.Errorf("nosqlstore: decode recovery %s: %w", id, err)
	}
	return r, b, nil
}

// maxRecoveryRetries bounds UpdateRecovery's compare-and-swap attempts
// (each lost one means another change of the same request committed);
// between attempts it waits a random while that grows with each.
const maxRecoveryRetries = 64

// UpdateRecovery implements policy.RecoveryStore: read, change, and
// compare-and-swap against what was read, again from the top when another
// change came first.
func (s *RecoveryStore) UpdateRecovery(_ context.Context, id string, change func(*policy.RecoveryRequest) error) (policy.RecoveryRequest, error) {
	for attempt := range maxRecoveryRetries {
		if attempt > 0 {
			time.Sleep(time.Duration(rand.Int64N(int64(min(attempt, 20)) * int64(time.Millisecond))))
		}
		r, old, err := s.read(id)
		if err != nil {
			return policy.RecoveryRequest{}, err
		}
		if err := change(&r); err != nil {
			return policy.RecoveryRequest{}, err
		}
		b, err := json.Marshal(r)
		if err != nil {
			return policy.RecoveryRequest{}, err
		}
		_, swapped, err := s.db.CmpAndSwap(recoveriesTable, []byte(id), old, b)
		if err != nil {
			return policy.RecoveryRequest{}, fmt.Errorf("nosqlstore: update recovery %s: %w", id, err)
		}
		if swapped {
			return r, nil
		}
	}
	return policy.RecoveryRequest{}, errors.New("nosqlstore: update recovery " + id + ": too many concurrent changes; try again")
}

// ListRecoveries implements policy.RecoveryStore.
func (s *RecoveryStore) ListRecoveries(_ context.Context, user string) ([]policy.RecoveryRequest, error) {
	entries, err := s.db.List(recoveriesTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("nosqlstore: list recoveries: %w", err)
	}
	var out []policy.RecoveryRequest
	for _, e := range entries {
		var r policy.RecoveryRequest
		if err := json.Unmarshal(e.Value, &r); err != nil {
			return nil, fmt.Errorf("nosqlstore: decode recovery: %w", err)
		}
		if user == "" || r.User == user {
			out = append(out, r)
		}
	}
	return out, nil
}
