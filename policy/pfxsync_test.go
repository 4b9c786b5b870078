package policy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/smimeca/smimeca/policy"
)

// escrowOf is an escrow reader over fixed keys.
type escrowOf map[string][]policy.EscrowedKey

func (e escrowOf) Load(_ context.Context, user string) ([]policy.EscrowedKey, error) {
	if k, ok := e[user]; ok {
		return k, nil
	}
	return nil, policy.ErrNotFound
}

func (e escrowOf) LoadKey(ctx context.Context, user, sha256 string) (policy.EscrowedKey, error) {
	keys, err := e.Load(ctx, user)
	for _, k := range keys {
		if k.SHA256 == sha256 {
			return k, nil
		}
	}
	if err == nil {
		err = policy.ErrNotFound
	}
	return policy.EscrowedKey{}, err
}

func (e escrowOf) Users(context.Context) ([]string, error) {
	var out []string
	for u := range e {
		out = append(out, u)
	}
	return out, nil
}

// pfxStore is an imported-PFX store in memory; failThumb fails uploads of
// one thumbprint.
type pfxStore struct {
	recs      map[string]policy.RemotePFX // id → record
	user      map[string]string           // id → user
	failThumb string
	n         int
}

func (p *pfxStore) List(_ context.Context, user string) ([]policy.RemotePFX, error) {
	var out []policy.RemotePFX
	for id, r := range p.recs {
		if p.user[id] == user {
			out = append(out, r)
		}
	}
	return out, nil
}

func (p *pfxStore) Upload(_ context.Context, user string, k policy.EscrowedKey) (string, error) {
	if k.SHA1 == p.failThumb {
		return "", errors.New("HTTP 500")
	}
	p.n++
	id := fmt.Sprint("id-", p.n)
	p.recs[id], p.user[id] = policy.RemotePFX{ID: id, Thumbprint: k.SHA1}, user
	return id, nil
}

func (p *pfxStore) Delete(_ context.Context, id string) error {
	delete(p.recs, id)
	return nil
}

func (p *pfxStore) Recipient() string { return "connector-sha256" }

func escrowedKey(thumb string) policy.EscrowedKey {
	return policy.EscrowedKey{Escrowed: policy.Escrowed{SHA1: thumb, SHA256: "sha256-" + thumb, Purpose: policy.PurposeEncryption}}
}

// No audit, no release: when the event cannot be recorded nothing is
// uploaded; a failed upload is counted and the others go on; only what
// this CA uploaded is ever deleted there.
func TestPFXSyncRules(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	esc := escrowOf{"alice@example.com": {escrowedKey("AA"), escrowedKey("BB"), escrowedKey("CC")}}
	dest := &pfxStore{recs: map[string]policy.RemotePFX{}, user: map[string]string{}, failThumb: "CC"}
	// A record someone else put there for alice.
	dest.recs["theirs"], dest.user["theirs"] = policy.RemotePFX{ID: "theirs", Thumbprint: "FF"}, "alice@example.com"
	sync := policy.NewPFXSync(esc, dest, v.store, v.audit)

	v.audit.failRecord(errors.New("audit disk full"))
	if _, err := sync.SyncUser(ctx, "alice@example.com"); err == nil || len(dest.recs) != 1 {
		t.Fatalf("with the audit failing: %v, %d records", err, len(dest.recs))
	}
	v.audit.failRecord(nil)
	r, err := sync.SyncUser(ctx, "Alice@Example.com")
	if err != nil || r.Uploaded != 2 || r.Failed != 1 || len(r.Errors) != 1 {
		t.Fatalf("sync: %+v %v", r, err)
	}
	dest.failThumb = ""
	if r, _ := sync.SyncUser(ctx, "alice@example.com"); r.Uploaded != 1 || r.Present != 2 {
		t.Errorf("the retry: %+v", r)
	}
	// Alice's escrow goes: what smimeca put there goes, theirs stays.
	delete(esc, "alice@example.com")
	r, err = sync.SyncAll(ctx, nil)
	if err != nil || r.Deleted != 3 || len(dest.recs) != 1 || dest.recs["theirs"].ID == "" {
		t.Fatalf("after the purge: %+v %v, left %v", r, err, dest.recs)
	}
	if users, _ := v.store.SyncedUsers(ctx); len(users) != 0 {
		t.Errorf("the ledger still lists %v", users)
	}
}
