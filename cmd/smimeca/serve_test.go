package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smimeca/smimeca/scep"
)

// The public URL derived from a listen address that other machines reach
// is flagged (serve then warns loudly: certificates would name localhost);
// loopback listeners and an explicit --public-url are not.
func TestPublicURLWarning(t *testing.T) {
	for _, tc := range []struct {
		args []string
		warn bool
		url  string
	}{
		{[]string{"--http-addr", ":8080"}, true, "http://localhost:8080"},
		{[]string{"--http-addr", "0.0.0.0:8080"}, true, "http://localhost:8080"},
		{[]string{"--http-addr", "192.0.2.10:8080"}, true, "http://192.0.2.10:8080"},
		{[]string{"--http-addr", "127.0.0.1:8080"}, false, "http://127.0.0.1:8080"},
		{[]string{"--http-addr", "localhost:8080"}, false, "http://localhost:8080"},
		{[]string{"--http-addr", ":8080", "--public-url", "https://ca.example.com/", "--cert-base-url", "http://ca.example.com"}, false, "https://ca.example.com"},
	} {
		c, err := parseServe(tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.publicURLDefaulted != tc.warn || c.publicURL != tc.url {
			t.Errorf("%v: warn %v url %q, want %v %q", tc.args, c.publicURLDefaulted, c.publicURL, tc.warn, tc.url)
		}
	}
}

// Certificates carry plain http URLs for the CRL and OCSP (RFC 5280, the
// S/MIME BR), a validity within 825 days and OCSP answers valid 8 h to
// 10 days; flags that would break that are refused naming the flag.
func TestServeRefusesNonSBRSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--public-url", "https://ca.example.com"}, "--cert-base-url"},
		{[]string{"--cert-base-url", "https://ca.example.com"}, "--cert-base-url"},
		{[]string{"--cert-validity", "826d"}, "--cert-validity"},
		{[]string{"--cert-validity", "19825h"}, "825 days"},
		{[]string{"--ocsp-validity", "1h"}, "--ocsp-validity"},
		{[]string{"--ocsp-validity", "241h"}, "--ocsp-validity"},
	} {
		_, err := parseServe(append([]string{"--http-addr", "127.0.0.1:8080"}, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	c, err := parseServe([]string{"--http-addr", "127.0.0.1:8080", "--public-url", "https://ca.example.com", "--cert-base-url", "http://ca.example.com/"})
	if err != nil || c.certBaseURL != "http://ca.example.com" {
		t.Errorf("https public URL with an http cert base: %v %+v", err, c)
	}
}

// Every flag is checked before anything touches the data directory, a
// token or the network: a bad one exits 2 naming the flag, and the data
// directory is not even created.
func TestServeValidatesBeforeBuilding(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--allowed-domains", "exa mple.com"}, "--allowed-domains"},
		{[]string{"--device-identity-ca", filepath.Join(dir, "missing.pem")}, "--device-identity-ca"},
		{[]string{"--identity-device-fields", "serial"}, "--identity-device-fields"},
		{[]string{"--device-identity-crl", filepath.Join(dir, "missing.crl")}, "--device-identity-crl"},
		{[]string{"--email-aliases", filepath.Join(dir, "missing.csv")}, "--email-aliases"},
		{[]string{"--ldap-addr", ":1389"}, "--ldap-addr"},
		{[]string{"--ldap-publish-url", "ldap://x"}, "--ldap-publish-url"},
		{[]string{"--vault-addr", "http://127.0.0.1:1", "--embedded-vault"}, "--embedded-vault"},
		{[]string{"--vault-addr", "http://127.0.0.1:1", "--ldap-addr", ":1389", "--ldap-base-dn", "not a dn"}, "--ldap-base-dn"},
		{[]string{"--vault-addr", "http://127.0.0.1:1", "--ldap-publish-url", "ldap://x", "--ldap-publish-password-file", filepath.Join(dir, "missing")}, "--ldap-publish-password-file"},
		{[]string{"--vault-addr", "http://127.0.0.1:1", "--ldap-publish-url", "http://x", "--ldap-publish-base-dn", "dc=example"}, "--ldap-publish"},
		{[]string{"--scep-encryption", "des"}, "--scep-encryption"},
		{[]string{"--trusted-proxies", "10.0.0.0/33"}, "--trusted-proxies"},
	} {
		data := filepath.Join(dir, "data")
		var stderr strings.Builder
		code := run(append([]string{"serve", "--data", data, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--ops-addr", ""}, tc.args...), io.Discard, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, %q; want %d naming %s", tc.args, code, stderr.String(), exitUsage, tc.want)
		}
		if _, err := os.Stat(data); err == nil {
			t.Fatalf("%v: the data directory was created before the flags were checked", tc.args)
		}
	}
	if err := scep.SetPKCS7Defaults("aes256-cbc"); err != nil {
		t.Fatal(err)
	}
}

// A failure while building (here the key store) is reported and what was
// built is closed: exit 1 with the cause, no panic, and the database is
// released (a second start gets the same message, not a lock error).
func TestServeBuildFailureIsReported(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	for i := 0; i < 2; i++ {
		var stderr strings.Builder
		code := run([]string{"serve", "--data", data, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--ops-addr", "",
			"--kms", "pkcs11:module-path=/nonexistent/libvendor.so;token=x"}, io.Discard, &stderr)
		if code != exitFailure || !strings.Contains(stderr.String(), "/nonexistent/libvendor.so") {
			t.Fatalf("start %d: exit %d, %q", i, code, stderr.String())
		}
	}
}

// --allow-break-glass has three states: unset (the installation decides),
// bare or =true, =false; the variable sets it too, and a bad value is an
// error naming it.
func TestAllowBreakGlassFlag(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		env       string
		set, want bool
	}{
		{nil, "", false, false},
		{[]string{"--allow-break-glass"}, "", true, true},
		{[]string{"--allow-break-glass=false"}, "", true, false},
		{nil, "true", true, true},
		{[]string{"--allow-break-glass=false"}, "true", true, false},
	} {
		t.Setenv("SMIMECA_ALLOW_BREAK_GLASS", tc.env)
		c, err := parseServe(tc.args)
		if err != nil {
			t.Fatalf("%v %q: %v", tc.args, tc.env, err)
		}
		if c.allowBreakGlass.set != tc.set || c.allowBreakGlass.value != tc.want {
			t.Errorf("%v with $SMIMECA_ALLOW_BREAK_GLASS=%q: %+v", tc.args, tc.env, c.allowBreakGlass)
		}
	}
	t.Setenv("SMIMECA_ALLOW_BREAK_GLASS", "maybe")
	if _, err := parseServe(nil); err == nil || !strings.Contains(err.Error(), "SMIMECA_ALLOW_BREAK_GLASS") {
		t.Errorf("a bad variable: %v", err)
	}
}

// A CA's recorded break-glass default decides when the flag is unset; a CA
// without one predates the setting (on); anything else is an error.
func TestBreakGlassDefault(t *testing.T) {
	dir := t.TempDir()
	if on, err := breakGlassDefault(dir); err != nil || !on {
		t.Errorf("no record: %v %v, want on", on, err)
	}
	for content, want := range map[string]bool{"off\n": false, "on\n": true} {
		os.WriteFile(filepath.Join(dir, breakGlassFile), []byte(content), 0o644)
		if on, err := breakGlassDefault(dir); err != nil || on != want {
			t.Errorf("%q: %v %v", content, on, err)
		}
	}
	os.WriteFile(filepath.Join(dir, breakGlassFile), []byte("yes\n"), 0o644)
	if _, err := breakGlassDefault(dir); err == nil {
		t.Error("an unreadable record was taken")
	}
}
