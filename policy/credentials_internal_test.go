package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"strings"
	"testing"
)

// The credential key's bounds are checked before the CSR signature (a
// hostile key costs no verification), with the same size and exponent rule
// as every other key (CheckPublicKey) and a lower bound of 2048 bits.
func TestCheckCredentialCSR(t *testing.T) {
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	good, _ := x509.ParseCertificateRequest(der)
	if err := checkCredentialCSR(good); err != nil {
		t.Fatalf("a 2048-bit RSA CSR: %v", err)
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, pub := range map[string]any{
		"exponent 3":    &rsa.PublicKey{N: key.N, E: 3},
		"8192 bits":     &rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 8191), E: 65537},
		"1024 bits":     &small.PublicKey,
		"curve P-224":   &p224.PublicKey,
		"no key at all": nil,
	} {
		csr := *good
		csr.PublicKey = pub // the signature no longer matches: the key must be refused first
		err := checkCredentialCSR(&csr)
		if err == nil || strings.Contains(err.Error(), "signed by") {
			t.Errorf("%s: %v, want a refusal of the key, before the signature", name, err)
		}
	}
	bad := *good
	bad.Signature = append([]byte{}, good.Signature...)
	bad.Signature[0] ^= 1
	if err := checkCredentialCSR(&bad); err == nil || !strings.Contains(err.Error(), "signed by") {
		t.Errorf("a broken signature: %v", err)
	}
}
