package main

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testpki"
)

func writeCRL(t *testing.T, path string, is *testpki.Issuer, next time.Time, serials ...*big.Int) {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()),
		ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: next, RevokedCertificateEntries: entries}, is.Cert, is.Key)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// The MDM CA's CRL says which identities are revoked; it is re-read when
// it changes, must be the CA's, and an expired one answers nothing.
func TestIdentityCRLs(t *testing.T) {
	dir := t.TempDir()
	mdm, other := testpki.NewIssuer(t), testpki.NewIssuer(t)
	caFile := filepath.Join(dir, "mdm-ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mdm.Cert.Raw}), 0o644)
	revoked := mdm.UserCert(t, testpki.RSAKey(t, 2048, 0), testpki.CertOptions{CommonName: "a"})
	good := mdm.UserCert(t, testpki.RSAKey(t, 2048, 1), testpki.CertOptions{CommonName: "b"})
	foreign := other.UserCert(t, testpki.RSAKey(t, 2048, 2), testpki.CertOptions{CommonName: "c"})
	crlFile := filepath.Join(dir, "mdm.crl")
	writeCRL(t, crlFile, mdm, time.Now().Add(24*time.Hour), revoked.SerialNumber)
	r, err := newIdentityCRLs(crlFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		crt  *x509.Certificate
		want bool
	}{{revoked, true}, {good, false}, {foreign, false}} {
		if got, err := r.Revoked(c.crt); err != nil || got != c.want {
			t.Errorf("%s: revoked %v (%v), want %v", c.crt.Subject.CommonName, got, err, c.want)
		}
	}
	// The MDM publishes a new CRL: read again.
	time.Sleep(10 * time.Millisecond)
	writeCRL(t, crlFile, mdm, time.Now().Add(24*time.Hour), revoked.SerialNumber, good.SerialNumber)
	if got, err := r.Revoked(good); err != nil || !got {
		t.Errorf("after the new CRL: %v %v", got, err)
	}
	// Expired: unknown, so the caller releases nothing.
	time.Sleep(10 * time.Millisecond)
	writeCRL(t, crlFile, mdm, time.Now().Add(-time.Minute))
	if _, err := r.Revoked(good); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("an expired CRL: %v", err)
	}
	// Another CA's CRL is refused at start.
	writeCRL(t, filepath.Join(dir, "other.crl"), other, time.Now().Add(time.Hour))
	if _, err := newIdentityCRLs(filepath.Join(dir, "other.crl"), caFile); err == nil {
		t.Error("a CRL of another CA was accepted")
	}
}
