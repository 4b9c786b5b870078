// Package testvault starts a real Vault (internal/vaultproc, file storage in
// a temporary directory, loopback port) for tests, with smimeca's mounts set
// up. A missing Vault binary fails the test with the command that builds it.
package testvault

import (
	"context"
	"fmt"
	"net"
	"testing"

	vault "github.com/hashicorp/vault/api"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/vaultproc"
)

// Vault is a running test Vault.
type Vault struct {
	*vaultproc.Proc
	Root *vault.Client
}

// Start starts Vault and sets up the escrow mounts; it stops with the test.
func Start(t testing.TB) *Vault {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p, err := vaultproc.Start(context.Background(), vaultproc.DefaultBinary(), t.TempDir(), addr, nil)
	if err != nil {
		t.Fatalf("start Vault: %v\nbuild it with: scripts/vault.sh (make test does)", err)
	}
	t.Cleanup(func() { p.Stop() })
	c, err := p.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := escrow.Setup(context.Background(), c, escrow.Config{}); err != nil {
		t.Fatal(err)
	}
	return &Vault{Proc: p, Root: c}
}

// Store returns an escrow store using a token limited to the escrow policy.
func (v *Vault) Store(t testing.TB) (*escrow.Store, *vault.Client) {
	t.Helper()
	tok, err := v.ScopedToken(context.Background(), "smimeca", "transit", "smimeca-escrow")
	if err != nil {
		t.Fatal(err)
	}
	c, err := escrow.Connect(context.Background(), escrow.VaultConfig{Address: v.Addr, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	return escrow.New(c.Logical(), escrow.Config{}), c
}

// String describes the Vault for test logs.
func (v *Vault) String() string { return fmt.Sprintf("vault at %s", v.Addr) }
