package test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smimeca/smimeca/internal/testing/testvault"
)

// sh runs openssl in dir and fails the test on error.
func opensslIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := execCommand(t.Context(), tool(t, "openssl"), args...)
	cmd.Dir = dir
	cmd.Env = cleanEnv()
	r := runCmd(t, cmd)
	if r.code != 0 {
		t.Fatalf("openssl %s: %s%s", strings.Join(args, " "), r.stdout, r.stderr)
	}
	return r.stdout
}

type bundleJSON struct {
	Signing struct {
		SCEPURL             string   `json:"scep_url"`
		Challenge           string   `json:"challenge"`
		ChallengeFile       string   `json:"challenge_file"`
		Subject             string   `json:"subject"`
		RFC822Name          string   `json:"rfc822_name"`
		KeySize             int      `json:"key_size"`
		CAFingerprintSHA256 string   `json:"ca_fingerprint_sha256"`
		CAFingerprintSHA1   string   `json:"ca_fingerprint_sha1"`
		IssuedSerials       []string `json:"issued_serials"`
	} `json:"signing"`
	Encryption []struct {
		File                  string `json:"file"`
		Password              string `json:"password"`
		EnvelopedPasswordFile string `json:"enveloped_password_file"`
		Current               bool   `json:"current"`
		Expired               bool   `json:"expired"`
		SHA256                string `json:"sha256"`
	} `json:"encryption"`
	KeyEscrowNotice string `json:"key_escrow_notice"`
}

func (s *server) bundle(t *testing.T, out string, extra ...string) bundleJSON {
	t.Helper()
	args := append([]string{"bundle", "get", "--out", out, "--server", s.grpcAddr,
		"--credentials", filepath.Join(s.data, "credentials", "profile")}, extra...)
	mustOK(t, "bundle get", run(t, 60e9, smimecaBin(t), args...))
	b, err := os.ReadFile(filepath.Join(out, "bundle.json"))
	if err != nil {
		t.Fatal(err)
	}
	var bj bundleJSON
	if err := json.Unmarshal(b, &bj); err != nil {
		t.Fatal(err)
	}
	return bj
}

// corpHistory makes in w a user's history of three S/MIME encryption
// certificates from a corporate CA (corp-ca.pem; the first certificate
// expired), each with msg (msg.txt) encrypted to it (genN.p7m) and its
// PKCS#12 with the CA (genN.p12) under one random password, as an admin
// exports them; it returns the PKCS#12 files, the password's file and the
// password.
func corpHistory(t *testing.T, w, user, msg string) (files []string, pwFile, pw string) {
	t.Helper()
	opensslIn(t, w, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", "corp-ca.key", "-out", "corp-ca.pem", "-subj", "/CN=Corp SMIME CA", "-days", "3650")
	os.WriteFile(filepath.Join(w, "ext"), []byte("subjectAltName=email:"+user+"\nkeyUsage=keyEncipherment,digitalSignature\nextendedKeyUsage=emailProtection\n"), 0o600)
	os.WriteFile(filepath.Join(w, "msg.txt"), []byte(msg), 0o600)
	pwFile, pw = filepath.Join(w, "export.pw"), randomPassword(t)
	os.WriteFile(pwFile, []byte(pw), 0o600)
	for i, days := range []string{"-1", "400", "730"} { // the first one is expired
		g := fmt.Sprintf("gen%d", i)
		opensslIn(t, w, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", g+".key", "-out", g+".csr", "-subj", "/CN="+user)
		opensslIn(t, w, "x509", "-req", "-in", g+".csr", "-CA", "corp-ca.pem", "-CAkey", "corp-ca.key", "-CAcreateserial",
			"-days", days, "-extfile", "ext", "-out", g+".pem")
		opensslIn(t, w, "cms", "-encrypt", "-aes256", "-in", "msg.txt", "-out", g+".p7m", g+".pem")
		opensslIn(t, w, "pkcs12", "-export", "-inkey", g+".key", "-in", g+".pem", "-certfile", "corp-ca.pem",
			"-out", g+".p12", "-passout", "file:export.pw")
		files = append(files, filepath.Join(w, g+".p12"))
	}
	return files, pwFile, pw
}

// TestBundleEndToEnd is the bundle issue's scenario with real tools only:
// three generations of encryption certificates made with openssl (one
// expired), a message encrypted to each with `openssl cms -encrypt`, the
// PFX files imported, the bundle fetched with the profile credentials, every
// message decrypted with `openssl pkcs12` + `openssl cms -decrypt` from the
// bundle alone; then the device enrols over SCEP with the bundle's challenge
// and its signature verifies against the bundle's CA chain.
func TestBundleEndToEnd(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		v := testvault.Start(t)
		s := escrowServer(t, v, "--allow-break-glass")
		w := t.TempDir()

		files, pwFile, pw := corpHistory(t, w, "alice@example.com", "quarterly numbers, eyes only\n")
		args := append([]string{"pfx", "import", "--user", "alice@example.com", "--password-file", pwFile}, files...)
		if out := mustOK(t, "import", s.cli(args...)); !strings.Contains(out, "imported 3") {
			t.Fatalf("import: %s", out)
		}

		// The MDM registers the device with its identity; the bundle, fetched
		// with the profile credentials, carries each password only as an
		// envelope to that identity.
		id := s.registerWithIdentity("alice@example.com", "iphone-7")
		bdir := filepath.Join(w, "bundle")
		b := s.bundle(t, bdir, "--user", "Alice@example.com", "--device", "iphone-7")
		if len(b.Encryption) != 3 {
			t.Fatalf("bundle has %d encryption certificates, want 3", len(b.Encryption))
		}
		if !strings.Contains(b.KeyEscrowNotice, "held in escrow") {
			t.Errorf("the bundle does not tell the subscriber that the keys are escrowed: %q", b.KeyEscrowNotice)
		}
		if !b.Encryption[0].Current || b.Encryption[0].Expired || b.Encryption[1].Current || !b.Encryption[2].Expired {
			t.Errorf("order/flags: want current first and the expired last: %+v", b.Encryption)
		}
		if b.Signing.Subject != "CN=alice@example.com" || b.Signing.RFC822Name != "alice@example.com" || b.Signing.KeySize != 2048 ||
			b.Signing.SCEPURL != s.baseURL+"/scep" || len(b.Signing.CAFingerprintSHA1) != 40 || len(b.Signing.CAFingerprintSHA256) != 64 {
			t.Errorf("signing reference %+v", b.Signing)
		}
		// The SCEP payload's CAFingerprint names the top of GetCACert's
		// chain, where Apple's client looks for it: the root.
		fp := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(
			opensslIn(t, w, "x509", "-in", filepath.Join(s.data, "ca", "root_ca.crt"), "-noout", "-fingerprint", "-sha256")), "sha256 Fingerprint="), ":", ""))
		if fp != b.Signing.CAFingerprintSHA256 {
			t.Errorf("CA fingerprint %s, openssl says %s", b.Signing.CAFingerprintSHA256, fp)
		}

		// Every message decrypts with what the bundle returned opened by the
		// device's key, and nothing else.
		for i, e := range b.Encryption {
			if e.Password != "" || e.EnvelopedPasswordFile == "" {
				t.Fatalf("entry %d carries a plain password", i)
			}
			password := opensslIn(t, bdir, "cms", "-decrypt", "-inform", "DER", "-in", e.EnvelopedPasswordFile, "-inkey", id.key, "-recip", id.cert)
			pwf := filepath.Join(bdir, fmt.Sprintf("pw%d", i))
			os.WriteFile(pwf, []byte(password), 0o600)
			keyPEM := filepath.Join(bdir, fmt.Sprintf("k%d.pem", i))
			opensslIn(t, bdir, "pkcs12", "-in", e.File, "-nocerts", "-nodes", "-passin", "file:"+pwf, "-out", keyPEM)
			decrypted := 0
			for g := 0; g < 3; g++ {
				cmd := execCommand(t.Context(), tool(t, "openssl"), "cms", "-decrypt", "-in", filepath.Join(w, fmt.Sprintf("gen%d.p7m", g)), "-inkey", keyPEM)
				r := runCmd(t, cmd)
				// S/MIME canonicalises line ends to CRLF.
				if r.code == 0 && strings.ReplaceAll(r.stdout, "\r\n", "\n") == "quarterly numbers, eyes only\n" {
					decrypted++
				}
			}
			if decrypted != 1 {
				t.Errorf("bundle key %d decrypts %d of the 3 messages, want exactly its own", i, decrypted)
			}
		}

		// The profile service holds no challenge it could redeem: only the
		// device's key opens the envelope; then the device enrols over SCEP
		// with it, exactly once.
		if b.Signing.Challenge != "" || b.Signing.ChallengeFile == "" {
			t.Fatalf("the profile credential's bundle carries the challenge in the clear (%q) or not enveloped (%q)", b.Signing.Challenge, b.Signing.ChallengeFile)
		}
		other := s.makeIdentity(t.TempDir(), "iphone-7")
		if r := runCmd(t, execCommand(t.Context(), tool(t, "openssl"), "cms", "-decrypt", "-inform", "DER", "-in", filepath.Join(bdir, b.Signing.ChallengeFile), "-inkey", other.key, "-recip", other.cert)); r.code == 0 {
			t.Fatal("another identity of the same MDM CA opens the challenge")
		}
		challenge := strings.TrimSpace(opensslIn(t, bdir, "cms", "-decrypt", "-inform", "DER", "-in", b.Signing.ChallengeFile, "-inkey", id.key, "-recip", id.cert))
		dev := filepath.Join(w, "device")
		mustOK(t, "scepclient with the bundle's challenge, opened by the device", s.scepclient(dev, challenge))
		if r := s.scepclient(filepath.Join(w, "other-device"), challenge); r.code == 0 {
			t.Fatal("a bundle's challenge worked twice")
		}
		opensslIn(t, dev, "cms", "-sign", "-in", filepath.Join(w, "msg.txt"), "-signer", "client.pem", "-inkey", "key.pem", "-out", "signed.p7m")
		opensslIn(t, dev, "cms", "-verify", "-in", "signed.p7m", "-CAfile", filepath.Join(bdir, "ca.pem"), "-purpose", "smimesign", "-out", "verified.txt")
		if got, _ := os.ReadFile(filepath.Join(dev, "verified.txt")); strings.ReplaceAll(string(got), "\r\n", "\n") != "quarterly numbers, eyes only\n" {
			t.Errorf("verified content %q", got)
		}
		// A second bundle for the same device lists the enrolled certificate.
		if b2 := s.bundle(t, filepath.Join(w, "bundle2"), "--user", "alice@example.com", "--device", "iphone-7"); len(b2.Signing.IssuedSerials) != 1 {
			t.Errorf("issued serials %v, want the one enrolled", b2.Signing.IssuedSerials)
		}

		// A user with nothing escrowed still gets a signing reference, enveloped
		// to the device; a device without an identity gets none.
		s.registerWithIdentity("nobody@example.com", "d")
		empty := s.bundle(t, filepath.Join(w, "empty"), "--user", "nobody@example.com", "--device", "d")
		if empty.Signing.ChallengeFile == "" || empty.Encryption == nil || len(empty.Encryption) != 0 {
			t.Errorf("empty bundle %+v", empty)
		}
		s.register("nobody@example.com", "no-identity")
		if r := run(t, 60e9, smimecaBin(t), "bundle", "get", "--out", filepath.Join(w, "none"), "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "profile"), "--user", "nobody@example.com", "--device", "no-identity"); r.code == 0 || !strings.Contains(r.stderr, "no-identity-certificate") {
			t.Errorf("a bundle for a device without an identity: %d %s", r.code, r.stderr)
		}

		// The audit trail names who, user, device, thumbprints and format, and
		// holds no password or challenge.
		audit, err := os.ReadFile(filepath.Join(s.data, "audit.log"))
		if err != nil {
			t.Fatal(err)
		}
		idSHA := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(
			opensslIn(t, w, "x509", "-in", id.cert, "-noout", "-fingerprint", "-sha256")), "sha256 Fingerprint="), ":", ""))
		if !strings.Contains(string(audit), `"action":"key.release"`) || !strings.Contains(string(audit), b.Encryption[0].SHA256) ||
			!strings.Contains(string(audit), `"device":"iphone-7"`) || !strings.Contains(string(audit), "delivery cms") ||
			!strings.Contains(string(audit), `"recipient_sha256":"`+idSHA+`"`) || !strings.Contains(string(audit), `"name":"profile"`) {
			t.Errorf("audit log lacks the key release to %s by the profile credential:\n%s", idSHA, audit)
		}

		// An administrator's break-glass release: plain files and passwords,
		// audited as such with the reason.
		glass := filepath.Join(w, "glass")
		bg := s.bundle(t, glass, "--user", "alice@example.com", "--device", "iphone-7", "--credentials", filepath.Join(s.data, "credentials", "admin"),
			"--break-glass", "--reason", "mailbox export, ticket 42")
		if len(bg.Encryption) != 3 || bg.Encryption[0].Password == "" {
			t.Fatalf("break-glass bundle %+v", bg.Encryption)
		}
		os.WriteFile(filepath.Join(glass, "pw"), []byte(bg.Encryption[0].Password), 0o600)
		opensslIn(t, glass, "pkcs12", "-in", bg.Encryption[0].File, "-nokeys", "-passin", "file:pw", "-out", "c.pem")
		audit, _ = os.ReadFile(filepath.Join(s.data, "audit.log"))
		if !strings.Contains(string(audit), `"action":"key.release.break-glass"`) || !strings.Contains(string(audit), "ticket 42") {
			t.Errorf("audit log lacks the break-glass release:\n%s", audit)
		}
		for _, secret := range []string{pw, challenge, bg.Encryption[0].Password} {
			if strings.Contains(string(audit), secret) || strings.Contains(s.log.String(), secret) {
				t.Errorf("audit or server log holds a secret")
			}
		}
	})
}

// TestKeyReleaseRefusals tries, as an attacker holding the profile
// credential would, to get keys to anything but a registered device's own
// identity, with grpcurl and the CLI.
func TestKeyReleaseRefusals(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	s := escrowServer(t, v)
	w := t.TempDir()
	addr := "localhost" + s.grpcAddr[strings.LastIndex(s.grpcAddr, ":"):]
	pw := s.escrowOpenSSLPFX(t, w, "bob@example.com")
	s.registerWithIdentity("bob@example.com", "ipad-1")

	// The attacker's own certificate as recipient: refused, whatever role.
	opensslIn(t, w, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "attacker.key", "-out", "attacker.pem", "-subj", "/CN=attacker", "-days", "30")
	opensslIn(t, w, "x509", "-in", "attacker.pem", "-outform", "DER", "-out", "attacker.der")
	raw, _ := os.ReadFile(filepath.Join(w, "attacker.der"))
	body := fmt.Sprintf(`{"user":"bob@example.com","device_id":"ipad-1","format":"DELIVERY_FORMAT_CMS","device_certificate_der":%q}`, base64.StdEncoding.EncodeToString(raw))
	for _, role := range []string{"profile", "admin"} {
		r := s.grpcurl(t, role, "-d", body, addr, "smimeca.v1.ProfileBundles/GetUserBundle")
		if r.code == 0 || !strings.Contains(r.stderr, "InvalidArgument") || !strings.Contains(r.stderr, "registered") {
			t.Errorf("%s with a caller-chosen recipient: %+v", role, r)
		}
	}
	// Plain PKCS#12 for the profile role: refused, with or without break-glass.
	for _, b := range []string{
		`{"user":"bob@example.com","device_id":"ipad-1","format":"DELIVERY_FORMAT_PKCS12"}`,
		`{"user":"bob@example.com","device_id":"ipad-1","format":"DELIVERY_FORMAT_PKCS12","break_glass":true,"break_glass_reason":"x"}`,
	} {
		if r := s.grpcurl(t, "profile", "-d", b, addr, "smimeca.v1.ProfileBundles/GetUserBundle"); r.code == 0 || !strings.Contains(r.stderr, "PermissionDenied") {
			t.Errorf("plain PKCS#12 for the profile role: %+v", r)
		}
	}
	// Break-glass is off for a CA made by this version: the administrator's
	// plain release is refused naming the setting, and audited as refused.
	glass := func() result {
		return run(t, 60e9, smimecaBin(t), "bundle", "get", "--out", filepath.Join(w, "glass"), "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "admin"), "--user", "bob@example.com", "--device", "ipad-1",
			"--break-glass", "--reason", "legal hold export")
	}
	if r := glass(); r.code != 1 || !strings.Contains(r.stderr, "FailedPrecondition") || !strings.Contains(r.stderr, "--allow-break-glass") {
		t.Errorf("break-glass on a new CA: %+v", r)
	}
	refused := false
	audit, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
	for _, line := range strings.Split(string(audit), "\n") {
		refused = refused || strings.Contains(line, `"action":"key.release.break-glass"`) && strings.Contains(line, `"result":"refused"`)
	}
	if !refused {
		t.Errorf("the refused break-glass is not in the audit log:\n%s", audit)
	}
	// A CA made before the setting (no default recorded) keeps break-glass
	// on and says so at every start; --allow-break-glass=false ends it.
	if err := os.Remove(filepath.Join(s.data, "ca", "break-glass-default")); err != nil {
		t.Fatal(err)
	}
	s.restart()
	if !strings.Contains(s.log.String(), "predates the break-glass setting") {
		t.Error("an older CA's start does not warn that break-glass stays on")
	}
	mustOK(t, "break-glass on an older CA", glass())
	s.extra = append(s.extra, "--allow-break-glass=false")
	s.restart()
	if r := glass(); r.code != 1 || !strings.Contains(r.stderr, "FailedPrecondition") {
		t.Errorf("break-glass with --allow-break-glass=false: %+v", r)
	}
	bundle := func(device string) result {
		return run(t, 60e9, smimecaBin(t), "bundle", "get", "--out", filepath.Join(w, "x-"+device), "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "profile"), "--user", "bob@example.com", "--device", device)
	}
	// A device nobody registered, one without an identity, a retired one.
	if r := bundle("attacker-phone"); r.code != 1 || !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("unregistered device: %+v", r)
	}
	s.register("bob@example.com", "no-identity")
	if r := bundle("no-identity"); r.code != 1 || !strings.Contains(r.stderr, "no-identity-certificate") {
		t.Errorf("device without identity: %+v", r)
	}
	mustOK(t, "retire", s.cli("device", "retire", "--user", "bob@example.com", "--device", "ipad-1", "--reason", "stolen"))
	if r := bundle("ipad-1"); r.code != 1 || !strings.Contains(r.stderr, "device-retired") {
		t.Errorf("retired device: %+v", r)
	}
	// Retiring the user's device leaves the escrow alone (purge is the
	// administrator's call).
	if l := s.pfxList(t, "bob@example.com"); len(l.Certificates) != 1 {
		t.Errorf("escrow after the retirement: %+v", l)
	}
	// Identities the MDM did not issue, or that cannot receive keys.
	opensslIn(t, w, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ec.key", "-out", "ec.pem", "-subj", "/CN=ec", "-days", "30")
	for name, cert := range map[string]string{"self-signed": "attacker.pem", "EC": "ec.pem"} {
		r := s.cli("device", "register", "--user", "bob@example.com", "--device", "x-"+name, "--identity-cert", filepath.Join(w, cert))
		if r.code != 1 || !strings.Contains(r.stderr, "bad-identity-certificate") {
			t.Errorf("%s identity: %+v", name, r)
		}
	}
	if strings.Contains(s.log.String(), pw) {
		t.Error("the server log holds the PFX password")
	}
}

// TestProfileRoleLimits: the profile credentials get bundles and nothing
// that changes state.
func TestProfileRoleLimits(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	s := escrowServer(t, v)
	addr := "localhost" + s.grpcAddr[strings.LastIndex(s.grpcAddr, ":"):]
	for _, c := range []struct{ method, body string }{
		{"smimeca.v1.EscrowAdmin/ImportPfx", `{"user":"a@example.com"}`},
		{"smimeca.v1.EscrowAdmin/DeleteUserCertificate", `{"user":"a@example.com","thumbprint":"00"}`},
		{"smimeca.v1.EscrowAdmin/PurgeUser", `{"user":"a@example.com"}`},
		{"smimeca.v1.Enrollment/RevokeCertificate", `{"serial":"1"}`},
		{"smimeca.v1.Enrollment/RevokeDevice", `{"user":"a@example.com","device_id":"x"}`},
		{"smimeca.v1.Enrollment/CreateChallenge", `{"user":"a@example.com","device_id":"d"}`},
		{"smimeca.v1.Devices/RegisterDevice", `{"user":"a@example.com","device_id":"x"}`},
		{"smimeca.v1.Devices/RetireDevice", `{"user":"a@example.com","device_id":"d","reason":"x"}`},
		{"smimeca.v1.Credentials/ListCredentials", `{}`},
	} {
		r := s.grpcurl(t, "profile", "-d", c.body, addr, c.method)
		if r.code == 0 || !strings.Contains(r.stderr, "PermissionDenied") {
			t.Errorf("profile %s: %+v", c.method, r)
		}
	}
	r := s.grpcurl(t, "", "-d", `{"user":"a@example.com","device_id":"d"}`, addr, "smimeca.v1.ProfileBundles/GetUserBundle")
	if r.code == 0 || strings.Contains(r.stdout, "challenge") {
		t.Errorf("no client certificate: %+v", r)
	}
	if r := s.grpcurl(t, "profile", "-d", `{"user":"a@example.com","device_id":"d"}`, addr, "smimeca.v1.ProfileBundles/GetUserBundle"); r.code == 0 || !strings.Contains(r.stderr, "NotFound") {
		t.Errorf("bundle for an unregistered device: %+v", r)
	}
	s.registerWithIdentity("a@example.com", "d")
	out := mustOK(t, "admin may fetch bundles", s.grpcurl(t, "admin", "-d", `{"user":"a@example.com","device_id":"d"}`, addr, "smimeca.v1.ProfileBundles/GetUserBundle"))
	if !strings.Contains(out, "envelopedChallenge") {
		t.Errorf("bundle: %s", out)
	}
	r = s.grpcurl(t, "profile", "-d", `{"user":"a@evil.org","device_id":"d"}`, addr, "smimeca.v1.ProfileBundles/GetUserBundle")
	if r.code == 0 || !strings.Contains(r.stderr, "InvalidArgument") {
		t.Errorf("outside domains: %+v", r)
	}
}

// escrowOpenSSLPFX makes, with openssl in w, an encryption certificate of
// user under a CA of its own and its PKCS#12 export (u.p12, password in
// pw), imports it with the CLI and returns the password.
func (s *server) escrowOpenSSLPFX(t *testing.T, w, user string) string {
	t.Helper()
	opensslIn(t, w, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=CA", "-days", "30")
	os.WriteFile(filepath.Join(w, "ext"), []byte("subjectAltName=email:"+user+"\nkeyUsage=keyEncipherment\n"), 0o600)
	opensslIn(t, w, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "u.key", "-out", "u.csr", "-subj", "/CN="+strings.Split(user, "@")[0])
	opensslIn(t, w, "x509", "-req", "-in", "u.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "30", "-extfile", "ext", "-out", "u.pem")
	pw := randomPassword(t)
	os.WriteFile(filepath.Join(w, "pw"), []byte(pw), 0o600)
	opensslIn(t, w, "pkcs12", "-export", "-inkey", "u.key", "-in", "u.pem", "-out", "u.p12", "-passout", "file:pw")
	mustOK(t, "import", s.cli("pfx", "import", "--user", user, "--password-file", filepath.Join(w, "pw"), filepath.Join(w, "u.p12")))
	return pw
}
