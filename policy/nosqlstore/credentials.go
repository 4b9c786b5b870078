package nosqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/policy"
)

var (
	credentialsTable     = []byte("smimeca_credentials")      // serial → credential
	credentialNamesTable = []byte("smimeca_credential_names") // name → current serial
)

// CredentialStore implements policy.CredentialStore in the same database.
type CredentialStore struct{ db database.DB }

var _ policy.CredentialStore = (*CredentialStore)(nil)

// NewCredentialStore returns the credential store on db, creating its tables.
func NewCredentialStore(db database.DB) (*CredentialStore, error) {
	for _, t := range [][]byte{credentialsTable, credentialNamesTable} {
		if err := db.CreateTable(t); err != nil {
			return nil, fmt.Errorf("nosqlstore: create table %s: %w", t, err)
		}
	}
	return &CredentialStore{db: db}, nil
}

// PutCredential implements policy.CredentialStore.
func (s *CredentialStore) PutCredential(_ context.Context, c policy.Credential) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	tx := &database.Tx{}
	tx.Set(credentialsTable, []byte(c.Serial), b)
	tx.Set(credentialNamesTable, []byte(c.Name), []byte(c.Serial))
	if err := s.db.Update(tx); err != nil {
		return fmt.Errorf("nosqlstore: store credential %s: %w", c.Name, err)
	}
	return nil
}

// PutCredentialSerial implements policy.CredentialStore.
func (s *CredentialStore) PutCredentialSerial(_ context.Context, c policy.Credential) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if err := s.db.Set(credentialsTable, []byte(c.Serial), b); err != nil {
		return fmt.Errorf("nosqlstore: store credential %s: %w", c.Name, err)
	}
	return nil
}

// CredentialBySerial implements policy.CredentialStore.
func (s *CredentialStore) CredentialBySerial(_ context.Context, serial string) (policy.Credential, error) {
	b, err := s.db.Get(credentialsTable, []byte(serial))
	if database.IsErrNotFound(err) {
		return policy.Credential{}, policy.ErrNotFound
	} else if err != nil {
		return policy.Credential{}, fmt.Errorf("nosqlstore: read credential: %w", err)
	}
	var c policy.Credential
	if err := json.Unmarshal(b, &c); err != nil {
		return policy.Credential{}, fmt.Errorf("nosqlstore: decode credential: %w", err)
	}
	return c, nil
}

// CredentialByName implements policy.CredentialStore.
func (s *CredentialStore) CredentialByName(ctx context.Context, name string) (policy.Credential, error) {
	serial, err := s.db.Get(credentialNamesTable, []byte(name))
	if database.IsErrNotFound(err) {
		return policy.Credential{}, policy.ErrNotFound
	} else if err != nil {
		return policy.Credential{}, fmt.Errorf("nosqlstore: read credential name: %w", err)
	}
	return s.CredentialBySerial(ctx, string(serial))
}

// ListCredentials implements policy.CredentialStore.
func (s *CredentialStore) ListCredentials(_ context.Context) ([]policy.Credential, error) {
	entries, err := s.db.List(credentialsTable)
	if database.IsErrNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("nosqlstore: list credentials: %w", err)
	}
	out := make([]policy.Credential, 0, len(entries))
	for _, e := range entries {
		var c policy.Credential
		if err := json.Unmarshal(e.Value, &c); err != nil {
			return nil, fmt.Errorf("nosqlstore: decode credential: %w", err)
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].IssuedAt.Before(out[j].IssuedAt)
	})
	return out, nil
}
