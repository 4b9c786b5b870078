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
	"os"
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

// NewCA opens a CA in a temporary directory, with a fresh database, on a
// copy of the package's CA of that key type (generated once per test
// binary: RSA root and intermediate generation dominated the unit tests).
// Tests that need a CA of other keys use NewOtherCA.
func NewCA(t testing.TB, keyType string) *CA {
	t.Helper()
	dir := t.TempDir()
	v, _ := templates.LoadOrStore(keyType, &caTemplate{})
	tmpl := v.(*caTemplate)
	tmpl.once.Do(func() { tmpl.files, tmpl.err = makeTemplate(keyType) })
	if tmpl.err != nil {
		t.Fatal(tmpl.err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, f := range tmpl.files {
		if err := os.WriteFile(filepath.Join(dir, "ca", name), f.data, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	return openCA(t, dir, keyType)
}

// NewOtherCA opens a CA of keys of its own, unlike any other CA's.
func NewOtherCA(t testing.TB, keyType string) *CA {
	t.Helper()
	return openCA(t, t.TempDir(), keyType)
}

func openCA(t testing.TB, dir, keyType string) *CA {
	t.Helper()
	database, err := datastore.OpenBolt(filepath.Join(dir, "smimeca.db"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), IssuerKeyType: keyType, BaseURL: "http://ca.test"}, database.DB)
	if err != nil {
		database.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		database.Close()
	})
	return &CA{Authority: a, DB: database.DB, Dir: dir}
}

// caTemplate is a CA directory's files, kept in memory.
type caTemplate struct {
	once  sync.Once
	files map[string]caFile
	err   error
}

type caFile struct {
	data []byte
	mode os.FileMode
}

var templates sync.Map // key type → *caTemplate

// makeTemplate creates a CA of keyType in a directory of its own and reads
// its files.
func makeTemplate(keyType string) (map[string]caFile, error) {
	dir, err := os.MkdirTemp("", "testpki-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	database, err := datastore.OpenBolt(filepath.Join(dir, "smimeca.db"))
	if err != nil {
		return nil, err
	}
	a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), IssuerKeyType: keyType, BaseURL: "http://ca.test"}, database.DB)
	if err != nil {
		database.Close()
		return nil, err
	}
	a.Close()
	database.Close()
	entries, err := os.ReadDir(filepath.Join(dir, "ca"))
	if err != nil {
		return nil, err
	}
	files := map[string]caFile{}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "ca", e.Name()))
		if err != nil {
			return nil, err
		}
		files[e.Name()] = caFile{data: b, mode: info.Mode().Perm()}
	}
	return files, nil
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

// CurrentCRL returns the CRL c serves now, parsed.
func CurrentCRL(t testing.TB, c interface{ CRL() ([]byte, error) }) *x509.RevocationList {
	t.Helper()
	der, err := c.CRL()
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	return crl
}
