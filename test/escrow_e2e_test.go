package test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
)

func writePFX(t *testing.T, dir, name string, data []byte, password string) (string, string) {
	t.Helper()
	p := filepath.Join(dir, name+".p12")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, name+".pw")
	if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, pw
}

func escrowServer(t *testing.T, v *testvault.Vault, extra ...string) *server {
	t.Helper()
	return newServer(t, append(vaultFlags(t, v), extra...)...)
}

// vaultFlags are the flags that give a server the escrow in v, with a token
// limited to smimeca's policy.
func vaultFlags(t *testing.T, v *testvault.Vault) []string {
	t.Helper()
	tok, err := v.ScopedToken(context.Background(), "smimeca", "transit", "smimeca-escrow")
	if err != nil {
		t.Fatal(err)
	}
	tf := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tf, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--vault-addr", v.Addr, "--vault-token-file", tf}
}

type listJSON struct {
	Certificates []struct {
		SHA1    string `json:"sha1"`
		SHA256  string `json:"sha256"`
		Expired bool   `json:"expired"`
	} `json:"certificates"`
}

func (s *server) pfxList(t *testing.T, user string) listJSON {
	t.Helper()
	out := mustOK(t, "pfx list", s.cli("pfx", "list", "--user", user, "-o", "json"))
	var l listJSON
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return l
}

// TestPFXImportWithCLI imports a user's history with the CLI: single files,
// a manifest with refusals, a re-run, Vault going away mid-run and coming
// back, and checks that no password or key reached a log or a file.
func TestPFXImportWithCLI(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		v := testvault.Start(t)
		s := escrowServer(t, v)
		is := testpki.NewIssuer(t)
		in := t.TempDir() // the admin's export directory
		// Random passwords: a constant would also sit in the compiled test binary.
		pwLegacy, pwModern, pwGo := randomPassword(t), randomPassword(t), randomPassword(t)

		k1, k2, k3 := testpki.RSAKey(t, 2048, 0), testpki.RSAKey(t, 2048, 1), testpki.RSAKey(t, 2048, 2)
		c1 := is.UserCert(t, k1, testpki.CertOptions{Emails: []string{"alice@example.com"},
			NotBefore: time.Now().Add(-4 * 365 * 24 * time.Hour), NotAfter: time.Now().Add(-2 * 365 * 24 * time.Hour)})
		c2 := is.UserCert(t, k2, testpki.CertOptions{Emails: []string{"alice@example.com"}})
		c3 := is.UserCert(t, k3, testpki.CertOptions{Emails: []string{"alice@example.com"}})
		legacy, legacyPW := writePFX(t, in, "2019-legacy", is.OpenSSLPFX(t, k1, c1, pwLegacy, true), pwLegacy)
		modern, modernPW := writePFX(t, in, "2023-modern", is.OpenSSLPFX(t, k2, c2, pwModern, false), pwModern)
		gop, goPW := writePFX(t, in, "2025-go", is.PFX(t, pkcs12.Modern2023, k3, c3, pwGo), pwGo)

		// One file with --password-file, one with --password-env.
		r := s.cli("pfx", "import", "--user", "Alice@Example.com", "--password-file", legacyPW, legacy)
		if r.code != 0 || !strings.Contains(r.stdout, "imported 1") {
			t.Fatalf("import legacy: %+v", r)
		}
		cmd := []string{"pfx", "import", "--user", "alice@example.com", "--password-env", "PFX_PW", modern,
			"--server", s.grpcAddr, "--credentials", filepath.Join(s.data, "credentials", "admin")}
		r = runEnv(t, []string{"PFX_PW=" + pwModern}, smimecaBin(t), cmd...)
		if r.code != 0 || !strings.Contains(r.stdout, "imported 1") {
			t.Fatalf("import modern: %+v", r)
		}

		// A manifest with the third file, a duplicate, and four refusals.
		wrongPW := filepath.Join(in, "wrong.pw")
		os.WriteFile(wrongPW, []byte("not it"), 0o600)
		certOnly, _ := pkcs12.Modern.EncodeTrustStore([]*x509.Certificate{c3}, pwGo)
		co, coPW := writePFX(t, in, "cert-only", certOnly, pwGo)
		kb := testpki.RSAKey(t, 2048, 3)
		bob, bobPW := writePFX(t, in, "bob", is.PFX(t, nil, kb, is.UserCert(t, kb, testpki.CertOptions{Emails: []string{"bob@example.com"}}), pwGo), pwGo)
		full, _ := os.ReadFile(gop)
		trunc, truncPW := writePFX(t, in, "truncated", full[:len(full)/3], pwGo)
		manifest := filepath.Join(in, "manifest.csv")
		rows := []string{"user,file,password_file,purpose",
			"alice@example.com,2025-go.p12,2025-go.pw,smimeEncryption",
			"alice@example.com,2023-modern.p12,2023-modern.pw,",
			"alice@example.com,2019-legacy.p12,wrong.pw,",
			"alice@example.com,cert-only.p12,cert-only.pw,",
			"alice@example.com,bob.p12,bob.pw,",
			"alice@example.com,truncated.p12,truncated.pw,",
		}
		for _, f := range []string{goPW, modernPW, coPW, bobPW, truncPW, co, bob, trunc} {
			if _, err := os.Stat(f); err != nil {
				t.Fatal(err)
			}
		}
		os.WriteFile(manifest, []byte(strings.Join(rows, "\n")+"\n"), 0o600)
		r = s.cli("pfx", "import", "--manifest", manifest, "--concurrency", "3")
		if r.code != 1 {
			t.Fatalf("manifest with refusals exited %d: %+v", r.code, r)
		}
		for _, want := range []string{"imported 1, duplicate (already escrowed) 1, refused 4, failed 0",
			"line 4", "wrong-password", "line 5", "no-private-key", "line 6", "user-mismatch", "line 7", "bad-pfx"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("report lacks %q:\n%s", want, r.stdout)
			}
		}
		l := s.pfxList(t, "alice@example.com")
		if len(l.Certificates) != 3 {
			t.Fatalf("escrow holds %d certificates, want 3", len(l.Certificates))
		}
		expired := 0
		for _, c := range l.Certificates {
			if c.Expired {
				expired++
			}
		}
		if expired != 1 {
			t.Errorf("%d flagged expired, want 1", expired)
		}

		// Re-running changes nothing.
		r = s.cli("pfx", "import", "--manifest", manifest)
		if !strings.Contains(r.stdout, "imported 0, duplicate (already escrowed) 2, refused 4") {
			t.Errorf("re-run: %s", r.stdout)
		}

		// Vault goes away mid-run: UNAVAILABLE, nothing half-written; after it
		// comes back, the same manifest completes the set.
		more := filepath.Join(in, "more")
		os.MkdirAll(more, 0o700)
		var moreRows []string
		for i := 0; i < 4; i++ {
			k := testpki.RSAKey(t, 2048, 4+i)
			c := is.UserCert(t, k, testpki.CertOptions{Emails: []string{"carol@example.com"}})
			name := fmt.Sprintf("carol-%d", i)
			writePFX(t, more, name, is.PFX(t, nil, k, c, pwGo), pwGo)
			moreRows = append(moreRows, fmt.Sprintf("carol@example.com,%s.p12,%s.pw,", name, name))
		}
		moreManifest := filepath.Join(more, "manifest.csv")
		os.WriteFile(moreManifest, []byte(strings.Join(moreRows[:2], "\n")+"\n"), 0o600)
		mustOK(t, "first half", s.cli("pfx", "import", "--manifest", moreManifest))
		os.WriteFile(moreManifest, []byte(strings.Join(moreRows, "\n")+"\n"), 0o600)
		v.Stop()
		r = s.cli("pfx", "import", "--manifest", moreManifest)
		if r.code != 1 || !strings.Contains(r.stdout, "Unavailable") || !strings.Contains(r.stdout, "re-run") {
			t.Fatalf("import with Vault down: %+v", r)
		}
		r = s.cli("pfx", "list", "--user", "carol@example.com")
		if r.code != 1 || !strings.Contains(r.stderr, "Unavailable") {
			t.Fatalf("list with Vault down: %+v", r)
		}
		if err := v.Restart(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := len(s.pfxList(t, "carol@example.com").Certificates); got != 2 {
			t.Fatalf("after Vault came back carol has %d certificates, want the 2 imported before", got)
		}
		r = s.cli("pfx", "import", "--manifest", moreManifest)
		if r.code != 0 || !strings.Contains(r.stdout, "imported 2, duplicate (already escrowed) 2") {
			t.Fatalf("resumed import: %+v", r)
		}
		if got := len(s.pfxList(t, "carol@example.com").Certificates); got != 4 {
			t.Fatalf("carol has %d certificates, want 4", got)
		}

		// Delete and purge.
		l = s.pfxList(t, "alice@example.com")
		mustOK(t, "pfx delete", s.cli("pfx", "delete", "--user", "alice@example.com", "--thumbprint", l.Certificates[0].SHA1))
		r = s.cli("pfx", "delete", "--user", "alice@example.com", "--thumbprint", l.Certificates[0].SHA1)
		if r.code != 1 || !strings.Contains(r.stderr, "NotFound") {
			t.Errorf("second delete: %+v", r)
		}
		out := mustOK(t, "pfx purge", s.cli("pfx", "purge", "--user", "carol@example.com"))
		if !strings.Contains(out, "purged 4") {
			t.Errorf("purge: %s", out)
		}

		// The profile role cannot touch the escrow.
		addr := "localhost" + s.grpcAddr[strings.LastIndex(s.grpcAddr, ":"):]
		r = s.grpcurl(t, "profile", "-d", `{"user":"alice@example.com"}`, addr, "smimeca.v1.EscrowAdmin/PurgeUser")
		if r.code == 0 || !strings.Contains(r.stderr, "PermissionDenied") {
			t.Errorf("profile purge: %+v", r)
		}

		// No password, PEM key or key bytes in the server log, in the data
		// directory, or in any temporary file smimeca may have left.
		secrets := []string{pwLegacy, pwModern, pwGo}
		for _, k := range []any{k1, k2, k3} {
			der, _ := x509.MarshalPKCS8PrivateKey(k)
			secrets = append(secrets, base64.StdEncoding.EncodeToString(der)[40:120], string(der[30:90]))
		}
		// The data directory holds the CA's own keys in PEM; the log holds none.
		assertNoSecrets(t, "server log", s.log.String(), append(secrets, "PRIVATE KEY"))
		assertNoSecrets(t, "CLI output", r.stdout+r.stderr, secrets)
		// This test's own fixtures (the admin's export directory, openssl's
		// scratch files) live under its temporary root; the server's data
		// directory is there too and is walked on its own.
		testRoot := filepath.Dir(in)
		for _, dir := range []string{s.data, os.TempDir()} {
			filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() || (dir != s.data && strings.HasPrefix(p, testRoot)) {
					return nil
				}
				if fi, err := d.Info(); err != nil || fi.Size() > 4<<20 || !fi.Mode().IsRegular() {
					return nil
				}
				b, err := os.ReadFile(p)
				if err == nil {
					for _, sct := range secrets {
						if strings.Contains(string(b), sct) && !isTestFixture(b) {
							t.Errorf("%s contains a secret", p)
						}
					}
				}
				return nil
			})
		}
	})
}

// isTestFixture recognises the test's own PEM/PFX fixtures written by
// testpki in other tests' temporary directories.
func isTestFixture(b []byte) bool {
	blk, _ := pem.Decode(b)
	return blk != nil && blk.Type == "PRIVATE KEY" && len(b) < 4096
}

func randomPassword(t *testing.T) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "pw-" + base64.RawURLEncoding.EncodeToString(b)
}

func assertNoSecrets(t *testing.T, where, text string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(text, s) {
			t.Errorf("%s contains a secret (%.6s…)", where, s)
		}
	}
}

func runEnv(t testing.TB, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := execCommand(ctx, name, args...)
	cmd.Env = append(cleanEnv(), env...)
	return runCmd(t, cmd)
}

// TestEmbeddedVaultKeepsEscrowAcrossRestart is `make run`'s embedded
// default: smimeca starts its own Vault under the data dir, and escrowed
// certificates survive a restart of the whole stack.
func TestEmbeddedVaultKeepsEscrowAcrossRestart(t *testing.T) {
	tool(t, "openssl")
	vaultAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := newServer(t, "--embedded-vault", "--embedded-vault-addr", vaultAddr)
	is := testpki.NewIssuer(t)
	k := testpki.RSAKey(t, 2048, 0)
	in := t.TempDir()
	const pw = "Embedded-pass-1"
	f, pwf := writePFX(t, in, "a", is.PFX(t, nil, k, is.UserCert(t, k, testpki.CertOptions{Emails: []string{"dan@example.com"}}), pw), pw)
	mustOK(t, "import", s.cli("pfx", "import", "--user", "dan@example.com", "--password-file", pwf, f))
	s.restart()
	if got := len(s.pfxList(t, "dan@example.com").Certificates); got != 1 {
		t.Fatalf("after restart dan has %d certificates", got)
	}
	for _, name := range []string{"init.json", "audit.log"} {
		fi, err := os.Stat(filepath.Join(s.data, "vault", name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %o, want 600", name, fi.Mode().Perm())
		}
	}
	if b, _ := os.ReadFile(filepath.Join(s.data, "vault", "init.json")); strings.Contains(string(b), "root_token") {
		t.Error("init.json keeps a root token")
	}
	if !strings.Contains(s.log.String(), "EMBEDDED VAULT") {
		t.Error("no warning that the embedded Vault is for a single machine")
	}

	// The embedded Vault crashes (SIGKILL): the supervisor restarts and
	// unseals it within seconds (too fast for the 5 s health poll to be
	// sure to see it down: TestHealthFollowsVault covers degraded health),
	// and the escrow works again with no action by anyone, on the same
	// token.
	token, _ := os.ReadFile(filepath.Join(s.data, "vault", "smimeca-token"))
	conf := filepath.Join(s.data, "vault", "config.hcl")
	if r := run(t, 10e9, "pkill", "-KILL", "-f", "server -config "+conf); r.code != 0 {
		t.Fatalf("pkill the embedded Vault: %+v", r)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.log.String(), "running and unsealed again") {
		if time.Now().After(deadline) {
			t.Fatalf("the embedded Vault was not restarted:\n%s", s.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.waitHealth(t, http.StatusOK)
	if got := len(s.pfxList(t, "dan@example.com").Certificates); got != 1 {
		t.Fatalf("after the Vault crash dan has %d certificates", got)
	}
	if again, _ := os.ReadFile(filepath.Join(s.data, "vault", "smimeca-token")); len(token) == 0 || string(again) != string(token) {
		t.Error("smimeca's Vault token was minted again")
	}
}
