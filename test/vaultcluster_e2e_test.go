package test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/vaultproc"
)

// TestEscrowFollowsVaultLeader: smimeca on a 3-node Vault cluster with
// integrated storage (Raft), given every node's address. The leader is
// killed (SIGKILL) twice — the second time the one elected after the first
// — and each time the escrow keeps answering: the listing and a new import
// succeed once a new leader is elected (the request waits for it and moves
// to a node that answers), and every import made before is still there.
func TestEscrowFollowsVaultLeader(t *testing.T) {
	ctx := context.Background()
	c, tf := startVaultCluster(t)
	s := newServer(t, "--vault-addr", c.Addrs(), "--vault-token-file", tf)

	is := testpki.NewIssuer(t)
	in := t.TempDir()
	imported := 0
	importOne := func(what string) {
		t.Helper()
		key := testpki.RSAKey(t, 2048, imported)
		crt := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"vc@example.com"}})
		pw := randomPassword(t)
		file, pwFile := writePFX(t, in, strings.ReplaceAll(what, " ", "-"), is.PFX(t, nil, key, crt, pw), pw)
		if r := s.cli("pfx", "import", "--user", "vc@example.com", "--password-file", pwFile, file); r.code != 0 || !strings.Contains(r.stdout, "imported 1") {
			t.Fatalf("import %s: %+v", what, r)
		}
		imported++
	}
	importOne("before")
	for round := 1; round <= 2; round++ {
		leader, err := c.WaitLeader(ctx, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Kill(leader)
		if l := s.pfxList(t, "vc@example.com"); len(l.Certificates) != imported {
			t.Fatalf("round %d: after the leader's death the escrow lists %d certificates, want %d", round, len(l.Certificates), imported)
		}
		importOne("after kill")
		// The killed node comes back and rejoins as a follower.
		if err := c.Restart(ctx, leader); err != nil {
			t.Fatal(err)
		}
	}
	if l := s.pfxList(t, "vc@example.com"); len(l.Certificates) != imported {
		t.Fatalf("the escrow lists %d certificates, want %d", len(l.Certificates), imported)
	}
}

// startVaultCluster starts a 3-node Vault Raft cluster with smimeca's
// mounts (it stops with the test) and returns it with a file holding a
// token limited to smimeca's policy.
func startVaultCluster(t *testing.T) (c *vaultproc.Cluster, tokenFile string) {
	t.Helper()
	ctx := context.Background()
	c, err := vaultproc.StartCluster(ctx, vaultproc.DefaultBinary(), t.TempDir(), 3, nil)
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
func killVaultLeader(t *testing.T, c *vaultproc.Cluster) {
	t.Helper()
	leader, err := c.WaitLeader(context.Background(), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Kill(leader)
}
