package test

import (
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testhsm"
)

// TestKeysInToken: `smimeca init --kms pkcs11:…` makes every CA key inside
// a SoftHSM2 token — pkcs11-tool, OpenSC's client, reads them as sensitive
// and never extractable, generated in the token (local) — and writes no
// private key file; a server started on the same data and token uses them
// (init again changes nothing); a wrong PIN or a missing module stops the
// server at start-up with a message that names the URI and the fix, never
// the PIN.
func TestKeysInToken(t *testing.T) {
	t.Parallel()
	tok := testhsm.New(t)
	data := filepath.Join(t.TempDir(), "data")
	env := []string{tok.Env}
	init := func() string {
		return mustOK(t, "smimeca init", runEnv(t, env, smimecaBin(t), "init", "--data", data, "--kms", tok.URI, "--public-url", "http://127.0.0.1:1"))
	}
	out := init()
	for _, name := range []string{"root", "issuing", "ra", "profile", "ocsp", "connector"} {
		if !regexp.MustCompile(`(?m)^  ` + name + ` +present +pkcs11:.*object=smimeca-` + name + `$`).MatchString(out) {
			t.Errorf("init does not list the %s key in the token:\n%s", name, out)
		}
	}
	if strings.Contains(out, tok.PIN(t)) {
		t.Error("init printed the PIN")
	}
	objs := mustOK(t, "pkcs11-tool --list-objects", runEnv(t, env, tool(t, "pkcs11-tool"), "--module", tok.Module(), "--token-label", "smimeca",
		"--login", "--pin", tok.PIN(t), "--list-objects", "--type", "privkey"))
	keys := regexp.MustCompile(`(?s)Private Key Object; (\w+).*?label: +(smimeca-\w+).*?Access: +([^\n]+)`).FindAllStringSubmatch(objs, -1)
	if len(keys) != 6 {
		t.Fatalf("the token holds %d private keys, want 6:\n%s", len(keys), objs)
	}
	for _, k := range keys {
		if k[3] != "sensitive, always sensitive, never extractable, local" {
			t.Errorf("%s (%s): access %q", k[2], k[1], k[3])
		}
		// The default issuing CA is ECDSA (and so are the profile and OCSP
		// signers); the root, the SCEP RA and the connector are RSA.
		if (k[2] == "smimeca-ra" || k[2] == "smimeca-connector" || k[2] == "smimeca-root") != (k[1] == "RSA") {
			t.Errorf("%s is %s", k[2], k[1])
		}
	}
	assertNoKeyFiles(t, data)
	root, _ := os.ReadFile(filepath.Join(data, "ca", "root_ca.crt"))
	if again := init(); again != out {
		t.Errorf("init on an existing CA changed what it lists:\n%s\nthen\n%s", out, again)
	}
	if now, _ := os.ReadFile(filepath.Join(data, "ca", "root_ca.crt")); string(now) != string(root) {
		t.Error("init on an existing CA replaced the root")
	}

	base := strings.SplitN(tok.URI, "?", 2)[0]
	for _, c := range []struct{ name, kms, want string }{
		{"wrong PIN", base + "?pin-value=000000", "the PIN is wrong"},
		{"missing module", strings.Replace(tok.URI, tok.Module(), "/opt/vendor/libhsm.so", 1), "PKCS#11 module /opt/vendor/libhsm.so"},
	} {
		r := runEnv(t, env, smimecaBin(t), "serve", "--data", data, "--kms", c.kms, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0")
		if r.code != 1 || !strings.Contains(r.stderr, c.want) || !strings.Contains(r.stderr, "token=smimeca") {
			t.Errorf("%s: exit %d\n%s", c.name, r.code, r.stderr)
		}
		if strings.Contains(r.stderr, tok.PIN(t)) || strings.Contains(r.stderr, "000000") {
			t.Errorf("%s: the PIN is in the message: %s", c.name, r.stderr)
		}
	}
	// The same CA with files is refused: its keys are in the token.
	r := run(t, 30*time.Second, smimecaBin(t), "serve", "--data", data, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--ops-addr", "127.0.0.1:0")
	if r.code != 1 || !strings.Contains(r.stderr, "intermediate_ca.crt exists but its key") {
		t.Errorf("serve with softkms on a token's CA: exit %d\n%s", r.code, r.stderr)
	}
	assertNoKeyFiles(t, data)
}

// assertNoKeyFiles fails if a private key file is anywhere under the CA
// directory of data.
func assertNoKeyFiles(t *testing.T, data string) {
	t.Helper()
	filepath.WalkDir(filepath.Join(data, "ca"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			if strings.Contains(string(b), "PRIVATE KEY") || strings.HasSuffix(p, ".key") {
				t.Errorf("private key file %s", p)
			}
		}
		return nil
	})
}

// TestKeysMigrate moves a file-keyed CA into a token with `smimeca keys
// migrate`: pkcs11-tool reads each imported key as sensitive and not
// extractable (its access is "sensitive" alone: no "extractable", and, as for
// any key made outside the token, not "always sensitive", "never
// extractable" or "local"), the files stay until
// --remove-files, and the server then runs on the token with the same
// hierarchy: Debian's scepclient enrols and openssl verifies the chain.
func TestKeysMigrate(t *testing.T) {
	t.Parallel()
	tok := testhsm.New(t)
	data := filepath.Join(t.TempDir(), "data")
	mustOK(t, "init with key files", run(t, 60*time.Second, smimecaBin(t), "init", "--data", data, "--kms", "softkms", "--public-url", "http://127.0.0.1:1"))
	root, _ := os.ReadFile(filepath.Join(data, "ca", "root_ca.crt"))
	env := []string{tok.Env}
	migrate := func(extra ...string) string {
		return mustOK(t, "keys migrate", runEnv(t, env, smimecaBin(t), append([]string{"keys", "migrate", "--data", data, "--kms", tok.URI}, extra...)...))
	}
	out := migrate()
	if !strings.Contains(out, "moved 6 keys") || !strings.Contains(out, "root      imported into pkcs11:") || !strings.Contains(out, "file kept") {
		t.Fatalf("keys migrate:\n%s", out)
	}
	if files, _ := filepath.Glob(filepath.Join(data, "ca", "*.key")); len(files) != 6 {
		t.Errorf("key files after a migration without --remove-files: %v", files)
	}
	objs := mustOK(t, "pkcs11-tool --list-objects", runEnv(t, env, tool(t, "pkcs11-tool"), "--module", tok.Module(), "--token-label", "smimeca",
		"--login", "--pin", tok.PIN(t), "--list-objects", "--type", "privkey"))
	access := regexp.MustCompile(`Access: +([^\n]+)`).FindAllStringSubmatch(objs, -1)
	if len(access) != 6 {
		t.Fatalf("the token holds %d private keys, want 6:\n%s", len(access), objs)
	}
	for _, a := range access {
		if a[1] != "sensitive" {
			t.Errorf("imported key access %q", a[1])
		}
	}
	if out := migrate("--remove-files"); !strings.Contains(out, "already in") || !strings.Contains(out, "file removed") {
		t.Errorf("second run:\n%s", out)
	}
	assertNoKeyFiles(t, data)

	s := &server{t: t, data: data, log: &syncBuffer{}, env: env, token: tok,
		httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), grpcAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), opsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		extra: []string{"--kms", tok.URI}}
	s.baseURL = "http://" + s.httpAddr
	s.start()
	defer s.stop()
	if now, _ := os.ReadFile(filepath.Join(data, "ca", "root_ca.crt")); string(now) != string(root) {
		t.Error("the root changed")
	}
	w := t.TempDir()
	mustOK(t, "scepclient", s.scepclient(w, s.challenge("mig@example.com", "laptop")))
	mustOK(t, "verify -purpose smimesign", openssl(t, "verify", "-purpose", "smimesign", "-CAfile", filepath.Join(data, "ca", "root_ca.crt"),
		"-untrusted", filepath.Join(data, "ca", "intermediate_ca.crt"), filepath.Join(w, "client.pem")))
}

// TestServeWithRootKeyOffline: the root key leaves the store (a file
// removed, or the token object deleted with pkcs11-tool); the server
// starts, enrols and serves the root CRL without it; `smimeca root crl`,
// the ceremony, says it needs the key.
func TestServeWithRootKeyOffline(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		s := newServer(t)
		s.stop()
		if s.token != nil {
			mustOK(t, "pkcs11-tool --delete-object", runEnv(t, []string{s.token.Env}, tool(t, "pkcs11-tool"), "--module", s.token.Module(), "--token-label", "smimeca",
				"--login", "--pin", s.token.PIN(t), "--delete-object", "--type", "privkey", "--label", "smimeca-root"))
		} else if err := os.Remove(filepath.Join(s.data, "ca", "root_ca.key")); err != nil {
			t.Fatal(err)
		}
		s.start()
		mustOK(t, "enrol with the root key offline", s.scepclient(filepath.Join(t.TempDir(), "d"), s.challenge("alice@example.com", "phone")))
		resp, err := http.Get(s.baseURL + "/ca/root.crl")
		if err != nil {
			t.Fatal(err)
		}
		der, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if crl, err := x509.ParseRevocationList(der); resp.StatusCode != http.StatusOK || err != nil || time.Until(crl.NextUpdate) < 300*24*time.Hour {
			t.Errorf("root CRL: HTTP %d, %v", resp.StatusCode, err)
		}
		r := runEnv(t, s.cliEnv(), smimecaBin(t), "root", "crl", "--data", s.data)
		if r.code == 0 || !strings.Contains(r.stderr, "root_ca.crt exists but its key") {
			t.Errorf("a root ceremony without the root key: %+v", r)
		}
	})
}
