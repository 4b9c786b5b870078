package pfxconnector_test

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/smallstep/pkcs7"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Envelopes open with the recipient's key in pkcs7's parser and in openssl
// (what a device and an operator use), for both key transports, and always
// carry AES-256-CBC whatever pkcs7's process-wide settings say.
func TestEnvelopeOpensWithTheRecipientKey(t *testing.T) {
	is := testpki.NewIssuer(t)
	dev := testpki.RSAKey(t, 2048, 1)
	devCert := is.UserCert(t, dev, testpki.CertOptions{Emails: []string{"d@example.com"}})
	other := testpki.RSAKey(t, 2048, 2)
	otherCert := is.UserCert(t, other, testpki.CertOptions{Emails: []string{"o@example.com"}})
	secret := []byte("the delivery password, 37 bytes long!")

	// Whatever SCEP set, the envelope's cipher is its own.
	saved := pkcs7.ContentEncryptionAlgorithm
	pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmDESCBC
	defer func() { pkcs7.ContentEncryptionAlgorithm = saved }()

	dir := t.TempDir()
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509MarshalPKCS1(dev)})
	if err := os.WriteFile(filepath.Join(dir, "dev.key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dev.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: devCert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, kt := range map[string]pfxconnector.KeyTransport{"pkcs1v15": pfxconnector.PKCS1v15, "oaep-sha256": pfxconnector.OAEPSHA256} {
		t.Run(name, func(t *testing.T) {
			der, err := pfxconnector.Envelope(secret, devCert, kt)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(der, mustOID(t, pfxconnector.OIDAES256CBC)) {
				t.Error("the envelope does not name AES-256-CBC")
			}
			p7, err := pkcs7.Parse(der)
			if err != nil {
				t.Fatal(err)
			}
			got, err := p7.Decrypt(devCert, dev)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("pkcs7 decrypt: %q %v", got, err)
			}
			if _, err := p7.Decrypt(otherCert, other); err == nil {
				t.Error("another key opened the envelope")
			}
			in := filepath.Join(dir, name+".der")
			if err := os.WriteFile(in, der, 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("openssl", "cms", "-decrypt", "-inform", "DER", "-in", in,
				"-recip", filepath.Join(dir, "dev.crt"), "-inkey", filepath.Join(dir, "dev.key")).CombinedOutput()
			if err != nil || !bytes.Equal(out, secret) {
				t.Fatalf("openssl cms -decrypt: %s %v", out, err)
			}
		})
	}
}

func mustOID(t *testing.T, oid asn1.ObjectIdentifier) []byte {
	t.Helper()
	b, err := asn1.Marshal(oid)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func x509MarshalPKCS1(k *rsa.PrivateKey) []byte { return x509.MarshalPKCS1PrivateKey(k) }
