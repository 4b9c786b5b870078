package test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fetch GETs url and writes the body to a file in dir.
func fetch(t *testing.T, url, dir, name string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOCSPWithOpenSSL: an enrolled certificate's AIA names the server's
// OCSP responder and its issuer certificate, both reachable; `openssl
// ocsp` verifies the delegated responder's answers: good, then revoked
// with reason and time, and unknown for a serial never issued. The issuing
// CA's CRL DP (the root's CRL) verifies under the root.
func TestOCSPWithOpenSSL(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		s := newServer(t)
		work := t.TempDir()
		chainPEM := filepath.Join(s.data, "ca", "intermediate_ca.crt")
		rootPEM := filepath.Join(s.data, "ca", "root_ca.crt")
		s.register("alice@example.com", "iphone-1")
		dev := filepath.Join(work, "dev")
		mustOK(t, "scepclient enrol", s.scepclient(dev, s.challenge("alice@example.com", "iphone-1")))
		cert := filepath.Join(dev, "client.pem")

		if uri := strings.TrimSpace(mustOK(t, "ocsp_uri", openssl(t, "x509", "-in", cert, "-noout", "-ocsp_uri"))); uri != s.baseURL+"/ocsp" {
			t.Fatalf("certificate's OCSP URI %q, want %s/ocsp", uri, s.baseURL)
		}
		text := mustOK(t, "x509 -text", openssl(t, "x509", "-in", cert, "-noout", "-text"))
		for _, want := range []string{"CA Issuers - URI:" + s.baseURL + "/ca/issuing.crt", "Policy: 2.23.140.1.5.1.3", "X509v3 Key Usage: critical"} {
			if !strings.Contains(text, want) {
				t.Errorf("certificate lacks %q:\n%s", want, text)
			}
		}
		issuer := fetch(t, s.baseURL+"/ca/issuing.crt", work, "issuing.der")
		a := mustOK(t, "issuer DER", openssl(t, "x509", "-inform", "DER", "-in", issuer, "-noout", "-fingerprint", "-sha256"))
		b := mustOK(t, "issuer PEM", openssl(t, "x509", "-in", chainPEM, "-noout", "-fingerprint", "-sha256"))
		if a != b {
			t.Errorf("/ca/issuing.crt is not the issuing CA: %s vs %s", a, b)
		}
		rootCRL := fetch(t, s.baseURL+"/ca/root.crl", work, "root.crl")
		if r := openssl(t, "crl", "-inform", "DER", "-in", rootCRL, "-CAfile", rootPEM, "-noout"); !strings.Contains(r.stdout+r.stderr, "verify OK") {
			t.Errorf("root CRL does not verify under the root: %+v", r)
		}

		ocspCheck := func(args ...string) string {
			t.Helper()
			r := openssl(t, append([]string{"ocsp", "-url", s.baseURL + "/ocsp", "-issuer", chainPEM, "-CAfile", rootPEM, "-no_nonce", "-resp_text"}, args...)...)
			if !strings.Contains(r.stdout+r.stderr, "Response verify OK") {
				t.Fatalf("openssl ocsp %v: response does not verify: %+v", args, r)
			}
			return r.stdout
		}
		if out := ocspCheck("-cert", cert); !strings.Contains(out, cert+": good") || !strings.Contains(out, "OCSP Signing") && !strings.Contains(out, "OCSP No Check") {
			t.Errorf("before revocation:\n%s", out)
		}
		serial := serialOf(t, cert)
		mustOK(t, "revoke", s.cli("cert", "revoke", "--serial", "0x"+serial, "--reason", "keyCompromise"))
		out := ocspCheck("-cert", cert)
		for _, want := range []string{cert + ": revoked", "Reason: keyCompromise", "Revocation Time:"} {
			if !strings.Contains(out, want) {
				t.Errorf("after revocation, no %q:\n%s", want, out)
			}
		}
		if out := ocspCheck("-serial", "0x1234567890abcdef"); !strings.Contains(out, "0x1234567890abcdef: unknown") {
			t.Errorf("never-issued serial:\n%s", out)
		}
	})
}
