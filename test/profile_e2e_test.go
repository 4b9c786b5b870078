package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/appleschema"
	"github.com/smimeca/smimeca/internal/testpki"
	"github.com/smimeca/smimeca/internal/testvault"
)

// TestProfileRenderCLI renders a profile from a live bundle with the CLI,
// validates it against Apple's schema, opens every PKCS#12 payload with
// openssl, verifies the signed variant against our root, and enrols a device
// with the SCEP payload's challenge.
func TestProfileRenderCLI(t *testing.T) {
	dir, err := appleschema.Dir()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := appleschema.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	v := testvault.Start(t)
	s := escrowServer(t, v)
	w := t.TempDir()
	is := testpki.NewIssuer(t)
	pw := randomPassword(t)
	os.WriteFile(filepath.Join(w, "pw"), []byte(pw), 0o600)
	var files []string
	for i := 0; i < 2; i++ {
		k := testpki.RSAKey(t, 2048, i)
		f, _ := writePFX(t, w, string(rune('a'+i)), is.PFX(t, pkcs12.LegacyDES, k, is.UserCert(t, k, testpki.CertOptions{Emails: []string{"erin@example.com"}}), pw), pw)
		files = append(files, f)
	}
	mustOK(t, "import", s.cli(append([]string{"pfx", "import", "--user", "erin@example.com", "--password-file", filepath.Join(w, "pw")}, files...)...))
	settings := filepath.Join(w, "settings.yaml")
	os.WriteFile(settings, []byte(`hostName: mail.example.com
accountName: Example mail
requireSmime: true
smimeSigningEnabled: true
signingCertificateType: certificate
encryptionCertificateType: certificate
smimeEncryptByDefaultEnabled: true
durationOfEmailToSync: oneMonth
easServices: email,calendars,contacts
`), 0o600)
	render := func(out string, extra ...string) []byte {
		args := append([]string{"profile", "render", "--user", "erin@example.com", "--device", "iphone-9", "--settings", settings,
			"--out", out, "--server", s.grpcAddr, "--credentials", filepath.Join(s.data, "credentials", "profile")}, extra...)
		mustOK(t, "profile render", run(t, 60e9, smimecaBin(t), args...))
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	plain := render(filepath.Join(w, "erin.mobileconfig"))
	for _, err := range sc.Validate(plain) {
		t.Error(err)
	}
	p, err := appleschema.Payloads(plain)
	if err != nil {
		t.Fatal(err)
	}
	if len(p["com.apple.security.pkcs12"]) != 2 || len(p["com.apple.security.scep"]) != 1 || len(p["com.apple.eas.account"]) != 1 ||
		len(p["com.apple.security.root"]) != 1 || len(p["com.apple.security.pkcs1"]) != 1 {
		t.Fatalf("payloads %v", p)
	}
	for i, pl := range p["com.apple.security.pkcs12"] {
		f := filepath.Join(w, "p.p12")
		os.WriteFile(f, pl["PayloadContent"].([]byte), 0o600)
		os.WriteFile(filepath.Join(w, "ppw"), []byte(pl["Password"].(string)), 0o600)
		opensslIn(t, w, "pkcs12", "-in", f, "-passin", "file:ppw", "-nokeys", "-out", "c.pem")
		if out := opensslIn(t, w, "x509", "-in", "c.pem", "-noout", "-ext", "subjectAltName"); !strings.Contains(out, "erin@example.com") {
			t.Errorf("PKCS#12 payload %d holds %s", i, out)
		}
	}
	// The SCEP payload's challenge enrols the device (once).
	scep := p["com.apple.security.scep"][0]["PayloadContent"].(map[string]any)
	mustOK(t, "enrol with the profile's challenge", s.scepclient(filepath.Join(w, "dev"), scep["Challenge"].(string)))

	// Signed: verifies against our root with openssl, and carries the same profile.
	signed := render(filepath.Join(w, "erin-signed.mobileconfig"), "--sign", "--signer-dir", filepath.Join(s.data, "ca"))
	os.WriteFile(filepath.Join(w, "signed.der"), signed, 0o600)
	opensslIn(t, w, "cms", "-verify", "-inform", "DER", "-in", "signed.der", "-CAfile", filepath.Join(s.data, "ca", "root_ca.crt"),
		"-purpose", "any", "-out", "inner.plist")
	inner, _ := os.ReadFile(filepath.Join(w, "inner.plist"))
	for _, err := range sc.Validate(inner) {
		t.Error(err)
	}
	if fi, _ := os.Stat(filepath.Join(w, "erin.mobileconfig")); fi.Mode().Perm() != 0o600 {
		t.Errorf("profile written with mode %o", fi.Mode().Perm())
	}
	// A bad settings file is refused naming the field, with exit code 2.
	os.WriteFile(settings, []byte("hostName: h\ndurationOfEmailToSync: forever\n"), 0o600)
	r := run(t, 60e9, smimecaBin(t), "profile", "render", "--user", "erin@example.com", "--device", "x", "--settings", settings,
		"--out", filepath.Join(w, "x.mobileconfig"), "--server", s.grpcAddr, "--credentials", filepath.Join(s.data, "credentials", "profile"))
	if r.code != 2 || !strings.Contains(r.stderr, "durationOfEmailToSync") {
		t.Errorf("bad settings: %+v", r)
	}
}
