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
	"sync"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

// Tables. The inventory is kept by device (device → its certificates, so
// that a bundle or a device revocation reads one key), with a serial →
// device map for lookups by serial.
//
// A challenge lives in challengesTable until it is used; the transaction
// that records the certificate it paid for moves it to usedTable. Records
// written before that split may sit in challengesTable with ConsumedAt set;
// they are refused as used all the same.
var (
	challengesTable = []byte("smimeca_challenges")
	usedTable       = []byte("smimeca_challenges_used")
	byDeviceTable   = []byte("smimeca_issued_by_device")
	serialTable     = []byte("smimeca_issued_serials")
)

// maxCASRetries bounds retries of a device's inventory record when
// concurrent enrolments of the same device race.
const maxCASRetries = 100

// deviceStripes is the number of locks that serialise inventory writes of
// one device within the process.
const deviceStripes = 4096

// Store implements policy.ChallengeStore and policy.Inventory.
type Store struct {
	db database.DB
	// devices serialise RecordIssued per device (striped by a hash of the
	// device id), so that the compare-and-swap of the device's list in the
	// issuance transaction does not lose to a concurrent one in-process.
	devices [deviceStripes]sync.Mutex
}

var (
	_ policy.ChallengeStore = (*Store)(nil)
	_ policy.Inventory      = (*Store)(nil)
)

// New returns a Store on db, creating its tables.
func New(db database.DB) (*Store, error) {
	for _, t := range [][]byte{challengesTable, usedTable, byDeviceTable, serialTable} {
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

// Challenge implements policy.ChallengeStore: an unused challenge, or a
// used one with ConsumedAt set.
func (s *Store) Challenge(_ context.Context, hash []byte) (policy.Challenge, error) {
	c, err := s.getChallenge(challengesTable, hash)
	if err == policy.ErrNotFound {
		return s.getChallenge(usedTable, hash)
	}
	return c, err
}

func (s *Store) getChallenge(table, hash []byte) (policy.Challenge, error) {
	b, err := s.db.Get(table, hash)
	if database.IsErrNotFound(err) {
		return policy.Challenge{}, policy.ErrNotFound
	} else if err != nil {
		return policy.Challenge{}, fmt.Errorf("nosqlstore: read challenge %s: %w", hex.EncodeToString(hash[:min(4, len(hash))]), err)
	}
	var c policy.Challenge
	if err := json.Unmarshal(b, &c); err != nil {
		return policy.Challenge{}, fmt.Errorf("nosqlstore: decode challenge: %w", err)
	}
	return c, nil
}

// PurgeChallenges deletes challenges that expired or were used before
// cutoff and reports how many it deleted.
func (s *Store) PurgeChallenges(cutoff time.Time) (int, error) {
	n := 0
	for _, table := range [][]byte{challengesTable, usedTable} {
		entries, err := s.db.List(table)
		if database.IsErrNotFound(err) {
			continue
		} else if err != nil {
			return n, err
		}
		for _, e := range entries {
			var c policy.Challenge
			if json.Unmarshal(e.Value, &c) != nil {
				continue
			}
			if c.ExpiresAt.Before(cutoff) || (!c.ConsumedAt.IsZero() && c.ConsumedAt.Before(cutoff)) {
				// An expired or used challenge can never become usable
				// again, so deleting it without a compare is safe.
				if err := s.db.Del(table, e.Key); err != nil {
					return n, fmt.Errorf("nosqlstore: purge challenge: %w", err)
				}
				n++
			}
		}
	}
	return n, nil
}

// RecordIssued implements policy.Inventory. One transaction holds the
// CA's record of the certificate (c.CA), the serial → device map, the
// device's list with rec appended (compare-and-swap) and, for a first
// enrolment, the move of the challenge from the unused to the used table.
// The transaction starts by reading the unused challenge, so it rolls back
// as a whole when the challenge is gone: the caller then gets a
// *policy.RejectError with ReasonChallengeUsed and nothing is stored.
func (s *Store) RecordIssued(_ context.Context, rec policy.Issued, c policy.Commit) error {
	lock := &s.devices[stripe(rec.Device)]
	lock.Lock()
	defer lock.Unlock()
	var consume []*database.TxEntry
	if c.Challenge != nil {
		ch, err := s.getChallenge(challengesTable, c.Challenge)
		if err == policy.ErrNotFound || (err == nil && !ch.ConsumedAt.IsZero()) {
			return errChallengeUsed()
		} else if err != nil {
			return err
		}
		ch.ConsumedAt = c.At.UTC()
		used, err := json.Marshal(ch)
		if err != nil {
			return err
		}
		consume = []*database.TxEntry{
			{Bucket: challengesTable, Key: c.Challenge, Cmd: database.Get}, // rolls back when gone
			{Bucket: challengesTable, Key: c.Challenge, Cmd: database.Delete},
			{Bucket: usedTable, Key: c.Challenge, Value: used, Cmd: database.Set},
		}
	}
	caOps := c.CA.Ops()
	for attempt := 0; attempt < maxCASRetries; attempt++ {
		old, list, err := s.readDeviceList(rec.Device)
		if err != nil {
			return err
		}
		b, err := json.Marshal(append(list, rec))
		if err != nil {
			return err
		}
		tx := &database.Tx{}
		tx.Operations = append(tx.Operations, consume...)
		tx.Operations = append(tx.Operations, caOps...)
		tx.Set(serialTable, []byte(rec.Serial), []byte(rec.Device))
		cas := &database.TxEntry{Bucket: byDeviceTable, Key: []byte(rec.Device), CmpValue: old, Value: b, Cmd: database.CmpAndSwap}
		tx.Operations = append(tx.Operations, cas)
		if err := s.db.Update(tx); err != nil {
			if consume != nil && database.IsErrNotFound(err) {
				return errChallengeUsed()
			}
			return fmt.Errorf("nosqlstore: record issued %s: %w", rec.Serial, err)
		}
		if cas.Swapped {
			return nil
		}
		// Another process-external writer changed the device's list (the
		// per-device lock rules out this process): everything but the list
		// is committed; append to the list again on its own.
		consume, caOps = nil, nil
	}
	return fmt.Errorf("nosqlstore: record issued %s: too many concurrent enrolments of device %s", rec.Serial, rec.Device)
}

func errChallengeUsed() error {
	return &policy.RejectError{Reason: policy.ReasonChallengeUsed, Detail: "the challenge was already used"}
}

// stripe maps a device id to one of the device locks (FNV-1a).
func stripe(device string) int {
	h := uint32(2166136261)
	for i := 0; i < len(device); i++ {
		h = (h ^ uint32(device[i])) * 16777619
	}
	return int(h % deviceStripes)
}

func (s *Store) readDeviceList(device string) ([]byte, []policy.Issued, error) {
	old, err := s.db.Get(byDeviceTable, []byte(device))
	if err != nil && !database.IsErrNotFound(err) {
		return nil, nil, fmt.Errorf("nosqlstore: read inventory of %s: %w", device, err)
	}
	var list []policy.Issued
	if old != nil {
		if err := json.Unmarshal(old, &list); err != nil {
			return nil, nil, fmt.Errorf("nosqlstore: decode inventory of %s: %w", device, err)
		}
	}
	return old, list, nil
}

func (s *Store) deviceList(device string) ([]policy.Issued, error) {
	_, list, err := s.readDeviceList(device)
	return list, err
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
