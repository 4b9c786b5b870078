package nosqlstore

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

// migrate brings an older database to this layout, one version step per
// transaction (an interrupted migration resumes at its step).
func (s *Store) migrate() error {
	v, err := s.db.Get(metaTable, schemaKey)
	if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("nosqlstore: read schema version: %w", err)
	}
	switch string(v) {
	case schemaVersion:
		return nil
	case "3":
		return s.migrateV3()
	case "2":
	default:
		if err := s.migrateV1(); err != nil {
			return err
		}
	}
	if err := s.migrateV2(); err != nil {
		return err
	}
	return s.migrateV3()
}

// migrateV3 indexes the identity of every active device (version 3 kept no
// index), so that an identity registered before stays its device's alone.
// Where two active devices share an identity, the index names the first;
// the other keeps it until it is rekeyed or retired.
func (s *Store) migrateV3() error {
	entries, err := s.db.List(devicesTable)
	if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("nosqlstore: read the device registry: %w", err)
	}
	tx := &database.Tx{}
	seen := map[string]bool{}
	for _, e := range entries {
		var d policy.Device
		if err := json.Unmarshal(e.Value, &d); err != nil {
			return fmt.Errorf("nosqlstore: decode device %q: %w", e.Key, err)
		}
		if d.State != policy.DeviceActive || len(d.Identity) == 0 {
			continue
		}
		c, err := x509.ParseCertificate(d.Identity)
		if err != nil {
			continue
		}
		claim, err := json.Marshal(policy.IdentityClaim{User: d.User, Device: d.ID, At: d.CreatedAt})
		if err != nil {
			return err
		}
		for _, k := range policy.IdentityKeys(c) {
			if !seen[k] {
				seen[k] = true
				tx.Set(identitiesTable, []byte(k), claim)
			}
		}
	}
	tx.Set(metaTable, schemaKey, []byte(schemaVersion))
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("nosqlstore: migrate to schema %s: %w", schemaVersion, err)
	}
	return nil
}

// migrateV2 lists every user's devices (version 2 kept no such list).
func (s *Store) migrateV2() error {
	entries, err := s.db.List(devicesTable)
	if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("nosqlstore: read the device registry: %w", err)
	}
	byUser := map[string][]string{}
	for _, e := range entries {
		user, id := splitDevKey(e.Key)
		byUser[user] = append(byUser[user], id)
	}
	tx := &database.Tx{}
	for user, ids := range byUser {
		sort.Strings(ids)
		b, err := json.Marshal(ids)
		if err != nil {
			return err
		}
		tx.Set(userDevicesTable, []byte(user), b)
	}
	tx.Set(metaTable, schemaKey, []byte("3"))
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("nosqlstore: migrate to schema 3: %w", err)
	}
	return nil
}

// migrateV1 brings a version 1 database (one JSON list of certificates per
// device id, device ids global) to version 2 in one transaction: each list
// becomes a chain of rows per (user, device); every device that was issued
// a certificate is registered as active, without an identity certificate
// (it keeps enrolling and renewing, and gets no escrowed key until its
// identity is registered); the old tables are dropped.
func (s *Store) migrateV1() error {
	entries, err := s.db.List(v1ByDeviceTable)
	hadV1 := err == nil
	if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("nosqlstore: read version 1 inventory: %w", err)
	}
	tx := &database.Tx{}
	now := time.Now().UTC()
	for _, e := range entries {
		var list []policy.Issued
		if err := json.Unmarshal(e.Value, &list); err != nil {
			return fmt.Errorf("nosqlstore: migrate inventory of %s: %w", e.Key, err)
		}
		byUser := map[string][]policy.Issued{}
		for _, r := range list {
			byUser[r.User] = append(byUser[r.User], r)
		}
		for user, recs := range byUser {
			sort.SliceStable(recs, func(i, j int) bool { return recs[i].IssuedAt.Before(recs[j].IssuedAt) })
			prev := ""
			for _, r := range recs {
				b, err := json.Marshal(row{Issued: r, Prev: prev})
				if err != nil {
					return err
				}
				tx.Set(certsTable, []byte(r.Serial), b)
				tx.Set(renewableTable, []byte(r.Serial), marker)
				prev = r.Serial
			}
			key := devKey(user, string(e.Key))
			tx.Set(headsTable, key, []byte(prev))
			if string(e.Key) == policy.StaticDevice {
				continue
			}
			d, err := json.Marshal(policy.Device{User: user, ID: string(e.Key), State: policy.DeviceActive,
				CreatedAt: now, CreatedBy: "migration: enrolled before the device registry"})
			if err != nil {
				return err
			}
			tx.Set(devicesTable, key, d)
			tx.Set(activeTable, key, marker)
		}
	}
	if hadV1 {
		tx.DeleteTable(v1ByDeviceTable)
		if _, err := s.db.List(v1SerialTable); err == nil {
			tx.DeleteTable(v1SerialTable)
		}
	}
	tx.Set(metaTable, schemaKey, []byte("2"))
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("nosqlstore: migrate to schema 2: %w", err)
	}
	return nil
}
