// Package testpki builds a real smimeca CA (embedded step-ca on a bbolt
// database in a temporary directory) and device keys for tests. It is used
// only from _test.go files.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/datastore"
)

// CA is a real CA with its database.
type CA struct {
	*ca.Authority
	DB  *db.DB
	Dir string
}

// NewCA opens a fresh CA in a temporary directory.
func NewCA(t testing.TB, keyType string) *CA {
	t.Helper()
	dir := t.TempDir()
	database, err := datastore.OpenBolt(filepath.Join(dir, "smimeca.db"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), IssuerKeyType: keyType, BaseURL: "http://ca.test"}, database.DB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		database.Close()
	})
	return &CA{Authority: a, DB: database.DB, Dir: dir}
}

var (
	keyMu   sync.Mutex
	keyPool = map[int][]*rsa.PrivateKey{}
)

// RSAKey returns an RSA key of the given size. Keys are generated once per
// size and index and reused, since RSA generation dominates test time.
func RSAKey(t testing.TB, bits, index int) *rsa.PrivateKey {
	t.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	for len(keyPool[bits]) <= index {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		keyPool[bits] = append(keyPool[bits], k)
	}
	return keyPool[bits][index]
}

// CSR makes a CSR signed by key; tmpl may be nil.
func CSR(t testing.TB, key any, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	if tmpl == nil {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// ECKey returns a fresh P-256 key.
func ECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// ProfileSigner returns a profile-signing certificate the CA's intermediate
// issued (a delegate like the server's) and its key.
func (c *CA) ProfileSigner(t testing.TB) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	crt, key, err := c.Delegated(ca.Delegate{
		Key: keystore.Profile, Spec: keystore.Spec{Type: ca.KeyTypeEC, Bits: 256},
		CertFile: "profile_signer.crt", What: "profile signing certificate",
		Template: x509.Certificate{Subject: pkix.Name{CommonName: "smimeca Profile Signing"}, KeyUsage: x509.KeyUsageDigitalSignature},
		Lifetime: 365 * 24 * time.Hour, RenewBefore: 24 * time.Hour,
	}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return crt, key
}
