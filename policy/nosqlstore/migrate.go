package nosqlstore

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

// migrate brings a version 1 database (one JSON list of certificates per
// device id, device ids global) to this layout in one transaction: each
// list becomes a chain of rows per (user, device); every device that was
// issued a certificate is registered as active, without an identity
// certificate (it keeps enrolling and renewing, and gets no escrowed key
// until its identity is registered); the old tables are dropped.
func (s *Store) migrate() error {
	v, err := s.db.Get(metaTable, schemaKey)
	if err == nil && string(v) == schemaVersion {
		return nil
	} else if err != nil && !database.IsErrNotFound(err) {
		return fmt.Errorf("nosqlstore: read schema version: %w", err)
	}
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
	tx.Set(metaTable, schemaKey, []byte(schemaVersion))
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("nosqlstore: migrate to schema %s: %w", schemaVersion, err)
	}
	return nil
}
