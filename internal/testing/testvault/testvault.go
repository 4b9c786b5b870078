// Package testvault runs a real Vault (internal/vaultproc, file storage in
// a temporary directory, loopback port) for tests, with smimeca's mounts set
// up: one Vault per test package, shared through per-test mounts (Main and
// Mount), or one of a test's own to stop (Start). A missing Vault binary
// fails the test with the command that builds it.
package testvault

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	vault "github.com/hashicorp/vault/api"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/freeport"
	"github.com/smimeca/smimeca/internal/vaultproc"
)

// Vault is a running test Vault and the escrow mounts a test uses on it.
type Vault struct {
	*vaultproc.Proc
	Root *vault.Client
	// Config names the test's mounts and Transit key.
	Config escrow.Config
	policy string
}

// Start starts a Vault of the test's own and sets up the default escrow
// mounts; it stops with the test. Tests that stop or reconfigure Vault use
// it; the others share their package's Vault through Mount.
func Start(t testing.TB) *Vault {
	t.Helper()
	dir := t.TempDir()
	p, err := start(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop() })
	v, err := mount(p, escrow.Config{}, "smimeca")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func start(dir string) (*vaultproc.Proc, error) {
	addr, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	p, err := vaultproc.Start(context.Background(), Binary(), dir, addr, nil)
	if err != nil {
		return nil, fmt.Errorf("start Vault: %w\nbuild it with: scripts/vault.sh (make test does)", err)
	}
	return p, nil
}

func mount(p *vaultproc.Proc, cfg escrow.Config, policy string) (*Vault, error) {
	c, err := p.Client()
	if err != nil {
		return nil, err
	}
	if err := escrow.Setup(context.Background(), c, cfg); err != nil {
		return nil, err
	}
	if cfg.KVMount == "" {
		cfg = escrow.Config{KVMount: "smimeca", TransitMount: "transit", TransitKey: "smimeca-escrow"}
	}
	return &Vault{Proc: p, Root: c, Config: cfg, policy: policy}, nil
}

// unsafeInPath matches what a mount name made from a test's name leaves out.
var unsafeInPath = regexp.MustCompile(`[^a-z0-9-]+`)

// shared is the package's Vault, started by the first Mount.
var shared struct {
	once   sync.Once
	dir    string
	proc   *vaultproc.Proc
	err    error
	mounts atomic.Int64
}

// Main runs a test package's tests (call it from TestMain) and then stops
// the Vault their Mount calls shared.
func Main(m *testing.M) {
	code := m.Run()
	if shared.proc != nil {
		shared.proc.Stop()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// Mount returns the package's Vault — started on first use, stopped by Main
// — with a KV mount, a Transit mount and a policy of the test's own, so
// tests running at once never see each other's escrow. The mounts stay until
// the Vault stops.
func Mount(t testing.TB) *Vault {
	t.Helper()
	shared.once.Do(func() {
		if shared.dir, shared.err = os.MkdirTemp("", "testvault-"); shared.err == nil {
			shared.proc, shared.err = start(shared.dir)
		}
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	n := shared.mounts.Add(1)
	name := fmt.Sprintf("t%d-%s", n, unsafeInPath.ReplaceAllString(strings.ToLower(t.Name()), "-"))
	if len(name) > 60 {
		name = name[:60]
	}
	v, err := mount(shared.proc, escrow.Config{KVMount: "kv-" + name, TransitMount: "transit-" + name, TransitKey: "escrow"}, "smimeca-"+name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Store returns an escrow store on the test's mounts using a token limited
// to them (the escrow policy).
func (v *Vault) Store(t testing.TB) (*escrow.Store, *vault.Client) {
	t.Helper()
	tok, err := v.ScopedTokenAs(context.Background(), v.policy, v.Config.KVMount, v.Config.TransitMount, v.Config.TransitKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := escrow.Connect(context.Background(), escrow.VaultConfig{Address: v.Addr, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	return escrow.New(c.Logical(), v.Config), c
}

// KV returns the path of a user's entry in the test's KV mount
// ("<mount>/data/users/<user>"), for reading it with the root client.
func (v *Vault) KV(user string) string { return v.Config.KVMount + "/data/users/" + user }

// String describes the Vault for test logs.
func (v *Vault) String() string { return fmt.Sprintf("vault at %s", v.Addr) }

// Binary returns $SMIMECA_VAULT_BIN, or where scripts/vault.sh puts Vault.
func Binary() string {
	if b := os.Getenv("SMIMECA_VAULT_BIN"); b != "" {
		return b
	}
	return vaultproc.DefaultBinary()
}
