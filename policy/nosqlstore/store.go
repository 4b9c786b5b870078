// Package nosqlstore keeps policy's device registry, challenges and
// issued-certificate inventory in the smallstep nosql database the CA
// already uses (bbolt under the data directory by default), so that one
// file holds all CA state and one transaction can change the CA's tables
// and policy's together.
package nosqlstore

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/policy"
)

// Tables. Devices are keyed by devKey(user, id). The inventory is one row
// per certificate (serial → record and the serial of the device's previous
// certificate), and each device's newest serial is its head: a write costs
// one row and one head, whatever the device's history, and a device's
// certificates are read by following the chain from its head.
//
// A device is active while it has a row in activeTable; every issuance and
// challenge transaction reads that row first and rolls back when it is gone,
// which is the tombstone a retirement leaves. A certificate may be renewed
// while it has a row in renewableTable: the renewal that supersedes it, a
// revocation and a retirement delete that row in their transactions.
//
// Each user's device ids are listed, sorted, in userDevicesTable (written
// with a compare-and-swap in the transaction that registers a device), so
// that listing one user's devices or certificates reads that user's rows,
// not the whole registry.
//
// A challenge lives in challengesTable until it is used; the transaction
// that records the certificate it paid for moves it to usedTable. A device's
// live challenge is named in deviceChallengeTable, so that a new one
// replaces it.
var (
	challengesTable      = []byte("smimeca_challenges")
	usedTable            = []byte("smimeca_challenges_used")
	devicesTable         = []byte("smimeca_devices")
	userDevicesTable     = []byte("smimeca_user_devices")
	activeTable          = []byte("smimeca_devices_active")
	deviceChallengeTable = []byte("smimeca_device_challenge")
	headsTable           = []byte("smimeca_device_heads")
	certsTable           = []byte("smimeca_certs")
	renewableTable       = []byte("smimeca_renewable")
	metaTable            = []byte("smimeca_meta")
	// identitiesTable maps identity keys (policy.IdentityKeys) to the
	// device that claimed them (policy.IdentityClaim).
	identitiesTable = []byte("smimeca_identities")

	// Version 1 kept one JSON list per device id (global, not per user)
	// and a serial → device map; New migrates them.
	v1ByDeviceTable = []byte("smimeca_issued_by_device")
	v1SerialTable   = []byte("smimeca_issued_serials")

	schemaKey = []byte("schema")
	// staticKey in metaTable marks a database that has recorded an
	// enrolment with the labs-only static challenge: such a device is not
	// in its user's list, so listing a user's certificates then also
	// scans the heads for the user's static devices.
	staticKey = []byte("static_enrolments")
	marker    = []byte{1}
)

const schemaVersion = "4"

// maxCASRetries bounds retries of a device's head when enrolments of the
// same device in different processes race.
const maxCASRetries = 100

// deviceStripes is the number of locks that serialise writes of one device
// within the process.
const deviceStripes = 4096

// Store implements policy.Store.
type Store struct {
	db database.DB
	// devices serialise a device's writes in-process (striped by a hash of
	// its key), so that the compare-and-swap of its head does not lose to a
	// concurrent one in the same process.
	devices [deviceStripes]sync.Mutex
}

var _ policy.Store = (*Store)(nil)

// row is one certificate of the inventory.
type row struct {
	policy.Issued
	// Prev is the serial of the device's certificate issued before this
	// one ("" for its first).
	Prev string `json:"prev,omitempty"`
}

// New returns a Store on db, creating its tables and migrating an older
// layout.
func New(db database.DB) (*Store, error) {
	for _, t := range [][]byte{challengesTable, usedTable, devicesTable, userDevicesTable, activeTable, deviceChallengeTable,
		headsTable, certsTable, renewableTable, metaTable, identitiesTable, pfxSyncTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("nosqlstore: create table %s: %w", t, err)
		}
	}
	s := &Store{db: db}
	if err := s.migrate(); err != nil {
		return nil, err
	}
	return s, nil
}

// Ping reports whether the database answers a read.
func (s *Store) Ping() error {
	_, err := s.db.Get(metaTable, schemaKey)
	return err
}

func devKey(user, device string) []byte { return []byte(user + "\x00" + device) }

func splitDevKey(k []byte) (user, device string) {
	u, d, _ := strings.Cut(string(k), "\x00")
	return u, d
}

func (s *Store) lock(key []byte) *sync.Mutex {
	h := uint32(2166136261) // FNV-1a
	for _, c := range key {
		h = (h ^ uint32(c)) * 16777619
	}
	return &s.devices[h%deviceStripes]
}

// PutChallenge implements policy.ChallengeStore.
func (s *Store) PutChallenge(_ context.Context, hash []byte, c policy.Challenge) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	key := devKey(c.User, c.Device)
	mu := s.lock(key)
	mu.Lock()
	defer mu.Unlock()
	tx, err := s.deviceTx(key)
	if err != nil {
		return err
	}
	tx.Set(challengesTable, hash, b)
	tx.Set(deviceChallengeTable, key, hash)
	if err := s.db.Update(tx); err != nil {
		if database.IsErrNotFound(err) {
			return policy.ErrInactiveDevice
		}
		return fmt.Errorf("nosqlstore: store challenge: %w", err)
	}
	return nil
}

// IdentityClaim implements policy.IdentityIndex.
func (s *Store) IdentityClaim(_ context.Context, key string) (policy.IdentityClaim, error) {
	b, err := s.get(identitiesTable, []byte(key))
	if err != nil {
		return policy.IdentityClaim{}, err
	}
	var c policy.IdentityClaim
	if err := json.Unmarshal(b, &c); err != nil {
		return policy.IdentityClaim{}, fmt.Errorf("nosqlstore: decode identity claim: %w", err)
	}
	return c, nil
}

// SwapIdentityClaim implements policy.IdentityIndex with a compare-and-swap
// of the stored bytes, so that two nodes claiming one identity at once
// cannot both succeed.
func (s *Store) SwapIdentityClaim(_ context.Context, key string, old *policy.IdentityClaim, next policy.IdentityClaim) (bool, error) {
	var cmp []byte
	if old != nil {
		b, err := s.get(identitiesTable, []byte(key))
		if err == policy.ErrNotFound {
			return false, nil
		} else if err != nil {
			return false, err
		}
		var cur policy.IdentityClaim
		if err := json.Unmarshal(b, &cur); err != nil || cur != *old {
			return false, nil
		}
		cmp = b
	}
	v, err := json.Marshal(next)
	if err != nil {
		return false, err
	}
	cas := &database.TxEntry{Bucket: identitiesTable, Key: []byte(key), CmpValue: cmp, Value: v, Cmd: database.CmpAndSwap}
	if err := s.db.Update(&database.Tx{Operations: []*database.TxEntry{cas}}); err != nil {
		return false, fmt.Errorf("nosqlstore: claim identity: %w", err)
	}
	return cas.Swapped, nil
}

// PinSetting records value under name in the CA database the first time it
// is called, and returns the value recorded (value itself then): nodes that
// share one database find out with it that they were set up differently.
func (s *Store) PinSetting(name string, value []byte) ([]byte, error) {
	cas := &database.TxEntry{Bucket: metaTable, Key: []byte("setting:" + name), Value: value, Cmd: database.CmpAndSwap}
	if err := s.db.Update(&database.Tx{Operations: []*database.TxEntry{cas}}); err != nil {
		return nil, fmt.Errorf("nosqlstore: pin %s: %w", name, err)
	}
	return cas.Result, nil
}

// DeleteChallenge implements policy.ChallengeStore.
func (s *Store) DeleteChallenge(_ context.Context, user, device string) error {
	key := devKey(user, device)
	mu := s.lock(key)
	mu.Lock()
	defer mu.Unlock()
	tx := &database.Tx{}
	if err := s.dropLiveChallenge(tx, key); err != nil {
		return err
	}
	if len(tx.Operations) == 0 {
		return nil
	}
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("nosqlstore: delete the challenge of %s: %w", device, err)
	}
	return nil
}

// dropLiveChallenge adds to tx the deletion of the live challenge of the
// device with the given key (whose lock the caller holds), if it has one.
func (s *Store) dropLiveChallenge(tx *database.Tx, key []byte) error {
	live, err := s.get(deviceChallengeTable, key)
	if err == policy.ErrNotFound {
		return nil
	} else if err != nil {
		return err
	}
	tx.Del(challengesTable, live)
	tx.Del(deviceChallengeTable, key)
	return nil
}

// deviceTx starts a transaction on the device with the given key (whose
// lock the caller holds): it rolls back unless the device is active, and
// deletes the device's live challenge.
func (s *Store) deviceTx(key []byte) (*database.Tx, error) {
	live, err := s.get(deviceChallengeTable, key)
	if err != nil && err != policy.ErrNotFound {
		return nil, err
	}
	tx := &database.Tx{}
	tx.Get(activeTable, key) // rolls back for an unregistered or retired device
	if live != nil {
		tx.Del(challengesTable, live)
	}
	return tx, nil
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

func (s *Store) get(table, key []byte) ([]byte, error) {
	b, err := s.db.Get(table, key)
	if database.IsErrNotFound(err) {
		return nil, policy.ErrNotFound
	} else if err != nil {
		return nil, fmt.Errorf("nosqlstore: read %s: %w", table, err)
	}
	return b, nil
}

func (s *Store) getChallenge(table, hash []byte) (policy.Challenge, error) {
	b, err := s.get(table, hash)
	if err != nil {
		if err != policy.ErrNotFound {
			err = fmt.Errorf("nosqlstore: read challenge %s: %w", hex.EncodeToString(hash[:min(4, len(hash))]), err)
		}
		return policy.Challenge{}, err
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
				// again, so deleting it without a compare is safe; a
				// device's pointer to it then names nothing.
				if err := s.db.Del(table, e.Key); err != nil {
					return n, fmt.Errorf("nosqlstore: purge challenge: %w", err)
				}
				n++
			}
		}
	}
	return n, nil
}

// RecordIssued implements policy.Inventory. One transaction holds: the
// device's active row (read: the transaction rolls back when the device was
// retired), for a first enrolment the move of the challenge from the unused
// to the used table (read first, so it rolls back when the challenge is
// gone), for a renewal the end of the predecessor's right to renew (read
// first likewise) and its revocation as superseded, the CA's record of the
// certificate, the certificate's row, its right to renew, and the device's
// head (compare-and-swap). A rolled-back transaction stores nothing and
// returns the *policy.RejectError or policy.ErrInactiveDevice that says why.
func (s *Store) RecordIssued(_ context.Context, rec policy.Issued, c policy.Commit) error {
	key := devKey(rec.User, rec.Device)
	mu := s.lock(key)
	mu.Lock()
	defer mu.Unlock()
	var guards []*database.TxEntry
	if !c.Unregistered {
		guards = append(guards, &database.TxEntry{Bucket: activeTable, Key: key, Cmd: database.Get})
	} else if _, err := s.get(metaTable, staticKey); err == policy.ErrNotFound {
		// Marked once: a write of the same row by every unregistered
		// enrolment would make concurrent ones conflict on PostgreSQL.
		guards = append(guards, &database.TxEntry{Bucket: metaTable, Key: staticKey, Value: marker, Cmd: database.Set})
	} else if err != nil {
		return err
	}
	if c.Challenge != nil {
		var ch policy.Challenge
		var err error
		if c.ChallengeRecord != nil {
			ch = *c.ChallengeRecord
		} else {
			ch, err = s.getChallenge(challengesTable, c.Challenge)
		}
		if err == policy.ErrNotFound || (err == nil && !ch.ConsumedAt.IsZero()) {
			return errChallengeUsed()
		} else if err != nil {
			return err
		}
		ch.ConsumedAt = c.At.UTC()
		ch.Serial, ch.TransactionID, ch.KeySHA256 = rec.Serial, c.TransactionID, c.KeySHA256
		used, err := json.Marshal(ch)
		if err != nil {
			return err
		}
		guards = append(guards,
			&database.TxEntry{Bucket: challengesTable, Key: c.Challenge, Cmd: database.Get},
			&database.TxEntry{Bucket: challengesTable, Key: c.Challenge, Cmd: database.Delete},
			&database.TxEntry{Bucket: usedTable, Key: c.Challenge, Value: used, Cmd: database.Set},
			&database.TxEntry{Bucket: deviceChallengeTable, Key: key, Cmd: database.Delete})
	}
	if c.Supersedes != "" {
		guards = append(guards,
			&database.TxEntry{Bucket: renewableTable, Key: []byte(c.Supersedes), Cmd: database.Get},
			&database.TxEntry{Bucket: renewableTable, Key: []byte(c.Supersedes), Cmd: database.Delete})
		guards = append(guards, c.Revocation.Ops()...)
	}
	once := append(guards, c.CA.Ops()...)
	once = append(once, &database.TxEntry{Bucket: renewableTable, Key: []byte(rec.Serial), Value: marker, Cmd: database.Set})
	for attempt := 0; attempt < maxCASRetries; attempt++ {
		head, err := s.db.Get(headsTable, key)
		if err != nil && !database.IsErrNotFound(err) {
			return fmt.Errorf("nosqlstore: read head of %s: %w", rec.Device, err)
		}
		b, err := json.Marshal(row{Issued: rec, Prev: string(head)})
		if err != nil {
			return err
		}
		tx := &database.Tx{Operations: once}
		tx.Set(certsTable, []byte(rec.Serial), b)
		cas := &database.TxEntry{Bucket: headsTable, Key: key, CmpValue: head, Value: []byte(rec.Serial), Cmd: database.CmpAndSwap}
		tx.Operations = append(tx.Operations, cas)
		if err := s.db.Update(tx); err != nil {
			if database.IsErrNotFound(err) && once != nil {
				return s.whyRolledBack(key, c)
			}
			return fmt.Errorf("nosqlstore: record issued %s: %w", rec.Serial, err)
		}
		if cas.Swapped {
			return nil
		}
		// Another process moved the device's head (the per-device lock
		// rules out this process): everything else is committed; link the
		// row to the new head and move the head again.
		once = nil
	}
	return fmt.Errorf("nosqlstore: record issued %s: too many concurrent enrolments of device %s", rec.Serial, rec.Device)
}

// whyRolledBack says which read rolled an issuance transaction back.
func (s *Store) whyRolledBack(key []byte, c policy.Commit) error {
	if !c.Unregistered {
		if _, err := s.get(activeTable, key); err == policy.ErrNotFound {
			return policy.ErrInactiveDevice
		}
	}
	if c.Supersedes != "" {
		if _, err := s.get(renewableTable, []byte(c.Supersedes)); err == policy.ErrNotFound {
			return &policy.RejectError{Reason: policy.ReasonRenewalNotAuthorized,
				Detail: "the certificate was already renewed or revoked; enrol again with a new challenge"}
		}
	}
	return errChallengeUsed()
}

func errChallengeUsed() error {
	return &policy.RejectError{Reason: policy.ReasonChallengeUsed, Detail: "the challenge was already used"}
}

func (s *Store) readRow(serial string) (row, error) {
	b, err := s.get(certsTable, []byte(serial))
	if err != nil {
		return row{}, err
	}
	var r row
	if err := json.Unmarshal(b, &r); err != nil {
		return row{}, fmt.Errorf("nosqlstore: decode certificate %s: %w", serial, err)
	}
	return r, nil
}

// IssuedBySerial implements policy.Inventory.
func (s *Store) IssuedBySerial(_ context.Context, serial string) (policy.Issued, error) {
	r, err := s.readRow(serial)
	return r.Issued, err
}

// deviceCerts follows the chain of the device with the given key from its
// head, newest first.
func (s *Store) deviceCerts(key []byte) ([]policy.Issued, error) {
	head, err := s.get(headsTable, key)
	if err == policy.ErrNotFound {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []policy.Issued
	for serial := string(head); serial != ""; {
		r, err := s.readRow(serial)
		if err != nil {
			return nil, fmt.Errorf("nosqlstore: inventory chain at %s: %w", serial, err)
		}
		out = append(out, r.Issued)
		serial = r.Prev
	}
	return out, nil
}

// ListIssued implements policy.Inventory. With a device it follows that
// device's chain; by user alone it follows each of the user's devices (from
// the user's list); with neither, every device (an administrator's query).
func (s *Store) ListIssued(_ context.Context, f policy.Filter) ([]policy.Issued, error) {
	if f.Device != "" && f.User == "" {
		return nil, errors.New("nosqlstore: a device filter needs its user")
	}
	var keys [][]byte
	switch {
	case f.Device != "":
		keys = [][]byte{devKey(f.User, f.Device)}
	case f.User != "":
		_, ids, err := s.userDevices(f.User)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			keys = append(keys, devKey(f.User, id))
		}
		static, err := s.staticDevices(f.User)
		if err != nil {
			return nil, err
		}
		keys = append(keys, static...)
	default:
		entries, err := s.db.List(headsTable)
		if err != nil && !database.IsErrNotFound(err) {
			return nil, fmt.Errorf("nosqlstore: list devices: %w", err)
		}
		for _, e := range entries {
			keys = append(keys, e.Key)
		}
	}
	var out []policy.Issued
	for _, k := range keys {
		list, err := s.deviceCerts(k)
		if err != nil {
			return nil, err
		}
		out = append(out, list...)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].IssuedAt.Equal(out[j].IssuedAt) {
			return out[i].IssuedAt.After(out[j].IssuedAt)
		}
		return bytes.Compare([]byte(out[i].Serial), []byte(out[j].Serial)) > 0
	})
	return out, nil
}

// staticDevices returns the keys of user's devices outside the registry —
// enrolled with the labs mode's static challenge or vouched for by an
// external authority (not in the user's list); it scans the heads only in
// a database that has recorded such an enrolment.
func (s *Store) staticDevices(user string) ([][]byte, error) {
	if _, err := s.get(metaTable, staticKey); err == policy.ErrNotFound {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	entries, err := s.db.List(headsTable)
	if err != nil && !database.IsErrNotFound(err) {
		return nil, fmt.Errorf("nosqlstore: list devices: %w", err)
	}
	var keys [][]byte
	for _, e := range entries {
		if u, d := splitDevKey(e.Key); u == user && (strings.HasPrefix(d, policy.StaticDevice) || strings.HasPrefix(d, policy.ExternalDevicePrefix)) {
			keys = append(keys, e.Key)
		}
	}
	return keys, nil
}

// RevokeIssued implements policy.Inventory: the revocation, the end of the
// certificate's right to renew and the deletion of its device's live
// challenge commit in one transaction.
func (s *Store) RevokeIssued(_ context.Context, serial string, revocation ca.Record) error {
	tx := &database.Tx{}
	r, err := s.readRow(serial)
	if err != nil && err != policy.ErrNotFound {
		return fmt.Errorf("nosqlstore: revoke %s: %w", serial, err)
	} else if err == nil {
		key := devKey(r.User, r.Device)
		mu := s.lock(key)
		mu.Lock()
		defer mu.Unlock()
		if err := s.dropLiveChallenge(tx, key); err != nil {
			return fmt.Errorf("nosqlstore: revoke %s: %w", serial, err)
		}
	}
	tx.Del(renewableTable, []byte(serial))
	tx.Operations = append(tx.Operations, revocation.Ops()...)
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("nosqlstore: revoke %s: %w", serial, err)
	}
	return nil
}

// PutDevice implements policy.DeviceStore. A device new to its user is
// added to the user's list in the same transaction (compare-and-swap: a
// registration of another of the user's devices, in another process, makes
// it read the list again).
func (s *Store) PutDevice(_ context.Context, d policy.Device) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	key := devKey(d.User, d.ID)
	mu := s.lock(key)
	mu.Lock()
	defer mu.Unlock()
	for attempt := 0; attempt < maxCASRetries; attempt++ {
		tx := &database.Tx{}
		tx.Set(devicesTable, key, b)
		if d.State == policy.DeviceActive {
			tx.Set(activeTable, key, marker)
		} else {
			tx.Del(activeTable, key)
		}
		old, ids, err := s.userDevices(d.User)
		if err != nil {
			return err
		}
		var cas *database.TxEntry
		if i, found := slices.BinarySearch(ids, d.ID); !found {
			next, err := json.Marshal(slices.Insert(ids, i, d.ID))
			if err != nil {
				return err
			}
			cas = &database.TxEntry{Bucket: userDevicesTable, Key: []byte(d.User), CmpValue: old, Value: next, Cmd: database.CmpAndSwap}
			tx.Operations = append(tx.Operations, cas)
		}
		if err := s.db.Update(tx); err != nil {
			return fmt.Errorf("nosqlstore: register device %s: %w", d.ID, err)
		}
		if cas == nil || cas.Swapped {
			return nil
		}
	}
	return fmt.Errorf("nosqlstore: register device %s: too many concurrent registrations for its user", d.ID)
}

// UpdateDevice implements policy.DeviceStore: the write rolls back when the
// device's active row is gone.
func (s *Store) UpdateDevice(_ context.Context, d policy.Device) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	key := devKey(d.User, d.ID)
	mu := s.lock(key)
	mu.Lock()
	defer mu.Unlock()
	tx := &database.Tx{}
	tx.Get(activeTable, key) // rolls back for a retired device
	tx.Set(devicesTable, key, b)
	if err := s.db.Update(tx); err != nil {
		if database.IsErrNotFound(err) {
			return policy.ErrInactiveDevice
		}
		return fmt.Errorf("nosqlstore: update device %s: %w", d.ID, err)
	}
	return nil
}

// userDevices returns the stored list of user's device ids (nil when
// absent) and the ids, sorted.
func (s *Store) userDevices(user string) ([]byte, []string, error) {
	b, err := s.get(userDevicesTable, []byte(user))
	if err == policy.ErrNotFound {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, err
	}
	var ids []string
	if err := json.Unmarshal(b, &ids); err != nil {
		return nil, nil, fmt.Errorf("nosqlstore: decode the device list of %s: %w", user, err)
	}
	return b, ids, nil
}

// Device implements policy.DeviceStore.
func (s *Store) Device(_ context.Context, user, id string) (policy.Device, error) {
	b, err := s.get(devicesTable, devKey(user, id))
	if err != nil {
		return policy.Device{}, err
	}
	var d policy.Device
	if err := json.Unmarshal(b, &d); err != nil {
		return policy.Device{}, fmt.Errorf("nosqlstore: decode device %s: %w", id, err)
	}
	return d, nil
}

// ListDevices implements policy.DeviceStore. For one user it reads the
// user's list and their devices; for every user ("") the whole registry
// (an administrator's query).
func (s *Store) ListDevices(ctx context.Context, user string) ([]policy.Device, error) {
	if user != "" {
		_, ids, err := s.userDevices(user)
		if err != nil {
			return nil, err
		}
		out := make([]policy.Device, 0, len(ids))
		for _, id := range ids {
			d, err := s.Device(ctx, user, id)
			if err != nil {
				return nil, fmt.Errorf("nosqlstore: device %s of %s is listed but not stored: %w", id, user, err)
			}
			out = append(out, d)
		}
		return out, nil
	}
	entries, err := s.db.List(devicesTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("nosqlstore: list devices: %w", err)
	}
	out := make([]policy.Device, 0, len(entries))
	for _, e := range entries {
		var d policy.Device
		if err := json.Unmarshal(e.Value, &d); err != nil {
			return nil, fmt.Errorf("nosqlstore: decode device %q: %w", e.Key, err)
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].User != out[j].User {
			return out[i].User < out[j].User
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// RetireDevice implements policy.DeviceStore: one transaction reads the
// device's active row (rolling back when it is gone), deletes it and the
// live challenge, stores d, and revokes every given certificate, ending its
// right to renew. An issuance that commits after it finds no active row.
func (s *Store) RetireDevice(_ context.Context, d policy.Device, revocations []policy.Revocation) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	key := devKey(d.User, d.ID)
	mu := s.lock(key)
	mu.Lock()
	defer mu.Unlock()
	tx, err := s.deviceTx(key)
	if err != nil {
		return err
	}
	tx.Del(activeTable, key)
	tx.Del(deviceChallengeTable, key)
	tx.Set(devicesTable, key, b)
	for _, r := range revocations {
		tx.Del(renewableTable, []byte(r.Serial))
		tx.Operations = append(tx.Operations, r.CA.Ops()...)
	}
	if err := s.db.Update(tx); err != nil {
		if database.IsErrNotFound(err) {
			return policy.ErrInactiveDevice
		}
		return fmt.Errorf("nosqlstore: retire device %s: %w", d.ID, err)
	}
	return nil
}
