package escrow_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	"github.com/smimeca/smimeca/policy"
)

// record makes a record with random bytes standing in for a certificate and
// a private key (the store does not parse them).
func record(t testing.TB, size int) policy.EscrowedKey {
	cert := make([]byte, 1200)
	key := make([]byte, size)
	rand.Read(cert)
	rand.Read(key)
	sum := sha256.Sum256(cert)
	return policy.EscrowedKey{
		Escrowed: policy.Escrowed{SHA256: hex.EncodeToString(sum[:]), SHA1: hex.EncodeToString(sum[:20]),
			Serial: "01", NotAfter: time.Now().Add(time.Duration(len(key)) * time.Hour), Purpose: policy.PurposeEncryption},
		CertDER: cert, KeyPKCS8: key,
	}
}

func TestPutLoadListDeletePurge(t *testing.T) {
	t.Parallel()
	v := testvault.Mount(t)
	s, own := v.Store(t)
	ctx := context.Background()
	a, b := record(t, 1218), record(t, 1219)
	if _, dup, err := s.Put(ctx, "alice@example.com", a); err != nil || dup {
		t.Fatalf("put a: dup=%v err=%v", dup, err)
	}
	if _, dup, err := s.Put(ctx, "alice@example.com", b); err != nil || dup {
		t.Fatalf("put b: dup=%v err=%v", dup, err)
	}
	if _, dup, err := s.Put(ctx, "alice@example.com", a); err != nil || !dup {
		t.Fatalf("re-put a: dup=%v err=%v, want duplicate", dup, err)
	}
	recs, err := s.Load(ctx, "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("loaded %d, want 2", len(recs))
	}
	// Newest notAfter first (b's is later), keys decrypted byte for byte.
	if recs[0].SHA256 != b.SHA256 || !bytes.Equal(recs[0].KeyPKCS8, b.KeyPKCS8) || !bytes.Equal(recs[1].KeyPKCS8, a.KeyPKCS8) {
		t.Error("keys or order differ after the round trip")
	}
	// One key alone, by its SHA-256; an unknown one is ErrNotFound.
	one, err := s.LoadKey(ctx, "alice@example.com", a.SHA256)
	if err != nil || one.SHA256 != a.SHA256 || !bytes.Equal(one.KeyPKCS8, a.KeyPKCS8) || !bytes.Equal(one.CertDER, a.CertDER) {
		t.Fatalf("LoadKey: %v", err)
	}
	if _, err := s.LoadKey(ctx, "alice@example.com", strings.Repeat("0", 64)); !errors.Is(err, policy.ErrNotFound) {
		t.Errorf("LoadKey of an unknown certificate: %v", err)
	}
	// The key never sits in KV in the clear.
	raw, err := v.Root.Logical().Read(v.KV("alice@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	dump := fmt.Sprint(raw.Data)
	for _, k := range [][]byte{a.KeyPKCS8, b.KeyPKCS8} {
		if strings.Contains(dump, string(k[:32])) || strings.Contains(dump, fmt.Sprintf("%x", k[:32])) {
			t.Fatal("a private key is stored in KV in the clear")
		}
	}
	if !strings.Contains(dump, "vault:v1:") {
		t.Error("keys are not Transit ciphertext")
	}
	if _, err := s.Delete(ctx, "alice@example.com", a.SHA1); err != nil {
		t.Fatalf("delete by SHA-1: %v", err)
	}
	if _, err := s.Delete(ctx, "alice@example.com", a.SHA256); !errors.Is(err, policy.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	list, _ := s.List(ctx, "alice@example.com")
	if len(list) != 1 || list[0].SHA256 != b.SHA256 {
		t.Fatalf("after delete: %+v", list)
	}
	// Delete really deletes: no older version, read with smimeca's own
	// token, still holds the deleted key's ciphertext (versions 1 and 2
	// held a; the current one, 3, does not).
	for _, ver := range []string{"1", "2"} {
		old, err := own.Logical().ReadWithData(v.KV("alice@example.com"), map[string][]string{"version": {ver}})
		if err != nil {
			t.Fatal(err)
		}
		if old != nil && old.Data["data"] != nil {
			t.Fatalf("version %s is still readable after the delete", ver)
		}
	}
	purged, err := s.Purge(ctx, "alice@example.com")
	if err != nil || len(purged) != 1 {
		t.Fatalf("purge: %v %v", purged, err)
	}
	if list, _ := s.List(ctx, "alice@example.com"); len(list) != 0 {
		t.Fatalf("after purge: %+v", list)
	}
	// Purge removes the version history too.
	if old, err := v.Root.Logical().ReadWithData(v.KV("alice@example.com"), map[string][]string{"version": {"1"}}); err != nil || (old != nil && old.Data["data"] != nil) {
		t.Fatalf("an old version survived the purge: %v %v", old, err)
	}
}

func TestConcurrentImportsLoseNothing(t *testing.T) {
	t.Parallel()
	v := testvault.Mount(t)
	s, _ := v.Store(t)
	// A second store stands for a second smimeca process: its writers do
	// not share the first one's locks, so check-and-set must arbitrate.
	other, _ := v.Store(t)
	ctx := context.Background()
	const n = 100
	recs := make([]policy.EscrowedKey, n)
	for i := range recs {
		recs[i] = record(t, 1200+i)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			st := s
			if i%2 == 1 {
				st = other
			}
			if _, _, err := st.Put(ctx, "bob@example.com", recs[i]); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	list, err := s.List(ctx, "bob@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != n {
		t.Fatalf("%d certificates listed after %d concurrent imports", len(list), n)
	}
	// A user with 100 certificates still loads, in one KV read.
	loaded, err := s.Load(ctx, "bob@example.com")
	if err != nil || len(loaded) != n {
		t.Fatalf("load 100: %d %v", len(loaded), err)
	}
}

func TestSameCertificateConcurrentlyIsOneEntry(t *testing.T) {
	t.Parallel()
	v := testvault.Mount(t)
	s, _ := v.Store(t)
	ctx := context.Background()
	r := record(t, 1218)
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, dup, err := s.Put(ctx, "carol@example.com", r)
			if err != nil {
				t.Error(err)
				return
			}
			if !dup {
				mu.Lock()
				fresh++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	list, _ := s.List(ctx, "carol@example.com")
	if len(list) != 1 || fresh != 1 {
		t.Fatalf("%d entries, %d non-duplicate answers; want 1 and 1", len(list), fresh)
	}
}

func TestEntrySizeLimit(t *testing.T) {
	t.Parallel()
	v := testvault.Mount(t)
	s, _ := v.Store(t)
	ctx := context.Background()
	// Large stand-in keys reach the limit in a few dozen writes.
	var err error
	for i := 0; i < 200 && err == nil; i++ {
		_, _, err = s.Put(ctx, "dave@example.com", record(t, 20000+i))
	}
	if !errors.Is(err, policy.ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge before Vault's 1 MiB limit", err)
	}
	list, lerr := s.List(ctx, "dave@example.com")
	if lerr != nil || len(list) == 0 {
		t.Fatalf("entry unreadable after the refusal: %v", lerr)
	}
}

func TestVaultDownIsUnavailableAndWritesNothing(t *testing.T) {
	v := testvault.Start(t)
	s, _ := v.Store(t)
	ctx := context.Background()
	first := record(t, 1218)
	if _, _, err := s.Put(ctx, "erin@example.com", first); err != nil {
		t.Fatal(err)
	}
	v.Stop()
	_, _, err := s.Put(ctx, "erin@example.com", record(t, 1219))
	if !errors.Is(err, policy.ErrUnavailable) {
		t.Fatalf("put with Vault down: %v, want ErrUnavailable", err)
	}
	if _, err := s.List(ctx, "erin@example.com"); !errors.Is(err, policy.ErrUnavailable) {
		t.Fatalf("list with Vault down: %v", err)
	}
	if err := v.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx, "erin@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].SHA256 != first.SHA256 {
		t.Fatalf("after restart: %+v, want only the first certificate", list)
	}
}

// AppRole: smimeca logs in with a role id and a secret id file and can then
// use the escrow, with the escrow policy only.
func TestAppRoleLogin(t *testing.T) {
	v := testvault.Start(t)
	ctx := context.Background()
	if _, err := v.ScopedToken(ctx, "smimeca", "transit", "smimeca-escrow"); err != nil { // writes the "smimeca" policy
		t.Fatal(err)
	}
	if err := v.Root.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Root.Logical().Write("auth/approle/role/smimeca", map[string]any{"token_policies": "smimeca", "token_ttl": "1h"}); err != nil {
		t.Fatal(err)
	}
	rid, err := v.Root.Logical().Read("auth/approle/role/smimeca/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := v.Root.Logical().Write("auth/approle/role/smimeca/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "secret-id")
	os.WriteFile(f, []byte(sid.Data["secret_id"].(string)), 0o600)
	c, err := escrow.Connect(ctx, escrow.VaultConfig{Address: v.Addr, RoleID: rid.Data["role_id"].(string), SecretIDFile: f})
	if err != nil {
		t.Fatal(err)
	}
	s := escrow.New(c.Logical(), escrow.Config{})
	if _, _, err := s.Put(ctx, "frank@example.com", record(t, 1218)); err != nil {
		t.Fatalf("put with an AppRole token: %v", err)
	}
	// The escrow policy does not reach Vault's system backend.
	if _, err := c.Sys().ListMountsWithContext(ctx); err == nil {
		t.Error("the AppRole token can list mounts")
	}
	if _, err := escrow.Connect(ctx, escrow.VaultConfig{Address: v.Addr, RoleID: "wrong", SecretIDFile: f}); err == nil {
		t.Error("a wrong role id logged in")
	}
}

// An AppRole token that expires is replaced by logging in again: a
// long-running server must outlive its token.
func TestAppRoleTokenExpiryReLogin(t *testing.T) {
	v := testvault.Start(t)
	ctx := context.Background()
	if _, err := v.ScopedToken(ctx, "smimeca", "transit", "smimeca-escrow"); err != nil {
		t.Fatal(err)
	}
	if err := v.Root.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Root.Logical().Write("auth/approle/role/short", map[string]any{"token_policies": "smimeca", "token_ttl": "2s", "token_max_ttl": "2s"}); err != nil {
		t.Fatal(err)
	}
	rid, _ := v.Root.Logical().Read("auth/approle/role/short/role-id")
	sid, _ := v.Root.Logical().Write("auth/approle/role/short/secret-id", nil)
	f := filepath.Join(t.TempDir(), "secret-id")
	os.WriteFile(f, []byte(sid.Data["secret_id"].(string)), 0o600)
	cfg := escrow.VaultConfig{Address: v.Addr, RoleID: rid.Data["role_id"].(string), SecretIDFile: f}

	logical, _, err := escrow.ConnectLogical(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := escrow.Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	s, noReauth := escrow.New(logical, escrow.Config{}), escrow.New(plain.Logical(), escrow.Config{})
	if _, _, err := s.Put(ctx, "gina@example.com", record(t, 1218)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if _, err := noReauth.List(ctx, "gina@example.com"); err == nil {
		t.Fatal("the expired token still works; the test proves nothing")
	}
	if list, err := s.List(ctx, "gina@example.com"); err != nil || len(list) != 1 {
		t.Fatalf("after the token expired: %v %v", list, err)
	}
}

func TestPutManyIsOneAtomicWrite(t *testing.T) {
	t.Parallel()
	v := testvault.Mount(t)
	s, _ := v.Store(t)
	ctx := context.Background()
	a, b, c := record(t, 1218), record(t, 1219), record(t, 1220)
	n, err := s.PutMany(ctx, "carol@example.com", []policy.EscrowedKey{a, b, a})
	if err != nil || n != 2 {
		t.Fatalf("PutMany(a, b, a) = %d, %v; want 2 added", n, err)
	}
	if n, err := s.PutMany(ctx, "carol@example.com", []policy.EscrowedKey{b, c}); err != nil || n != 1 {
		t.Fatalf("PutMany(b, c) = %d, %v; want 1 added (b is escrowed)", n, err)
	}
	recs, err := s.Load(ctx, "carol@example.com")
	if err != nil || len(recs) != 3 {
		t.Fatalf("Load = %d records, %v; want 3", len(recs), err)
	}
	for _, r := range recs {
		want := map[string][]byte{a.SHA256: a.KeyPKCS8, b.SHA256: b.KeyPKCS8, c.SHA256: c.KeyPKCS8}[r.SHA256]
		if !bytes.Equal(r.KeyPKCS8, want) {
			t.Errorf("key of %s differs after the round trip", r.SHA256[:8])
		}
	}
	// A batch that would not fit in one entry is refused whole.
	var big []policy.EscrowedKey
	for range 400 {
		big = append(big, record(t, 1300))
	}
	if n, err := s.PutMany(ctx, "carol@example.com", big); !errors.Is(err, policy.ErrTooLarge) || n != 0 {
		t.Fatalf("PutMany(400 large) = %d, %v; want ErrTooLarge", n, err)
	}
	if list, _ := s.List(ctx, "carol@example.com"); len(list) != 3 {
		t.Fatalf("after the refused batch %d certificates are escrowed, want 3", len(list))
	}
}

// TestMain shares one Vault among the package's tests (per-test mounts).
func TestMain(m *testing.M) { testvault.Main(m) }
