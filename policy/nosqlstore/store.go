// Package nosqlstore keeps policy's challenges and issued-certificate
// inventory in the smallstep nosql database the CA already uses (bbolt under
// the data directory by default), so that one file holds all CA state.
package nosqlstore

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

// Tables. The inventory is kept by device (device → its certificates, so
// that a bundle or a device revocation reads one key), with a serial →
// device map for lookups by serial.
var (
	challengesTable = []byte("smimeca_challenges")
	byDeviceTable   = []byte("smimeca_issued_by_device")
	serialTable     = []byte("smimeca_issued_serials")
)

// maxCASRetries bounds retries of a device's inventory record when
// concurrent enrolments of the same device race.
const maxCASRetries = 100

// Store implements policy.ChallengeStore and policy.Inventory.
type Store struct {
	db database.DB
}

var (
	_ policy.ChallengeStore = (*Store)(nil)
	_ policy.Inventory      = (*Store)(nil)
)

// New returns a Store on db, creating its tables.
func New(db database.DB) (*Store, error) {
	for _, t := range [][]byte{challengesTable, byDeviceTable, serialTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("nosqlstore: create table %s: %w", t, err)
		}
	}
	return &Store{db: db}, nil
}

// PutChallenge implements policy.ChallengeStore.
func (s *Store) PutChallenge(_ context.Context, hash []byte, c policy.Challenge) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return s.db.Set(challengesTable, hash, b)
}

// Challenge implements policy.ChallengeStore.
func (s *Store) Challenge(_ context.Context, hash []byte) (policy.Challenge, error) {
	c, _, err := s.getChallenge(hash)
	return c, err
}

func (s *Store) getChallenge(hash []byte) (policy.Challenge, []byte, error) {
	b, err := s.db.Get(challengesTable, hash)
	if database.IsErrNotFound(err) {
		return policy.Challenge{}, nil, policy.ErrNotFound
	} else if err != nil {
		return policy.Challenge{}, nil, fmt.Errorf("nosqlstore: read challenge %s: %w", hex.EncodeToString(hash[:4]), err)
	}
	var c policy.Challenge
	if err := json.Unmarshal(b, &c); err != nil {
		return policy.Challenge{}, nil, fmt.Errorf("nosqlstore: decode challenge: %w", err)
	}
	return c, b, nil
}

// ConsumeChallenge implements policy.ChallengeStore with a compare-and-swap
// on the stored record, so concurrent consumers cannot both succeed.
func (s *Store) ConsumeChallenge(_ context.Context, hash []byte, at time.Time) (policy.Challenge, error) {
	c, old, err := s.getChallenge(hash)
	if err != nil {
		return c, err
	}
	if !c.ConsumedAt.IsZero() {
		return c, &policy.RejectError{Reason: policy.ReasonChallengeUsed, Detail: "the challenge was already used"}
	}
	c.ConsumedAt = at.UTC()
	nb, err := json.Marshal(c)
	if err != nil {
		return c, err
	}
	_, swapped, err := s.db.CmpAndSwap(challengesTable, hash, old, nb)
	if err != nil {
		return c, fmt.Errorf("nosqlstore: consume challenge: %w", err)
	}
	if !swapped {
		return c, &policy.RejectError{Reason: policy.ReasonChallengeUsed, Detail: "the challenge was already used"}
	}
	return c, nil
}

// PurgeChallenges deletes challenges that expired or were consumed before
// cutoff and reports how many it deleted.
func (s *Store) PurgeChallenges(cutoff time.Time) (int, error) {
	entries, err := s.db.List(challengesTable)
	if database.IsErrNotFound(err) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		var c policy.Challenge
		if json.Unmarshal(e.Value, &c) != nil {
			continue
		}
		if c.ExpiresAt.Before(cutoff) || (!c.ConsumedAt.IsZero() && c.ConsumedAt.Before(cutoff)) {
			// An expired or consumed challenge can never become usable
			// again, so deleting it without a compare is safe.
			if err := s.db.Del(challengesTable, e.Key); err != nil {
				return n, fmt.Errorf("nosqlstore: purge challenge: %w", err)
			}
			n++
		}
	}
	return n, nil
}

// RecordIssued implements policy.Inventory: in one transaction it maps the
// serial to the device and appends the record to the device's list
// (compare-and-swap, retried when another enrolment of the same device
// won).
func (s *Store) RecordIssued(_ context.Context, rec policy.Issued) error {
	for attempt := 0; attempt < maxCASRetries; attempt++ {
		old, err := s.db.Get(byDeviceTable, []byte(rec.Device))
		if err != nil && !database.IsErrNotFound(err) {
			return fmt.Errorf("nosqlstore: read inventory of %s: %w", rec.Device, err)
		}
		var list []policy.Issued
		if old != nil {
			if err := json.Unmarshal(old, &list); err != nil {
				return fmt.Errorf("nosqlstore: decode inventory of %s: %w", rec.Device, err)
			}
		}
		list = append(list, rec)
		b, err := json.Marshal(list)
		if err != nil {
			return err
		}
		tx := &database.Tx{}
		tx.Set(serialTable, []byte(rec.Serial), []byte(rec.Device))
		tx.Operations = append(tx.Operations, &database.TxEntry{
			Bucket: byDeviceTable, Key: []byte(rec.Device), CmpValue: old, Value: b, Cmd: database.CmpAndSwap,
		})
		if err := s.db.Update(tx); err != nil {
			return fmt.Errorf("nosqlstore: record issued %s: %w", rec.Serial, err)
		}
		if tx.Operations[1].Swapped {
			return nil
		}
	}
	return fmt.Errorf("nosqlstore: record issued %s: too many concurrent enrolments of device %s", rec.Serial, rec.Device)
}

func (s *Store) deviceList(device string) ([]policy.Issued, error) {
	b, err := s.db.Get(byDeviceTable, []byte(device))
	if database.IsErrNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("nosqlstore: read inventory of %s: %w", device, err)
	}
	var list []policy.Issued
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("nosqlstore: decode inventory of %s: %w", device, err)
	}
	return list, nil
}

// IssuedBySerial implements policy.Inventory.
func (s *Store) IssuedBySerial(_ context.Context, serial string) (policy.Issued, error) {
	dev, err := s.db.Get(serialTable, []byte(serial))
	if database.IsErrNotFound(err) {
		return policy.Issued{}, policy.ErrNotFound
	} else if err != nil {
		return policy.Issued{}, fmt.Errorf("nosqlstore: read issued %s: %w", serial, err)
	}
	list, err := s.deviceList(string(dev))
	if err != nil {
		return policy.Issued{}, err
	}
	for _, r := range list {
		if r.Serial == serial {
			return r, nil
		}
	}
	return policy.Issued{}, policy.ErrNotFound
}

// ListIssued implements policy.Inventory. With a device it reads that
// device's record; by user alone it scans every device (an administrator's
// query).
func (s *Store) ListIssued(_ context.Context, f policy.Filter) ([]policy.Issued, error) {
	var out []policy.Issued
	if f.Device != "" {
		list, err := s.deviceList(f.Device)
		if err != nil {
			return nil, err
		}
		for _, r := range list {
			if f.User == "" || r.User == f.User {
				out = append(out, r)
			}
		}
	} else {
		entries, err := s.db.List(byDeviceTable)
		if database.IsErrNotFound(err) {
			return nil, nil
		} else if err != nil {
			return nil, fmt.Errorf("nosqlstore: list issued: %w", err)
		}
		for _, e := range entries {
			var list []policy.Issued
			if err := json.Unmarshal(e.Value, &list); err != nil {
				return nil, fmt.Errorf("nosqlstore: decode inventory of %s: %w", e.Key, err)
			}
			for _, r := range list {
				if f.User == "" || r.User == f.User {
					out = append(out, r)
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].IssuedAt.Equal(out[j].IssuedAt) {
			return out[i].IssuedAt.After(out[j].IssuedAt)
		}
		return bytes.Compare([]byte(out[i].Serial), []byte(out[j].Serial)) > 0
	})
	return out, nil
}
