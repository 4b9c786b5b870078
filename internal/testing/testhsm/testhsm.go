// Package testhsm makes a SoftHSM2 token for tests with the project's own
// scripts/softhsm.sh (the one `make run` uses), in a temporary directory.
// A missing SoftHSM2 fails the test with the command that installs it.
package testhsm

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Token is an initialised SoftHSM2 token.
type Token struct {
	// URI is the token's --kms URI (its PIN from a pin-source file).
	URI string
	// Conf is its SOFTHSM2_CONF; Env is that as an environment entry.
	Conf string
	Env  string
	// Dir holds the configuration, the token files and the PIN files.
	Dir string
}

// Module returns the SoftHSM2 module's path named in the URI.
func (t *Token) Module() string {
	m := strings.TrimPrefix(strings.SplitN(t.URI, ";", 2)[0], "pkcs11:module-path=")
	return m
}

// PIN returns the token's user PIN.
func (t *Token) PIN(tb testing.TB) string {
	b, err := os.ReadFile(filepath.Join(t.Dir, "pin"))
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// New initialises a token labelled "smimeca" under a temporary directory.
func New(tb testing.TB) *Token {
	tb.Helper()
	_, here, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(here), "..", "..", "..", "scripts", "softhsm.sh")
	dir := filepath.Join(tb.TempDir(), "softhsm")
	out, err := exec.Command(script, dir).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		tb.Fatalf("make a SoftHSM2 token: %s (scripts/deps.sh installs softhsm2)", msg)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	return &Token{URI: strings.TrimSpace(string(out)), Conf: conf, Env: "SOFTHSM2_CONF=" + conf, Dir: dir}
}
