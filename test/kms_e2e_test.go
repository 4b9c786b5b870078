package test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testhsm"
)

// TestKeysInToken: `smimeca init --kms pkcs11:…` makes every CA key inside
// a SoftHSM2 token — pkcs11-tool, OpenSC's client, reads them as sensitive
// and never extractable, generated in the token (local) — and writes no
// private key file; a server started on the same data and token uses them
// (init again changes nothing); a wrong PIN or a missing module stops the
// server at start-up with a message that names the URI and the fix, never
// the PIN.
func TestKeysInToken(t *testing.T) {
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
		if (k[2] == "smimeca-ra" || k[2] == "smimeca-connector" || k[2] == "smimeca-root" || k[2] == "smimeca-issuing") != (k[1] == "RSA") {
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
	if r.code != 1 || !strings.Contains(r.stderr, "root_ca.crt exists but its key") {
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
