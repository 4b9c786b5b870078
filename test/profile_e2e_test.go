package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"howett.net/plist"

	"github.com/smimeca/smimeca/internal/testing/appleschema"
	"github.com/smimeca/smimeca/internal/testing/testvault"
)

// TestProfileRenderCLI is the device-encrypted profile end to end with real
// tools: three generations of encryption certificates made with openssl
// (a message encrypted to each with `openssl cms -encrypt`) are imported;
// the MDM registers the device with an openssl-made identity under its
// device identity CA; the profile service renders the device's profile over
// gRPC; `openssl cms -verify` checks the signature against our root and
// `openssl cms -decrypt` opens the payloads with the device key alone;
// every inner payload is valid against Apple's schema, every PKCS#12 inside
// opens and decrypts the message of its generation, and scepclient enrols
// with the SCEP payload's challenge. The admin's --plain rendering (labs)
// still works, signed.
func TestProfileRenderCLI(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		dir, err := appleschema.Dir()
		if err != nil {
			t.Fatal(err)
		}
		sc, err := appleschema.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		s := escrowServer(t, testvault.Start(t), "--allow-break-glass")
		w := t.TempDir()
		const msg = "board minutes, draft 3\n"
		files, pwFile, _ := corpHistory(t, w, "erin@example.com", msg)
		mustOK(t, "import", s.cli(append([]string{"pfx", "import", "--user", "erin@example.com", "--password-file", pwFile}, files...)...))
		id := s.registerWithIdentity("erin@example.com", "iphone-9")

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
		render := func(out, creds string, extra ...string) result {
			args := append([]string{"profile", "render", "--user", "erin@example.com", "--device", "iphone-9", "--settings", settings,
				"--out", out, "--server", s.grpcAddr, "--credentials", filepath.Join(s.data, "credentials", creds)}, extra...)
			return runEnv(t, s.cliEnv(), smimecaBin(t), args...)
		}
		mustOK(t, "profile render", render(filepath.Join(w, "erin.mobileconfig"), "profile"))
		if fi, _ := os.Stat(filepath.Join(w, "erin.mobileconfig")); fi.Mode().Perm() != 0o600 {
			t.Errorf("profile written with mode %o", fi.Mode().Perm())
		}
		// Signed by our profile signer; the outer plist holds no payload.
		opensslIn(t, w, "cms", "-verify", "-inform", "DER", "-in", "erin.mobileconfig", "-CAfile", filepath.Join(s.data, "ca", "root_ca.crt"),
			"-purpose", "any", "-out", "outer.plist")
		outer, _ := os.ReadFile(filepath.Join(w, "outer.plist"))
		if strings.Contains(string(outer), "<key>Password</key>") || strings.Contains(string(outer), "com.apple.security.pkcs12") {
			t.Fatal("the profile carries payloads outside the envelope")
		}
		plain, err := appleschema.Decrypted(outer, func(ct []byte) ([]byte, error) {
			os.WriteFile(filepath.Join(w, "payloads.der"), ct, 0o600)
			return []byte(opensslIn(t, w, "cms", "-decrypt", "-inform", "DER", "-in", "payloads.der", "-inkey", id.key, "-recip", id.cert)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, err := range sc.Validate(plain) {
			t.Error(err)
		}
		// Another key cannot open the payloads.
		opensslIn(t, w, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.csr", "-subj", "/CN=other")
		if r := runCmd(t, execCommand(t.Context(), tool(t, "openssl"), "cms", "-decrypt", "-inform", "DER", "-in", filepath.Join(w, "payloads.der"),
			"-inkey", filepath.Join(w, "other.key"))); r.code == 0 && strings.Contains(r.stdout, "PayloadType") {
			t.Fatal("another key opened the payloads")
		}
		p, err := appleschema.Payloads(plain)
		if err != nil {
			t.Fatal(err)
		}
		if len(p["com.apple.security.pkcs12"]) != 3 || len(p["com.apple.security.scep"]) != 1 || len(p["com.apple.eas.account"]) != 1 ||
			len(p["com.apple.security.root"]) != 1 || len(p["com.apple.security.pkcs1"]) != 1 {
			t.Fatalf("payloads %v", p)
		}
		// Every PKCS#12 opens with its password and decrypts exactly one of
		// the messages; together they decrypt all three.
		opened := map[int]bool{}
		for i, pl := range p["com.apple.security.pkcs12"] {
			f := filepath.Join(w, fmt.Sprintf("p%d.p12", i))
			os.WriteFile(f, pl["PayloadContent"].([]byte), 0o600)
			os.WriteFile(filepath.Join(w, "ppw"), []byte(pl["Password"].(string)), 0o600)
			key := fmt.Sprintf("k%d.pem", i)
			opensslIn(t, w, "pkcs12", "-in", f, "-passin", "file:ppw", "-nocerts", "-nodes", "-out", key)
			for g := 0; g < 3; g++ {
				r := runCmd(t, execCommand(t.Context(), tool(t, "openssl"), "cms", "-decrypt", "-in", filepath.Join(w, fmt.Sprintf("gen%d.p7m", g)), "-inkey", filepath.Join(w, key)))
				if r.code == 0 && strings.ReplaceAll(r.stdout, "\r\n", "\n") == msg {
					opened[g] = true
				}
			}
		}
		if len(opened) != 3 {
			t.Errorf("the profile's keys decrypt generations %v, want all 3", opened)
		}
		// The SCEP payload's challenge enrols the device (once).
		scep := p["com.apple.security.scep"][0]["PayloadContent"].(map[string]any)
		mustOK(t, "enrol with the profile's challenge", s.scepclient(filepath.Join(w, "dev"), scep["Challenge"].(string)))
		var top map[string]any
		if _, err := plist.Unmarshal(outer, &top); err != nil || top["IsEncrypted"] != true {
			t.Errorf("outer profile: IsEncrypted %v, %v", top["IsEncrypted"], err)
		}
		audit, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
		if !strings.Contains(string(audit), "sealed in an encrypted profile") {
			t.Errorf("the release is not audited:\n%s", audit)
		}

		// The profile credential may not render plain; the admin may (labs),
		// audited as break-glass, and sign it locally.
		if r := render(filepath.Join(w, "x.mobileconfig"), "profile", "--plain"); r.code != 1 || !strings.Contains(r.stderr, "PermissionDenied") {
			t.Errorf("--plain with the profile credential: %+v", r)
		}
		mustOK(t, "profile render --plain --sign", render(filepath.Join(w, "erin-plain.mobileconfig"), "admin", "--plain", "--sign", "--signer-dir", filepath.Join(s.data, "ca")))
		opensslIn(t, w, "cms", "-verify", "-inform", "DER", "-in", "erin-plain.mobileconfig", "-CAfile", filepath.Join(s.data, "ca", "root_ca.crt"),
			"-purpose", "any", "-out", "inner.plist")
		inner, _ := os.ReadFile(filepath.Join(w, "inner.plist"))
		for _, err := range sc.Validate(inner) {
			t.Error(err)
		}
		// A bad settings file is refused naming the field, with exit code 2.
		os.WriteFile(settings, []byte("hostName: h\ndurationOfEmailToSync: forever\n"), 0o600)
		if r := render(filepath.Join(w, "y.mobileconfig"), "profile"); r.code != 2 || !strings.Contains(r.stderr, "durationOfEmailToSync") {
			t.Errorf("bad settings: %+v", r)
		}
	})
}
