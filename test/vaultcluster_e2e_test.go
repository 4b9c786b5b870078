package test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	"github.com/smimeca/smimeca/internal/vaultproc"
)

// startVaultCluster starts a 3-node Vault Raft cluster with smimeca's
// mounts (it stops with the test) and returns it with a file holding a
// token limited to smimeca's policy.
func startVaultCluster(t *testing.T) (c *vaultproc.Cluster, tokenFile string) {
	t.Helper()
	ctx := context.Background()
	c, err := vaultproc.StartCluster(ctx, testvault.Binary(), t.TempDir(), 3, nil)
	if err != nil {
		t.Fatalf("%v (make test builds Vault with scripts/vault.sh)", err)
	}
	t.Cleanup(c.Stop)
	leader, err := c.WaitLeader(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := c.Client(leader, c.RootToken)
	if err := escrow.Setup(ctx, root, escrow.Config{}); err != nil {
		t.Fatal(err)
	}
	tok, err := c.ScopedToken(ctx, "smimeca", "transit", "smimeca-escrow")
	if err != nil {
		t.Fatal(err)
	}
	tokenFile = filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return c, tokenFile
}

// killVaultLeader kills (SIGKILL) the active node of c.
func killVaultLeader(t *testing.T, c *vaultproc.Cluster) (leader int) {
	t.Helper()
	leader, err := c.WaitLeader(context.Background(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Kill(leader)
	return leader
}
