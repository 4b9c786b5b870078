// Package test holds smimeca's end-to-end tests: they build the real binary,
// start "smimeca serve" on loopback ports, and drive it with real clients
// (Debian's scepclient, openssl, grpcurl). scripts/deps.sh installs them;
// a missing tool fails the test, it never skips it.
package test

import (
	"bytes"
	"context"
	"crypto"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/freeport"
	"github.com/smimeca/smimeca/internal/testing/testhsm"
	"github.com/smimeca/smimeca/internal/testing/testpg"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// smimecaBin builds cmd/smimeca once per test binary.
func smimecaBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "smimeca-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "smimeca")
		// The tags make test builds (SMIMECA_GOTAGS: libcrypto where
		// OpenSSL's headers are installed).
		out, err := exec.Command("go", "build", "-tags", os.Getenv("SMIMECA_GOTAGS"), "-o", binPath, "../cmd/smimeca").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// tool returns the path of a required external tool, looking in PATH and
// in ~/.cache/smimeca/bin where scripts/deps.sh installs Go tools.
func tool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	home, _ := os.UserHomeDir()
	p := filepath.Join(home, ".cache", "smimeca", "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	t.Fatalf("%s is not installed: run `make test` (scripts/deps.sh installs it)", name)
	return ""
}

func freePort(t testing.TB) int {
	t.Helper()
	p, err := freeport.Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// server is a running "smimeca serve".
type server struct {
	t        testing.TB
	data     string
	httpAddr string
	grpcAddr string
	opsAddr  string
	baseURL  string
	log      *syncBuffer
	cmd      *exec.Cmd
	extra    []string
	env      []string
	// mdm holds the device identity CA (mdm-ca.pem, mdm-ca.key) the server
	// trusts, as an MDM's would be, made with openssl.
	mdm string
	// token is the server's SoftHSM2 token when kmsBackend is "softhsm".
	token *testhsm.Token
	// db is its --db (PostgreSQL), "" for the embedded bbolt file.
	db string
}

// kmsBackend is where every server the tests start keeps its CA keys:
// files (softkms, the default) or, with $SMIMECA_TEST_KMS=softhsm, a
// SoftHSM2 token of its own made by scripts/softhsm.sh. `make e2e` runs the
// suite with files, then its enrolment, renewal, CRL, OCSP, import, bundle
// and profile tests again with a token.
var kmsBackend = os.Getenv("SMIMECA_TEST_KMS")

func newServer(t testing.TB, extra ...string) *server {
	t.Helper()
	return newServerEnv(t, nil, extra...)
}

// newServerEnv starts a server with extra environment variables and flags.
func newServerEnv(t testing.TB, env []string, extra ...string) *server {
	t.Helper()
	s := &server{env: env,
		t: t, data: filepath.Join(t.TempDir(), "data"), log: &syncBuffer{},
		httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		grpcAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		opsAddr:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		extra:    extra, mdm: t.TempDir(),
	}
	mustOK(t, "device identity CA", run(t, 60*time.Second, tool(t, "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
		"-keyout", filepath.Join(s.mdm, "mdm-ca.key"), "-out", filepath.Join(s.mdm, "mdm-ca.pem"), "-subj", "/CN=Test MDM Device Identity CA", "-days", "30"))
	s.extra = append([]string{"--device-identity-ca", filepath.Join(s.mdm, "mdm-ca.pem")}, s.extra...)
	switch kmsFor(t) {
	case "", "softkms":
	case "softhsm":
		s.token = testhsm.New(t)
		s.env = append(s.env, s.token.Env)
		s.extra = append([]string{"--kms", s.token.URI}, s.extra...)
	default:
		t.Fatalf("SMIMECA_TEST_KMS=%q: use softkms or softhsm", kmsFor(t))
	}
	s.baseURL = "http://" + s.httpAddr
	s.start()
	t.Cleanup(func() {
		s.stop()
		lintIssued(t, s.data, s.db)
	})
	return s
}

func (s *server) start() {
	s.t.Helper()
	args := append([]string{"serve", "--data", s.data, "--http-addr", s.httpAddr, "--grpc-addr", s.grpcAddr, "--ops-addr", s.opsAddr,
		"--allowed-domains", "example.com", "--log-format", "json"}, s.extra...)
	s.cmd = exec.Command(smimecaBin(s.t), args...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.Env = append(cleanEnv(), s.env...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + s.opsAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if c, err := net.Dial("tcp", s.grpcAddr); err == nil {
					c.Close()
					return
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.t.Fatalf("server did not come up:\n%s", s.log.String())
}

func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

func (s *server) restart() {
	s.stop()
	s.start()
}

// cleanEnv drops SMIMECA_* variables of the caller so tests see defaults.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SMIMECA_") {
			env = append(env, kv)
		}
	}
	return env
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t testing.TB, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := execCommand(ctx, name, args...)
	cmd.Env = cleanEnv()
	return runCmd(t, cmd)
}

func execCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, name, args...)
}

// runCmd runs cmd and collects its output and exit code.
func runCmd(t testing.TB, cmd *exec.Cmd) result {
	t.Helper()
	name := cmd.Path
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			t.Fatalf("%s: %v", name, err)
		}
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// cli runs a smimeca client subcommand against s with the admin credentials
// (and, with a token, the server's --kms in $SMIMECA_KMS, as an admin on the
// server's machine would have it).
func (s *server) cli(args ...string) result {
	s.t.Helper()
	full := append(args, "--server", s.grpcAddr, "--credentials", filepath.Join(s.data, "credentials", "admin"))
	return runEnv(s.t, s.cliEnv(), smimecaBin(s.t), full...)
}

// caKey opens s's key store in this process (its token, with a token:
// SOFTHSM2_CONF is set for the test) and returns the named CA key.
func (s *server) caKey(t *testing.T, name keystore.Name) crypto.Signer {
	t.Helper()
	kms := keystore.KMSSoft
	if s.token != nil {
		kms = s.token.URI
		t.Setenv("SOFTHSM2_CONF", s.token.Conf)
	}
	keys, err := keystore.Open(kms, filepath.Join(s.data, "ca"), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keys.Close() })
	k, err := keys.Key(name)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// cliEnv is the environment of a smimeca command run beside s: with a
// token, its SOFTHSM2_CONF and the server's --kms in $SMIMECA_KMS.
func (s *server) cliEnv() []string {
	if s.token == nil {
		return nil
	}
	return []string{s.token.Env, "SMIMECA_KMS=" + s.token.URI}
}

// register registers the user's device without an identity certificate
// (it may enrol; no key is released to it). Registering again is a no-op.
func (s *server) register(user, device string) {
	s.t.Helper()
	mustOK(s.t, "device register", s.cli("device", "register", "--user", user, "--device", device))
}

// identity is a device's MDM identity: key and certificate (PEM files).
type identity struct{ key, cert string }

// registerWithIdentity makes the device an identity certificate under the
// test MDM CA with openssl (RSA 2048, keyEncipherment, clientAuth, as iOS
// MDM enrolment issues) and registers the device with it.
func (s *server) registerWithIdentity(user, device string) identity {
	s.t.Helper()
	id := s.makeIdentity(s.t.TempDir(), device)
	mustOK(s.t, "device register --identity-cert", s.cli("device", "register", "--user", user, "--device", device, "--identity-cert", id.cert))
	return id
}

// makeIdentity makes a device identity key and certificate in dir, issued
// by the server's test MDM CA with openssl, as an MDM would.
func (s *server) makeIdentity(dir, device string) identity {
	s.t.Helper()
	id := identity{key: filepath.Join(dir, "device.key"), cert: filepath.Join(dir, "device.pem")}
	os.WriteFile(filepath.Join(dir, "ext"), []byte("keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"), 0o600)
	openssl := tool(s.t, "openssl")
	mustOK(s.t, "identity key", run(s.t, 60*time.Second, openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", id.key,
		"-out", filepath.Join(dir, "device.csr"), "-subj", "/CN="+device))
	mustOK(s.t, "identity certificate", run(s.t, 60*time.Second, openssl, "x509", "-req", "-in", filepath.Join(dir, "device.csr"),
		"-CA", filepath.Join(s.mdm, "mdm-ca.pem"), "-CAkey", filepath.Join(s.mdm, "mdm-ca.key"), "-CAcreateserial", "-days", "30",
		"-extfile", filepath.Join(dir, "ext"), "-out", id.cert))
	return id
}

// challenge registers the device (without an identity, when it is not
// registered yet) and creates a challenge for it.
func (s *server) challenge(user, device string) string {
	s.t.Helper()
	s.register(user, device)
	r := s.cli("challenge", "create", "--user", user, "--device", device)
	if r.code != 0 {
		s.t.Fatalf("challenge create: %d %s", r.code, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// httpGetBody returns the body of a GET that must answer 200.
func httpGetBody(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

// scepclient enrols (or renews, when cert exists) in dir.
func (s *server) scepclient(dir, challenge string, extra ...string) result {
	s.t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.t.Fatal(err)
	}
	// As a stock client: no -ca-fingerprint; scepclient encrypts to every
	// certificate GetCACert serves, all RSA (ca.Authority.SCEPCACerts).
	args := append([]string{"-server-url", s.baseURL + "/scep", "-private-key", filepath.Join(dir, "key.pem")}, extra...)
	if challenge != "" {
		args = append(args, "-challenge", challenge)
	}
	return run(s.t, 60*time.Second, tool(s.t, "scepclient"), args...)
}

// TestMain runs the suite and then stops the PostgreSQL the multi-node
// tests shared (a database each).
func TestMain(m *testing.M) {
	code := m.Run()
	testpg.Stop()
	os.Exit(code)
}

// kmsFor is where the servers test t starts keep their CA keys: a SoftHSM2
// token of their own in withEachKMS's "softhsm" subtests, else
// $SMIMECA_TEST_KMS (default key files).
func kmsFor(t testing.TB) string {
	if strings.HasSuffix(t.Name(), "/softhsm") || strings.Contains(t.Name(), "/softhsm/") {
		return "softhsm"
	}
	return kmsBackend
}

// withEachKMS runs f — a test that uses each CA key through a server — with
// the keys in files and, beside it, in a SoftHSM2 token (subtests softkms
// and softhsm, in parallel); with $SMIMECA_TEST_KMS set, only that one.
func withEachKMS(t *testing.T, f func(t *testing.T)) {
	kinds := []string{"softkms", "softhsm"}
	if kmsBackend != "" {
		kinds = []string{kmsBackend}
	}
	for _, k := range kinds {
		t.Run(k, func(t *testing.T) {
			t.Parallel()
			f(t)
		})
	}
}
