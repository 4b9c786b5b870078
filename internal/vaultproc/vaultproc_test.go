package vaultproc_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/smimeca/smimeca/internal/freeport"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	"github.com/smimeca/smimeca/internal/vaultproc"
)

func start(t *testing.T) (*vaultproc.Proc, string) {
	t.Helper()
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := vaultproc.Start(context.Background(), testvault.Binary(), dir, addr, nil)
	if err != nil {
		t.Fatalf("start Vault: %v (scripts/vault.sh builds it)", err)
	}
	t.Cleanup(func() { p.Stop() })
	return p, dir
}

// accessors counts the tokens Vault knows.
func accessors(t *testing.T, p *vaultproc.Proc) int {
	t.Helper()
	c, err := p.Client()
	if err != nil {
		t.Fatal(err)
	}
	sec, err := c.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := sec.Data["keys"].([]any)
	return len(keys)
}

// A Vault that dies (SIGKILL, as a crash) is restarted and unsealed by the
// supervisor, with no action by anyone, its data intact; smimeca's token is
// the same one throughout and the number of tokens stays constant.
func TestSupervisorRestartsACrashedVault(t *testing.T) {
	p, dir := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logMu sync.Mutex
	var logged []string
	go p.Supervise(ctx, time.Hour, nil, func(msg string, _ ...any) {
		logMu.Lock()
		logged = append(logged, msg)
		logMu.Unlock()
	})
	tok, err := p.SmimecaToken(ctx, "secret", "transit", "k")
	if err != nil {
		t.Fatal(err)
	}
	root, _ := p.Client()
	if err := root.Sys().MountWithContext(ctx, "kv", &vaultMount); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("kv/probe", map[string]any{"v": "kept"}); err != nil {
		t.Fatal(err)
	}
	before := accessors(t, p)

	p.Kill()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, _ := p.Client()
		if h, err := c.Sys().Health(); err == nil && !h.Sealed {
			if sec, err := c.Logical().Read("kv/probe"); err == nil && sec != nil && sec.Data["v"] == "kept" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the supervisor did not bring Vault back")
		}
		time.Sleep(200 * time.Millisecond)
	}
	again, err := p.SmimecaToken(ctx, "secret", "transit", "k")
	if err != nil || again != tok {
		t.Fatalf("after the restart smimeca got another token (%v)", err)
	}
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if again, _ := p.SmimecaToken(ctx, "secret", "transit", "k"); again != tok {
		t.Fatal("after a planned restart smimeca got another token")
	}
	if after := accessors(t, p); after != before {
		t.Errorf("%d tokens before, %d after crash, restart and three logins", before, after)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if len(logged) < 2 {
		t.Errorf("the restart was not logged: %v", logged)
	}
	// The unseal share is a complete, private file.
	if fi, err := os.Stat(filepath.Join(dir, "init.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("init.json: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "smimeca-token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("smimeca-token: %v %v", fi, err)
	}
}

var vaultMount = vaultapi.MountInput{Type: "kv"}

// After RevokeRoot no root token is kept (init.json holds the unseal key
// only) and the old one is dead; WithRoot still gets root work done with a
// token regenerated from the unseal key, revoked when it is done; a
// restart still unseals.
func TestRevokeRoot(t *testing.T) {
	p, dir := start(t)
	ctx := context.Background()
	old, _ := p.Client()
	oldToken := old.Token()
	if err := p.RevokeRoot(ctx); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "init.json"))
	if strings.Contains(string(b), "root_token") || strings.Contains(string(b), oldToken) {
		t.Fatalf("init.json still holds a root token: %s", b)
	}
	if _, err := old.Auth().Token().LookupSelf(); err == nil {
		t.Fatal("the revoked root token still works")
	}
	var used string
	if err := p.WithRoot(ctx, func(c *vaultapi.Client) error {
		used = c.Token()
		return c.Sys().MountWithContext(ctx, "kv2", &vaultMount)
	}); err != nil {
		t.Fatalf("root work after the revocation: %v", err)
	}
	c, _ := p.Client()
	c.SetToken(used)
	if _, err := c.Auth().Token().LookupSelf(); err == nil {
		t.Error("the regenerated root token outlived its use")
	}
	if err := p.Restart(ctx); err != nil {
		t.Fatalf("restart without a kept root token: %v", err)
	}
	if tok, err := p.SmimecaToken(ctx, "secret", "transit", "k"); err != nil || tok == "" {
		t.Fatalf("smimeca's token after the revocation: %v", err)
	}
}
