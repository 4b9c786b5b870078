package policy

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Audit actions of the imported-PFX synchronisation.
const (
	// ActionKeyReleaseIntune is escrowed keys put into Intune's
	// imported-PFX store, each re-wrapped with a fresh password encrypted
	// to the tenant's PFX Certificate Connector key (the recipient).
	ActionKeyReleaseIntune = "key.release.intune"
	// ActionIntunePFXDelete is a record this CA put there deleted because
	// its key is no longer escrowed here.
	ActionIntunePFXDelete = "intune.pfx.delete"
)

// RemotePFX is one record of an imported-PFX store: its ID there and the
// certificate's SHA-1 thumbprint (hex).
type RemotePFX struct {
	ID, Thumbprint string
}

// PFXStore is an imported-PFX store outside smimeca — Intune's
// userPfxCertificates, which its PFX Certificate Connector delivers to the
// user's devices. The store's adapter re-wraps each key and encrypts the
// password to the connector's key, the one recipient it is configured with.
type PFXStore interface {
	// List returns the user's records.
	List(ctx context.Context, user string) ([]RemotePFX, error)
	// Upload puts one escrowed key there and returns its record's ID.
	Upload(ctx context.Context, user string, k EscrowedKey) (string, error)
	// Delete deletes a record by ID.
	Delete(ctx context.Context, id string) error
	// Recipient is the SHA-256 (hex) of the public key the passwords are
	// encrypted to, for the audit.
	Recipient() string
}

// SyncLedger remembers which escrowed certificates this CA put into the
// PFX store, so that only those are ever deleted there.
type SyncLedger interface {
	// Synced returns the user's synced certificates: thumbprint (SHA-1
	// hex, upper case) → record ID.
	Synced(ctx context.Context, user string) (map[string]string, error)
	// SyncedUsers returns every user with a synced certificate.
	SyncedUsers(ctx context.Context) ([]string, error)
	// SetSynced records one; Unsynced forgets one.
	SetSynced(ctx context.Context, user, thumbprint, id string) error
	Unsynced(ctx context.Context, user, thumbprint string) error
}

// EscrowReader is what the synchronisation reads of the escrow.
type EscrowReader interface {
	KeyStore
	Users(ctx context.Context) ([]string, error)
}

// PFXSync puts every escrowed encryption certificate of a user into the
// imported-PFX store, once (idempotent by thumbprint: a second run uploads
// nothing), and deletes there what this CA put there and no longer
// escrows. Each upload is a key release, recorded before it is made: no
// audit, no release.
type PFXSync struct {
	escrow EscrowReader
	dest   PFXStore
	ledger SyncLedger
	audit  Recorder
	now    func() time.Time
}

// NewPFXSync returns the synchronisation of escrow into dest.
func NewPFXSync(escrow EscrowReader, dest PFXStore, ledger SyncLedger, audit Recorder) *PFXSync {
	return &PFXSync{escrow: escrow, dest: dest, ledger: ledger, audit: audit, now: time.Now}
}

// SyncResult counts what a synchronisation did.
type SyncResult struct {
	Users, Uploaded, Present, Deleted, Failed int
	// Errors says what failed, per user (no secret in it).
	Errors []string
}

func (r *SyncResult) add(o SyncResult) {
	r.Users += o.Users
	r.Uploaded += o.Uploaded
	r.Present += o.Present
	r.Deleted += o.Deleted
	r.Failed += o.Failed
	r.Errors = append(r.Errors, o.Errors...)
}

// SyncAll synchronises every escrowed user and every user with synced
// records (a purged user's records are deleted); progress, when not nil,
// is called after each user.
func (s *PFXSync) SyncAll(ctx context.Context, progress func(done, total int)) (SyncResult, error) {
	users, err := s.escrow.Users(ctx)
	if err != nil {
		return SyncResult{}, err
	}
	synced, err := s.ledger.SyncedUsers(ctx)
	if err != nil {
		return SyncResult{}, err
	}
	seen := map[string]bool{}
	var all []string
	for _, u := range append(users, synced...) {
		if !seen[u] {
			seen[u] = true
			all = append(all, u)
		}
	}
	sort.Strings(all)
	var total SyncResult
	for i, u := range all {
		r, err := s.SyncUser(ctx, u)
		total.add(r)
		if err != nil {
			return total, err
		}
		if progress != nil {
			progress(i+1, len(all))
		}
	}
	return total, nil
}

// SyncUser synchronises one user. A failure of one certificate is counted
// and the others go on; an unavailable escrow, store or audit stops it.
func (s *PFXSync) SyncUser(ctx context.Context, user string) (SyncResult, error) {
	u, err := NormalizeEmail(user)
	if err != nil {
		return SyncResult{}, err
	}
	res := SyncResult{Users: 1}
	keys, err := s.escrow.Load(ctx, u)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return res, err
	}
	remote, err := s.dest.List(ctx, u)
	if err != nil {
		return res, err
	}
	there := map[string]string{}
	for _, r := range remote {
		there[strings.ToUpper(r.Thumbprint)] = r.ID
	}
	ledger, err := s.ledger.Synced(ctx, u)
	if err != nil {
		return res, err
	}
	escrowed := map[string]bool{}
	for _, k := range keys {
		thumb := strings.ToUpper(k.SHA1)
		escrowed[thumb] = true
		if k.Purpose != "" && k.Purpose != PurposeEncryption {
			continue
		}
		if id, ok := there[thumb]; ok {
			res.Present++
			if ledger[thumb] != id {
				if err := s.ledger.SetSynced(ctx, u, thumb, id); err != nil {
					return res, err
				}
			}
			continue
		}
		ev := Event{Time: s.now().UTC(), Actor: ActorFrom(ctx), Action: ActionKeyReleaseIntune, User: u,
			SHA256: []string{k.SHA256}, Recipient: s.dest.Recipient(), Result: "ok",
			Detail: "to Intune's imported-PFX store, password encrypted to its PFX connector key"}
		if err := s.audit.Record(ctx, ev); err != nil {
			return res, fmt.Errorf("policy: the release could not be audited, so nothing was released: %w", err)
		}
		id, err := s.dest.Upload(ctx, u, k)
		if err != nil {
			res.Failed++
			res.Errors = append(res.Errors, fmt.Sprintf("%s %s: %v", u, k.SHA256, err))
			s.audit.Audit(ctx, Event{Time: s.now().UTC(), Actor: ActorFrom(ctx), Action: ActionKeyReleaseIntune, User: u,
				SHA256: []string{k.SHA256}, Recipient: s.dest.Recipient(), Result: "error", Detail: "the upload failed"})
			continue
		}
		res.Uploaded++
		if err := s.ledger.SetSynced(ctx, u, thumb, id); err != nil {
			return res, err
		}
	}
	for thumb, id := range ledger {
		if escrowed[thumb] {
			continue
		}
		if _, ok := there[thumb]; ok {
			if err := s.dest.Delete(ctx, id); err != nil {
				res.Failed++
				res.Errors = append(res.Errors, fmt.Sprintf("%s: delete %s there: %v", u, thumb, err))
				continue
			}
			res.Deleted++
			s.audit.Audit(ctx, Event{Time: s.now().UTC(), Actor: ActorFrom(ctx), Action: ActionIntunePFXDelete, User: u,
				Result: "ok", Detail: "no longer escrowed here: deleted from Intune (SHA-1 " + thumb + ")"})
		}
		if err := s.ledger.Unsynced(ctx, u, thumb); err != nil {
			return res, err
		}
	}
	return res, nil
}
