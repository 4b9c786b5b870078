package test

import (
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/pemutil"

	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/testing/testvault"
)

// TestDoctor: `smimeca doctor` passes on a healthy installation, then
// reports a stopped Vault and an expired CRL (served by a stale mirror)
// with what to do, and exits 1.
func TestDoctor(t *testing.T) {
	v := testvault.Start(t)
	s := escrowServer(t, v)
	doctor := func(extra ...string) result {
		return s.cli(append([]string{"doctor", "--data", s.data, "--url", s.baseURL, "--ops-addr", s.opsAddr}, extra...)...)
	}
	r := doctor()
	if r.code != 0 || strings.Contains(r.stdout, "FAIL") {
		t.Fatalf("healthy installation: %+v", r)
	}
	for _, want := range []string{"scep", "crl", "grpc", "vault", "database", "ca-keys", "disk"} {
		if !strings.Contains(r.stdout, "ok    "+want) {
			t.Errorf("no passing %s check:\n%s", want, r.stdout)
		}
	}

	// A mirror serving a CRL of this CA that has expired.
	inter, _ := pemutil.ReadCertificate(filepath.Join(s.data, "ca", "intermediate_ca.crt"))
	stale, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1),
		ThisUpdate: time.Now().Add(-48 * time.Hour), NextUpdate: time.Now().Add(-24 * time.Hour)}, inter, s.caKey(t, keystore.Issuing))
	if err != nil {
		t.Fatal(err)
	}
	mirror := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(stale) }))
	defer mirror.Close()

	// The CA's keys are checked where the server keeps them: a store that
	// does not open is named with its fix.
	r = doctor("--kms", "pkcs11:module-path=/nonexistent/libhsm.so;token=smimeca?pin-value=1234")
	if r.code != 1 || !strings.Contains(r.stdout, "FAIL  ca-keys") || !strings.Contains(r.stdout, "/nonexistent/libhsm.so") || strings.Contains(r.stdout, "1234") {
		t.Errorf("doctor with a key store that does not open: %+v", r)
	}

	v.Stop()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r = doctor("--crl-url", mirror.URL+"/crl")
		if strings.Contains(r.stdout, "FAIL  vault") || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if r.code != 1 {
		t.Errorf("exit code %d, want 1", r.code)
	}
	for _, want := range []string{"FAIL  vault", "vault status", "FAIL  crl", "expired at", "refresh it from the server's /crl"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, r.stdout)
		}
	}
}
