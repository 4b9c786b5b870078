package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// Issuer is a small stand-in for a company's S/MIME CA, used to make the
// encryption certificates users import.
type Issuer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// NewIssuer makes a self-signed issuing CA.
func NewIssuer(t testing.TB) *Issuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Corp S/MIME CA"},
		NotBefore: time.Now().Add(-10 * 365 * 24 * time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &Issuer{Cert: c, Key: key}
}

// CertOptions shapes a user certificate.
type CertOptions struct {
	Emails    []string
	NotBefore time.Time
	NotAfter  time.Time
	KeyUsage  x509.KeyUsage // default keyEncipherment (RSA) / keyAgreement (EC)
	EKU       []x509.ExtKeyUsage
	IsCA      bool
	// CommonName is the subject CN (default: the first address, or "user").
	CommonName string
}

// UserCert issues a certificate for key.
func (is *Issuer) UserCert(t testing.TB, key crypto.Signer, o CertOptions) *x509.Certificate {
	t.Helper()
	if o.NotBefore.IsZero() {
		o.NotBefore = time.Now().Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	if o.KeyUsage == 0 {
		o.KeyUsage = x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature
		if _, ok := key.Public().(*ecdsa.PublicKey); ok {
			o.KeyUsage = x509.KeyUsageKeyAgreement | x509.KeyUsageDigitalSignature
		}
	}
	if o.EKU == nil {
		o.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
	}
	sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	cn := "user"
	if len(o.Emails) > 0 {
		cn = o.Emails[0]
	}
	if o.CommonName != "" {
		cn = o.CommonName
	}
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: cn}, EmailAddresses: o.Emails,
		NotBefore: o.NotBefore, NotAfter: o.NotAfter, KeyUsage: o.KeyUsage, ExtKeyUsage: o.EKU,
		IsCA: o.IsCA, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.Cert, key.Public(), is.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// PFX encodes key and cert with a go-pkcs12 encoder (nil: Modern).
func (is *Issuer) PFX(t testing.TB, enc *pkcs12.Encoder, key crypto.PrivateKey, cert *x509.Certificate, password string) []byte {
	t.Helper()
	if enc == nil {
		enc = pkcs12.Modern
	}
	b, err := enc.Encode(key, cert, []*x509.Certificate{is.Cert}, password)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// OpenSSLPFX exports key and cert with `openssl pkcs12 -export`, with
// -legacy (RC2-40/3DES + SHA-1 MAC, as older Windows/OpenSSL exports) when
// legacy is set, and OpenSSL 3's default (AES-256/PBES2 + SHA-256 MAC)
// otherwise. The password goes through a file descriptor, never argv.
func (is *Issuer) OpenSSLPFX(t testing.TB, key crypto.PrivateKey, cert *x509.Certificate, password string, legacy bool) []byte {
	t.Helper()
	dir := t.TempDir()
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kp, cp, cap := write("k.pem", "PRIVATE KEY", kder), write("c.pem", "CERTIFICATE", cert.Raw), write("ca.pem", "CERTIFICATE", is.Cert.Raw)
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte(password), 0o600)
	out := filepath.Join(dir, "out.p12")
	args := []string{"pkcs12", "-export", "-inkey", kp, "-in", cp, "-certfile", cap, "-out", out, "-passout", "file:" + pw}
	if legacy {
		args = append(args, "-legacy")
	}
	if o, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
		t.Fatalf("openssl pkcs12 -export: %v: %s", err, o)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
