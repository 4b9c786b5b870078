// Package escrow keeps users' S/MIME encryption certificates and their
// private keys in HashiCorp Vault: one KV v2 entry per user holds the whole
// history (read in one round trip), every private key inside it is
// encrypted with a Vault Transit key (a token that can only read KV never
// sees a key), writers use KV v2 check-and-set so concurrent imports for one
// user never lose each other, and entries are idempotent by the
// certificate's SHA-256 thumbprint.
//
// It is a backend of policy: it implements policy's escrow interfaces with
// policy's types and errors. It does not parse PFX files and makes no
// access decisions.
package escrow

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/smimeca/smimeca/policy"
)

// maxEntryBytes keeps a user's entry below Vault's default 1 MiB request
// and storage-entry limit, with room for Vault's own encoding.
const maxEntryBytes = 900 << 10

// stored is one certificate as it sits in Vault.
type stored struct {
	policy.Escrowed
	Cert  string   `json:"cert"`            // base64 DER
	Chain []string `json:"chain,omitempty"` // base64 DER
	Key   string   `json:"key"`             // Transit ciphertext of base64 PKCS#8
}

// certDER decodes the stored certificate of user.
func (c stored) certDER(user string) ([]byte, error) {
	der, err := base64.StdEncoding.DecodeString(c.Cert)
	if err != nil {
		return nil, fmt.Errorf("escrow: certificate %s of %s is corrupt", c.SHA256, user)
	}
	return der, nil
}

// entry is a user's KV v2 document.
type entry struct {
	Schema       int      `json:"schema"`
	User         string   `json:"user"`
	Certificates []stored `json:"certificates"`
}

// Logical is the part of Vault's API the store uses; (*vault.Logical)
// implements it.
type Logical interface {
	ReadWithContext(ctx context.Context, path string) (*vault.Secret, error)
	WriteWithContext(ctx context.Context, path string, data map[string]any) (*vault.Secret, error)
	DeleteWithContext(ctx context.Context, path string) (*vault.Secret, error)
	ListWithContext(ctx context.Context, path string) (*vault.Secret, error)
}

// Config names the Vault mounts and key.
type Config struct {
	// KVMount is the KV v2 mount (default "smimeca").
	KVMount string
	// TransitMount is the Transit mount (default "transit").
	TransitMount string
	// TransitKey is the Transit key name (default "smimeca-escrow").
	TransitKey string
	// MaxCASRetries bounds check-and-set retries (default 50).
	MaxCASRetries int
}

func (c *Config) defaults() {
	if c.KVMount == "" {
		c.KVMount = "smimeca"
	}
	if c.TransitMount == "" {
		c.TransitMount = "transit"
	}
	if c.TransitKey == "" {
		c.TransitKey = "smimeca-escrow"
	}
	if c.MaxCASRetries == 0 {
		c.MaxCASRetries = 50
	}
}

// Store is the Vault-backed escrow store. It is safe for concurrent use.
type Store struct {
	v   Logical
	cfg Config
	// userLocks serialise this process's writers of one user (striped by a
	// hash of the address), so they queue instead of losing check-and-set
	// rounds to each other; check-and-set still guards against other
	// processes.
	userLocks [64]sync.Mutex
}

func (s *Store) lock(user string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(user))
	return &s.userLocks[h.Sum32()%uint32(len(s.userLocks))]
}

// New returns a store on v.
func New(v Logical, cfg Config) *Store {
	cfg.defaults()
	return &Store{v: v, cfg: cfg}
}

func (s *Store) dataPath(user string) string {
	return s.cfg.KVMount + "/data/users/" + url.PathEscape(user)
}

func (s *Store) metadataPath(user string) string {
	return s.cfg.KVMount + "/metadata/users/" + url.PathEscape(user)
}

// read returns the user's entry and its KV version (0 when absent).
func (s *Store) read(ctx context.Context, user string) (*entry, int, error) {
	sec, err := s.v.ReadWithContext(ctx, s.dataPath(user))
	if err != nil {
		return nil, 0, vaultErr("read", err)
	}
	e := &entry{Schema: 1, User: user}
	if sec == nil || sec.Data == nil {
		return e, 0, nil
	}
	version := 0
	if md, ok := sec.Data["metadata"].(map[string]any); ok {
		if v, ok := md["version"].(json.Number); ok {
			n, _ := v.Int64()
			version = int(n)
		}
		// A deleted latest version reads as data == nil with its version:
		// the next write must still name that version.
	}
	data, ok := sec.Data["data"].(map[string]any)
	if !ok || data == nil {
		return e, version, nil
	}
	b, err := json.Marshal(data)
	if err != nil {
		return nil, 0, fmt.Errorf("escrow: decode entry: %w", err)
	}
	if err := json.Unmarshal(b, e); err != nil {
		return nil, 0, fmt.Errorf("escrow: decode entry of %s: %w", user, err)
	}
	return e, version, nil
}

// write stores e if the entry is still at version; it reports false on a
// check-and-set mismatch.
func (s *Store) write(ctx context.Context, user string, e *entry, version int) (bool, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return false, err
	}
	if len(b) > maxEntryBytes {
		return false, fmt.Errorf("%w (%d KiB for %d certificates; delete old ones first)", policy.ErrTooLarge, len(b)>>10, len(e.Certificates))
	}
	var data map[string]any
	if err := json.Unmarshal(b, &data); err != nil {
		return false, err
	}
	_, err = s.v.WriteWithContext(ctx, s.dataPath(user), map[string]any{
		"options": map[string]any{"cas": version},
		"data":    data,
	})
	if err != nil {
		if isCASMismatch(err) {
			return false, nil
		}
		return false, vaultErr("write", err)
	}
	return true, nil
}

// update applies fn to the user's entry with check-and-set, retrying on
// concurrent changes. fn returns false when there is nothing to write.
func (s *Store) update(ctx context.Context, user string, fn func(e *entry) (bool, error)) error {
	mu := s.lock(user)
	mu.Lock()
	defer mu.Unlock()
	for attempt := 0; attempt < s.cfg.MaxCASRetries; attempt++ {
		e, version, err := s.read(ctx, user)
		if err != nil {
			return err
		}
		changed, err := fn(e)
		if err != nil || !changed {
			return err
		}
		ok, err := s.write(ctx, user, e, version)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if err := sleepCtx(ctx, backoff(attempt)); err != nil {
			return err
		}
	}
	return policy.ErrConflict
}

// backoff grows quadratically to 100 ms, with jitter so that writers in
// different processes do not retry in lockstep.
func backoff(attempt int) time.Duration {
	d := time.Duration(1+attempt*attempt) * time.Millisecond
	if d > 100*time.Millisecond {
		d = 100 * time.Millisecond
	}
	return d/2 + time.Duration(rand.Int64N(int64(d)))
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Put escrows rec for user. When a certificate with the same SHA-256
// thumbprint is already escrowed it changes nothing and reports duplicate
// with the stored metadata.
//
// The key is encrypted before the entry is read, so that a fresh import
// costs one Transit call, one KV read and one KV write.
func (s *Store) Put(ctx context.Context, user string, rec policy.EscrowedKey) (policy.Escrowed, bool, error) {
	ct, err := s.encrypt(ctx, rec.KeyPKCS8)
	if err != nil {
		return policy.Escrowed{}, false, err
	}
	st := stored{Escrowed: rec.Escrowed, Cert: base64.StdEncoding.EncodeToString(rec.CertDER), Key: ct}
	for _, c := range rec.ChainDER {
		st.Chain = append(st.Chain, base64.StdEncoding.EncodeToString(c))
	}
	var dup *stored
	err = s.update(ctx, user, func(e *entry) (bool, error) {
		if m, ok := e.find(rec.SHA256); ok {
			dup = &m
			return false, nil
		}
		e.Certificates = append(e.Certificates, st)
		return true, nil
	})
	if err != nil {
		return policy.Escrowed{}, false, err
	}
	if dup != nil {
		return dup.Escrowed, true, nil
	}
	return rec.Escrowed, false, nil
}

// PutMany escrows several certificates of one user at once — a user's
// history from one export — with one Transit batch encrypt, one KV read
// and one KV write: all of them land or none does. Certificates already
// escrowed (by SHA-256 thumbprint, also repeats within recs) change nothing;
// it returns how many were added.
func (s *Store) PutMany(ctx context.Context, user string, recs []policy.EscrowedKey) (int, error) {
	if len(recs) == 0 {
		return 0, nil
	}
	keys := make([][]byte, len(recs))
	for i, r := range recs {
		keys[i] = r.KeyPKCS8
	}
	cts, err := s.encryptBatch(ctx, keys)
	if err != nil {
		return 0, err
	}
	added := 0
	err = s.update(ctx, user, func(e *entry) (bool, error) {
		added = 0
		for i, rec := range recs {
			if _, ok := e.find(rec.SHA256); ok {
				continue
			}
			st := stored{Escrowed: rec.Escrowed, Cert: base64.StdEncoding.EncodeToString(rec.CertDER), Key: cts[i]}
			for _, c := range rec.ChainDER {
				st.Chain = append(st.Chain, base64.StdEncoding.EncodeToString(c))
			}
			e.Certificates = append(e.Certificates, st)
			added++
		}
		return added > 0, nil
	})
	if err != nil {
		return 0, err
	}
	return added, nil
}

// index returns the position of the certificate named by its SHA-256 or
// SHA-1 thumbprint (hex, any case, colons allowed), or -1.
func (e *entry) index(thumbprint string) int {
	t := strings.ReplaceAll(thumbprint, ":", "")
	for i, c := range e.Certificates {
		if strings.EqualFold(c.SHA256, t) || strings.EqualFold(c.SHA1, t) {
			return i
		}
	}
	return -1
}

func (e *entry) find(sha256 string) (stored, bool) {
	for _, c := range e.Certificates {
		if strings.EqualFold(c.SHA256, sha256) {
			return c, true
		}
	}
	return stored{}, false
}

// List returns the metadata of the user's escrowed certificates, newest
// notAfter first, in one Vault read.
func (s *Store) List(ctx context.Context, user string) ([]policy.Escrowed, error) {
	e, _, err := s.read(ctx, user)
	if err != nil {
		return nil, err
	}
	out := make([]policy.Escrowed, 0, len(e.Certificates))
	for _, c := range e.Certificates {
		out = append(out, c.Escrowed)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].NotAfter.After(out[j].NotAfter) })
	return out, nil
}

// Certificates returns the user's escrowed certificates without their
// keys (no Transit call), newest notAfter first, in one Vault read.
func (s *Store) Certificates(ctx context.Context, user string) ([]policy.PublicCertificate, error) {
	e, _, err := s.read(ctx, user)
	if err != nil {
		return nil, err
	}
	out := make([]policy.PublicCertificate, 0, len(e.Certificates))
	for _, c := range e.Certificates {
		der, err := c.certDER(user)
		if err != nil {
			return nil, err
		}
		out = append(out, policy.PublicCertificate{Escrowed: c.Escrowed, CertDER: der})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].NotAfter.After(out[j].NotAfter) })
	return out, nil
}

// Users lists the addresses that have an escrow entry (one Vault LIST).
func (s *Store) Users(ctx context.Context) ([]string, error) {
	sec, err := s.v.ListWithContext(ctx, s.cfg.KVMount+"/metadata/users/")
	if err != nil {
		return nil, vaultErr("list users", err)
	}
	if sec == nil || sec.Data == nil {
		return nil, nil
	}
	keys, _ := sec.Data["keys"].([]any)
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if u, ok := k.(string); ok {
			if d, err := url.PathUnescape(u); err == nil {
				out = append(out, d)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// MarkRevoked records that the certificate named by its SHA-256 or SHA-1
// thumbprint was revoked by its CA at at, for reason, and returns its
// metadata; policy.ErrNotFound when it is not escrowed. A certificate
// already marked keeps its first record (and revoked reports false).
func (s *Store) MarkRevoked(ctx context.Context, user, thumbprint string, at time.Time, reason string) (m policy.Escrowed, revoked bool, err error) {
	var found bool
	err = s.update(ctx, user, func(e *entry) (bool, error) {
		found, revoked = false, false
		i := e.index(thumbprint)
		if i < 0 {
			return false, nil
		}
		found, m = true, e.Certificates[i].Escrowed
		if !m.RevokedAt.IsZero() {
			return false, nil
		}
		e.Certificates[i].RevokedAt, e.Certificates[i].RevocationReason = at.UTC(), reason
		m, revoked = e.Certificates[i].Escrowed, true
		return true, nil
	})
	if err != nil {
		return policy.Escrowed{}, false, err
	}
	if !found {
		return policy.Escrowed{}, false, fmt.Errorf("%w: no certificate %s escrowed for %s", policy.ErrNotFound, thumbprint, user)
	}
	return m, revoked, nil
}

// Load returns the user's certificates with their private keys decrypted:
// one KV read and one Transit batch decryption, whatever the number of
// certificates. Newest notAfter first.
func (s *Store) Load(ctx context.Context, user string) ([]policy.EscrowedKey, error) {
	return s.load(ctx, user, func(stored) bool { return true })
}

// LoadKey returns one certificate, named by its SHA-256 (hex), with its
// private key decrypted — and no other key: one KV read and one Transit
// decryption. policy.ErrNotFound when it is not escrowed.
func (s *Store) LoadKey(ctx context.Context, user, sha256 string) (policy.EscrowedKey, error) {
	out, err := s.load(ctx, user, func(c stored) bool { return c.SHA256 == sha256 })
	if err != nil {
		return policy.EscrowedKey{}, err
	}
	if len(out) == 0 {
		return policy.EscrowedKey{}, fmt.Errorf("%w: no escrowed certificate %s for %s", policy.ErrNotFound, sha256, user)
	}
	return out[0], nil
}

// load decrypts the certificates of user that want selects.
func (s *Store) load(ctx context.Context, user string, want func(stored) bool) ([]policy.EscrowedKey, error) {
	e, _, err := s.read(ctx, user)
	if err != nil {
		return nil, err
	}
	var sel []stored
	for _, c := range e.Certificates {
		if want(c) {
			sel = append(sel, c)
		}
	}
	if len(sel) == 0 {
		return nil, nil
	}
	cts := make([]string, len(sel))
	for i, c := range sel {
		cts[i] = c.Key
	}
	keys, err := s.decrypt(ctx, cts)
	if err != nil {
		return nil, err
	}
	out := make([]policy.EscrowedKey, len(sel))
	for i, c := range sel {
		der, err := c.certDER(user)
		if err != nil {
			return nil, err
		}
		r := policy.EscrowedKey{Escrowed: c.Escrowed, CertDER: der, KeyPKCS8: keys[i]}
		for _, cc := range c.Chain {
			if d, err := base64.StdEncoding.DecodeString(cc); err == nil {
				r.ChainDER = append(r.ChainDER, d)
			}
		}
		out[i] = r
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].NotAfter.After(out[j].NotAfter) })
	return out, nil
}

// Delete removes one certificate, named by its SHA-256 or SHA-1 thumbprint
// (hex), and returns its metadata; policy.ErrNotFound when it is not escrowed.
// Every older version of the user's entry is then destroyed (KV v2
// destroy): an old version still holds the deleted key's Transit
// ciphertext, which smimeca's own token could decrypt. A Delete that failed
// half-way is completed by running it again: the destruction runs also when
// the certificate is gone already.
func (s *Store) Delete(ctx context.Context, user, thumbprint string) (policy.Escrowed, error) {
	var removed *policy.Escrowed
	err := s.update(ctx, user, func(e *entry) (bool, error) {
		removed = nil
		i := e.index(thumbprint)
		if i < 0 {
			return false, nil
		}
		m := e.Certificates[i].Escrowed
		removed = &m
		e.Certificates = append(e.Certificates[:i], e.Certificates[i+1:]...)
		return true, nil
	})
	if err != nil {
		return policy.Escrowed{}, err
	}
	if err := s.destroyHistory(ctx, user); err != nil {
		return policy.Escrowed{}, err
	}
	if removed == nil {
		return policy.Escrowed{}, fmt.Errorf("%w: no certificate %s escrowed for %s", policy.ErrNotFound, thumbprint, user)
	}
	return *removed, nil
}

// destroyHistory destroys every version of the user's entry but the
// current one.
func (s *Store) destroyHistory(ctx context.Context, user string) error {
	sec, err := s.v.ReadWithContext(ctx, s.metadataPath(user))
	if err != nil {
		return vaultErr("read versions", err)
	}
	if sec == nil || sec.Data == nil {
		return nil
	}
	cur, _ := sec.Data["current_version"].(json.Number)
	current, _ := cur.Int64()
	versions, _ := sec.Data["versions"].(map[string]any)
	var old []int64
	for k, v := range versions {
		n, err := strconv.ParseInt(k, 10, 64)
		if err != nil || n >= current {
			continue
		}
		if m, _ := v.(map[string]any); m["destroyed"] == true {
			continue
		}
		old = append(old, n)
	}
	if len(old) == 0 {
		return nil
	}
	sort.Slice(old, func(i, j int) bool { return old[i] < old[j] })
	if _, err := s.v.WriteWithContext(ctx, s.cfg.KVMount+"/destroy/users/"+url.PathEscape(user), map[string]any{"versions": old}); err != nil {
		return vaultErr("destroy old versions", err)
	}
	return nil
}

// Purge removes the user's entry with every version Vault keeps of it and
// returns the metadata of what was escrowed.
func (s *Store) Purge(ctx context.Context, user string) ([]policy.Escrowed, error) {
	list, err := s.List(ctx, user)
	if err != nil {
		return nil, err
	}
	if _, err := s.v.DeleteWithContext(ctx, s.metadataPath(user)); err != nil {
		return nil, vaultErr("purge", err)
	}
	return list, nil
}

func (s *Store) encrypt(ctx context.Context, plaintext []byte) (string, error) {
	sec, err := s.v.WriteWithContext(ctx, s.cfg.TransitMount+"/encrypt/"+s.cfg.TransitKey, map[string]any{
		"plaintext": base64.StdEncoding.EncodeToString(plaintext),
	})
	if err != nil {
		return "", vaultErr("transit encrypt", err)
	}
	ct, _ := sec.Data["ciphertext"].(string)
	if !strings.HasPrefix(ct, "vault:") {
		return "", errors.New("escrow: transit encrypt returned no ciphertext")
	}
	return ct, nil
}

// transitBatch sends one Transit batch request (op "encrypt" or "decrypt",
// items of field → value) and returns its results, one per item.
func (s *Store) transitBatch(ctx context.Context, op, field string, items []string) ([]map[string]any, error) {
	batch := make([]map[string]any, len(items))
	for i, v := range items {
		batch[i] = map[string]any{field: v}
	}
	sec, err := s.v.WriteWithContext(ctx, s.cfg.TransitMount+"/"+op+"/"+s.cfg.TransitKey, map[string]any{"batch_input": batch})
	if err != nil {
		return nil, vaultErr("transit "+op, err)
	}
	results, _ := sec.Data["batch_results"].([]any)
	if len(results) != len(items) {
		return nil, fmt.Errorf("escrow: transit %s returned %d results for %d keys", op, len(results), len(items))
	}
	out := make([]map[string]any, len(results))
	for i, r := range results {
		out[i], _ = r.(map[string]any)
	}
	return out, nil
}

// encryptBatch encrypts several plaintexts with one Transit request.
func (s *Store) encryptBatch(ctx context.Context, plaintexts [][]byte) ([]string, error) {
	items := make([]string, len(plaintexts))
	for i, p := range plaintexts {
		items[i] = base64.StdEncoding.EncodeToString(p)
	}
	results, err := s.transitBatch(ctx, "encrypt", "plaintext", items)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(results))
	for i, m := range results {
		ct, _ := m["ciphertext"].(string)
		if !strings.HasPrefix(ct, "vault:") {
			return nil, fmt.Errorf("escrow: transit could not encrypt key %d", i)
		}
		out[i] = ct
	}
	return out, nil
}

func (s *Store) decrypt(ctx context.Context, cts []string) ([][]byte, error) {
	results, err := s.transitBatch(ctx, "decrypt", "ciphertext", cts)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(results))
	for i, m := range results {
		if e, _ := m["error"].(string); e != "" {
			return nil, fmt.Errorf("escrow: transit could not decrypt key %d", i)
		}
		pt, _ := m["plaintext"].(string)
		b, err := base64.StdEncoding.DecodeString(pt)
		if err != nil {
			return nil, fmt.Errorf("escrow: transit returned a malformed key %d", i)
		}
		out[i] = b
	}
	return out, nil
}

func isCASMismatch(err error) bool {
	var re *vault.ResponseError
	if errors.As(err, &re) && re.StatusCode == 400 {
		for _, e := range re.Errors {
			if strings.Contains(e, "check-and-set") {
				return true
			}
		}
	}
	return false
}

// vaultErr turns a Vault client error into policy.ErrUnavailable when Vault could
// not answer (connection, 5xx, sealed, rate limited), and otherwise into an
// error that names the operation and status without echoing request data.
func vaultErr(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %s: %v", policy.ErrUnavailable, op, err)
	}
	var re *vault.ResponseError
	if errors.As(err, &re) {
		if re.StatusCode >= 500 || re.StatusCode == 429 {
			return fmt.Errorf("%w: %s: HTTP %d", policy.ErrUnavailable, op, re.StatusCode)
		}
		return fmt.Errorf("escrow: vault %s: HTTP %d: %s", op, re.StatusCode, strings.Join(re.Errors, "; "))
	}
	return fmt.Errorf("%w: %s: %v", policy.ErrUnavailable, op, err)
}
