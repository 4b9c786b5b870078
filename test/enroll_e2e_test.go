package test

import (
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/policy"
)

func openssl(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, 60*time.Second, tool(t, "openssl"), args...)
}

func mustOK(t testing.TB, what string, r result) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s failed (exit %d):\nstdout: %s\nstderr: %s", what, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func serialOf(t *testing.T, certPath string) string {
	out := mustOK(t, "openssl x509 -serial", openssl(t, "x509", "-in", certPath, "-noout", "-serial"))
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "serial="))
}

// TestEnrolWithScepclient is the issue's end-to-end scenario with real
// clients: enrol, verify, second use refused, renewal, revoke → CRL.
func TestEnrolWithScepclient(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		s := newServer(t)
		work := t.TempDir()
		chainPEM := filepath.Join(s.data, "ca", "intermediate_ca.crt")
		rootPEM := filepath.Join(s.data, "ca", "root_ca.crt")

		challenge := s.challenge("Alice@Example.com", "iphone-1")
		if len(challenge) < 40 {
			t.Fatalf("challenge %q", challenge)
		}

		// A device asking for another user's address is refused, and the
		// challenge survives that.
		evil := filepath.Join(work, "evil")
		r := s.scepclient(evil, challenge, "-cn", "bob@example.com")
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "badRequest") {
			t.Fatalf("CSR for bob was not refused with badRequest: %+v", r)
		}

		dev := filepath.Join(work, "dev")
		mustOK(t, "scepclient enrol", s.scepclient(dev, challenge))
		cert := filepath.Join(dev, "client.pem")

		mustOK(t, "openssl verify -purpose smimesign",
			openssl(t, "verify", "-purpose", "smimesign", "-CAfile", rootPEM, "-untrusted", chainPEM, cert))
		text := mustOK(t, "openssl x509 -text", openssl(t, "x509", "-in", cert, "-noout", "-text"))
		for _, want := range []string{"email:alice@example.com", "E-mail Protection", "Subject: CN = alice@example.com",
			"Digital Signature", "URI:" + s.baseURL + "/crl", "CA:FALSE"} {
			if !strings.Contains(text, want) {
				t.Errorf("certificate lacks %q:\n%s", want, text)
			}
		}
		if strings.Contains(text, "1.3.6.1.4.1.37476.9000.64.1") {
			t.Error("certificate carries the smallstep provisioner extension")
		}
		if strings.Contains(text, "bob@") {
			t.Error("certificate names bob")
		}

		// The device lost the answer and runs scepclient again with the same
		// key: the same transaction, answered with the same certificate.
		first, _ := os.ReadFile(cert)
		os.Remove(cert)
		mustOK(t, "scepclient repeat with the same key", s.scepclient(dev, challenge))
		if again, _ := os.ReadFile(cert); string(again) != string(first) {
			t.Error("the repeated request got another certificate")
		}

		// The same challenge a second time fails (fresh key dir: a new device).
		r = s.scepclient(filepath.Join(work, "again"), challenge)
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "badRequest") {
			t.Fatalf("second use of a challenge: %+v", r)
		}

		// Renewal signed with the issued certificate, no challenge.
		oldSerial := serialOf(t, cert)
		old := filepath.Join(work, "old.pem")
		b, _ := os.ReadFile(cert)
		os.WriteFile(old, b, 0o600)
		mustOK(t, "scepclient renewal", s.scepclient(dev, "", "-certificate", cert))
		newSerial := serialOf(t, cert)
		if newSerial == oldSerial {
			t.Fatal("renewal returned the same certificate")
		}
		mustOK(t, "verify renewed", openssl(t, "verify", "-purpose", "smimesign", "-CAfile", rootPEM, "-untrusted", chainPEM, cert))

		// Inventory over the CLI, as JSON.
		out := mustOK(t, "cert list", s.cli("cert", "list", "--user", "alice@example.com", "--device", "iphone-1", "-o", "json"))
		var list struct {
			Certificates []struct {
				SerialHex   string `json:"serialHex"`
				User        string `json:"user"`
				RenewedFrom string `json:"renewedFrom"`
				Revoked     bool   `json:"revoked"`
			} `json:"certificates"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatalf("cert list json: %v\n%s", err, out)
		}
		if len(list.Certificates) != 2 || list.Certificates[0].Revoked || !list.Certificates[1].Revoked {
			t.Fatalf("after a renewal the predecessor must be revoked (superseded), the new one valid: %s", out)
		}

		// The renewal superseded the old one: revoking it again is refused, it
		// appears in the CRL fetched from the certificate's CDP URL, and
		// openssl's CRL check then fails.
		if r := s.cli("cert", "revoke", "--serial", "0x"+oldSerial, "--reason", "keyCompromise"); r.code != 1 || !strings.Contains(r.stderr, "already-revoked") {
			t.Fatalf("revoking the superseded certificate: %+v", r)
		}
		cdp := regexp.MustCompile(`Full Name:\s+URI:(\S+)`).FindStringSubmatch(text)[1]
		resp, err := http.Get(cdp)
		if err != nil {
			t.Fatal(err)
		}
		crlDER, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		crlFile := filepath.Join(work, "crl.der")
		os.WriteFile(crlFile, crlDER, 0o600)
		crlText := mustOK(t, "openssl crl", openssl(t, "crl", "-inform", "DER", "-in", crlFile, "-noout", "-text"))
		if !strings.Contains(crlText, "Serial Number: "+oldSerial) || !strings.Contains(crlText, "Superseded") {
			t.Fatalf("superseded serial %s not in CRL with its reason:\n%s", oldSerial, crlText)
		}
		crlPEM := filepath.Join(work, "crl.pem")
		mustOK(t, "crl to pem", openssl(t, "crl", "-inform", "DER", "-in", crlFile, "-out", crlPEM))
		r = openssl(t, "verify", "-crl_check", "-CRLfile", crlPEM, "-CAfile", rootPEM, "-untrusted", chainPEM, old)
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "revoked") {
			t.Fatalf("openssl accepted the revoked certificate: %+v", r)
		}
		mustOK(t, "unrevoked cert passes the CRL check",
			openssl(t, "verify", "-crl_check", "-CRLfile", crlPEM, "-CAfile", rootPEM, "-untrusted", chainPEM, cert))

		// Renewal with the superseded certificate (a replayed renewal) is refused.
		revokedDir := filepath.Join(work, "revoked")
		os.MkdirAll(revokedDir, 0o700)
		key, _ := os.ReadFile(filepath.Join(dev, "key.pem"))
		os.WriteFile(filepath.Join(revokedDir, "key.pem"), key, 0o600)
		csr, _ := os.ReadFile(filepath.Join(dev, "csr.pem"))
		os.WriteFile(filepath.Join(revokedDir, "csr.pem"), csr, 0o600)
		os.WriteFile(filepath.Join(revokedDir, "client.pem"), b, 0o600)
		r = s.scepclient(revokedDir, "", "-certificate", filepath.Join(revokedDir, "client.pem"))
		if r.code == 0 {
			t.Fatal("renewal with a revoked certificate succeeded")
		}

		// Retire the device: the renewed one is revoked, the device can get no
		// new challenge and its certificate cannot renew.
		pending := s.challenge("alice@example.com", "iphone-1")
		out = mustOK(t, "retire device", s.cli("device", "retire", "--user", "alice@example.com", "--device", "iphone-1", "--reason", "lost"))
		if !strings.Contains(out, "revoked 1 certificate") {
			t.Errorf("retire: %s", out)
		}
		out = mustOK(t, "cert list", s.cli("cert", "list", "--user", "ALICE@example.com"))
		if strings.Contains(out, "valid") {
			t.Errorf("a certificate is still valid after the retirement:\n%s", out)
		}
		if r := s.scepclient(filepath.Join(work, "late"), pending); r.code == 0 {
			t.Error("a challenge created before the retirement enrolled")
		}
		if r := s.scepclient(dev, "", "-certificate", cert); r.code == 0 {
			t.Error("the retired device renewed")
		}
		if r := s.cli("challenge", "create", "--user", "alice@example.com", "--device", "iphone-1"); r.code != 1 || !strings.Contains(r.stderr, "FailedPrecondition") {
			t.Errorf("challenge for a retired device: %+v", r)
		}
		out = mustOK(t, "device show", s.cli("device", "show", "--user", "alice@example.com", "--device", "iphone-1"))
		if !strings.Contains(out, "retired") || !strings.Contains(out, "lost") || !strings.Contains(out, "by admin") {
			t.Errorf("device show: %s", out)
		}

		// No challenge ever reaches the log.
		if strings.Contains(s.log.String(), challenge) {
			t.Error("the server log contains a challenge")
		}
	})
}

// TestChallengeRaceIssuesOnce runs several real clients on one challenge.
func TestChallengeRaceIssuesOnce(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	work := t.TempDir()
	challenge := s.challenge("carol@example.com", "race-device")
	const n = 4
	var wg sync.WaitGroup
	results := make([]result, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = s.scepclient(filepath.Join(work, "d", string(rune('a'+i))), challenge)
		}(i)
	}
	wg.Wait()
	ok := 0
	for _, r := range results {
		if r.code == 0 {
			ok++
		}
	}
	if ok != 1 {
		t.Fatalf("%d clients got a certificate from one challenge, want 1: %+v", ok, results)
	}
	out := mustOK(t, "cert list", s.cli("cert", "list", "--user", "carol@example.com", "--device", "race-device", "-o", "json"))
	if c := strings.Count(out, `"serial"`); c != 1 {
		t.Fatalf("inventory holds %d certificates:\n%s", c, out)
	}
}

// TestExpiredChallengeRefused: a challenge past its expiry enrols nothing.
// The smallest TTL is a minute; instead of waiting it out, the test moves
// the stored expiry into the past while the server is stopped (the
// server's own clock decides, as it would a minute later).
func TestExpiredChallengeRefused(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	s.register("dave@example.com", "slow")
	r := s.cli("challenge", "create", "--user", "dave@example.com", "--device", "slow", "--ttl", "1m")
	short := strings.TrimSpace(mustOK(t, "challenge create --ttl 1m", r))
	s.stop()
	expireChallenge(t, filepath.Join(s.data, "db", "smimeca.db"), short)
	s.start()
	r = s.scepclient(filepath.Join(t.TempDir(), "d"), short)
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "badRequest") {
		t.Fatalf("expired challenge accepted: %+v", r)
	}
	if !strings.Contains(s.log.String(), "challenge-expired") {
		t.Errorf("log does not say the challenge expired")
	}
}

// TestRestartKeepsData restarts the server on the same data dir.
func TestRestartKeepsData(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		s := newServer(t)
		root1, _ := os.ReadFile(filepath.Join(s.data, "ca", "root_ca.crt"))
		mustOK(t, "enrol", s.scepclient(filepath.Join(t.TempDir(), "d"), s.challenge("erin@example.com", "dev")))
		pending := s.challenge("erin@example.com", "dev2")
		s.restart()
		root2, _ := os.ReadFile(filepath.Join(s.data, "ca", "root_ca.crt"))
		if string(root1) != string(root2) {
			t.Fatal("root changed across restart")
		}
		out := mustOK(t, "cert list", s.cli("cert", "list", "--user", "erin@example.com"))
		if !strings.Contains(out, "erin@example.com") {
			t.Fatalf("inventory lost across restart:\n%s", out)
		}
		mustOK(t, "challenge created before restart", s.scepclient(filepath.Join(t.TempDir(), "d2"), pending))
	})
}

// TestGarbageGets4xx sends junk to every endpoint.
func TestGarbageGets4xx(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	cases := []struct{ method, path, body string }{
		{"POST", "/scep?operation=PKIOperation", "garbage"},
		{"GET", "/scep?operation=PKIOperation&message=Z2FyYmFnZQ==", ""},
		{"GET", "/scep?operation=PKIOperation&message=%25%25", ""},
		{"GET", "/scep", ""},
		{"GET", "/scep?operation=Bogus", ""},
		{"DELETE", "/scep?operation=PKIOperation", ""},
		{"POST", "/scep/pkiclient.exe?operation=PKIOperation", "\x30\x82"},
		{"POST", "/crl", "x"},
		{"POST", "/healthz", "x"},
		{"GET", "/nope", ""},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, s.baseURL+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("%s %s: HTTP %d, want 4xx", c.method, c.path, resp.StatusCode)
		}
	}
	if strings.Contains(s.log.String(), "panic") {
		t.Errorf("server log mentions a panic:\n%s", s.log.String())
	}
	// Metrics are on the ops listener, not on the public port.
	if resp, err := http.Get(s.baseURL + "/metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the public port serves /metrics: %v %v", resp, err)
	}
	resp, err := http.Get("http://" + s.opsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `smimeca_scep_operations_total{result="malformed"`) {
		t.Errorf("metrics do not count malformed requests:\n%.2000s", b)
	}
}

// Debian's scepclient encrypts its request to every certificate GetCACert
// returns, so GetCACert must serve only RSA certificates whatever the
// issuing CA's key: with the default ECDSA issuing CA the RSA root signs
// the RA and GetCACert serves those two; with an RSA issuing CA it serves
// RA, issuing CA and root. Either way scepclient enrols and renews without
// flags, under the configured issuing key, and the certificate verifies
// with openssl against the root and the issuing CA the server publishes.
func TestScepclientAndIssuerKeyType(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		keyType, sigAlg string
		getCACert       int
	}{{"EC", "ecdsa-with-SHA256", 2}, {"RSA", "sha256WithRSAEncryption", 3}} {
		t.Run(c.keyType, func(t *testing.T) {
			t.Parallel()
			var s *server
			if c.keyType == "EC" {
				s = newServer(t) // the default
			} else {
				s = newServer(t, "--issuer-key-type", c.keyType)
			}
			work := t.TempDir()
			body := filepath.Join(work, "getcacert.p7")
			os.WriteFile(body, httpGetBody(t, s.baseURL+"/scep?operation=GetCACert"), 0o600)
			text := mustOK(t, "GetCACert", openssl(t, "pkcs7", "-inform", "DER", "-in", body, "-print_certs", "-text", "-noout"))
			if n := strings.Count(text, "Public Key Algorithm: rsaEncryption"); n != c.getCACert || strings.Count(text, "Certificate:") != c.getCACert {
				t.Fatalf("GetCACert serves %d RSA certificates of %d; want %d, all RSA:\n%s", n, strings.Count(text, "Certificate:"), c.getCACert, text)
			}
			s.register("alice@example.com", "d1")
			dir := filepath.Join(work, "dev")
			mustOK(t, "scepclient without flags", s.scepclient(dir, s.challenge("alice@example.com", "d1")))
			cert := filepath.Join(dir, "client.pem")
			leaf := mustOK(t, "x509", openssl(t, "x509", "-in", cert, "-noout", "-text"))
			if !strings.Contains(leaf, "Signature Algorithm: "+c.sigAlg) {
				t.Errorf("the certificate is not signed with %s:\n%s", c.sigAlg, leaf)
			}
			issuingDER, issuing := filepath.Join(work, "issuing.der"), filepath.Join(work, "issuing.pem")
			os.WriteFile(issuingDER, httpGetBody(t, s.baseURL+"/ca/issuing.crt"), 0o600)
			mustOK(t, "issuing CA", openssl(t, "x509", "-inform", "DER", "-in", issuingDER, "-out", issuing))
			mustOK(t, "verify", openssl(t, "verify", "-CAfile", filepath.Join(s.data, "ca", "root_ca.crt"), "-untrusted", issuing, "-purpose", "smimesign", cert))
			mustOK(t, "scepclient renewal without flags", s.scepclient(dir, "", "-certificate", cert))
		})
	}
}

// expireChallenge sets the stored expiry of the challenge secret to a
// second ago, in the bbolt database of a stopped server.
func expireChallenge(t *testing.T, path, secret string) {
	t.Helper()
	db, err := datastore.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	hash := sha256.Sum256([]byte(secret))
	table := []byte("smimeca_challenges")
	b, err := db.DB.DB.Get(table, hash[:])
	if err != nil {
		t.Fatalf("the challenge is not stored: %v", err)
	}
	var c policy.Challenge
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	c.ExpiresAt = time.Now().Add(-time.Second)
	if b, err = json.Marshal(c); err != nil {
		t.Fatal(err)
	}
	if err := db.DB.DB.Set(table, hash[:], b); err != nil {
		t.Fatal(err)
	}
}
