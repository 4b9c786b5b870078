package scep_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"
	smallscep "github.com/smallstep/scep"

	"github.com/smimeca/smimeca/internal/testing/testpki"
)

// signedWith builds a PKCS#7 SignedData signed by key under a certificate
// for pub (which need not match key: the bounds must refuse the message
// before any signature is checked) with the given transactionID.
func signedWith(t testing.TB, pub any, tid string) []byte {
	t.Helper()
	key := testpki.RSAKey(t, 2048, 5)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "attacker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	crt, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	sd, err := pkcs7.NewSignedData([]byte("payload"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := pkcs7.SignerInfoConfig{ExtraSignedAttributes: []pkcs7.Attribute{
		{Type: oidTransactionID, Value: tid},
		{Type: asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 2}, Value: "19"},
	}}
	if err := sd.AddSigner(crt, key, cfg); err != nil {
		t.Fatal(err)
	}
	out, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// An unauthenticated PKIOperation is bounded before anything is verified:
// each refusal names the bound (a verification would have failed on the
// mismatched signature instead), and nothing of the attacker's reaches the
// log beyond the reason.
func TestHostileRequestsAreRefusedBeforeVerification(t *testing.T) {
	f := newFixture(t)
	huge := new(big.Int).Lsh(big.NewInt(1), 8191)
	huge.Add(huge, big.NewInt(1234567)) // odd, 8192 bits
	weakE := &rsa.PublicKey{N: new(big.Int).Set(testpki.RSAKey(t, 2048, 6).N), E: 3}
	longTID := strings.Repeat("T", 200)
	for _, tc := range []struct {
		name, want string
		body       []byte
		code       int
	}{
		{"8192-bit signer key", "RSA key of 8192 bits", signedWith(t, &rsa.PublicKey{N: huge, E: 65537}, "tid-1"), http.StatusBadRequest},
		{"signer exponent 3", "RSA exponent 3", signedWith(t, weakE, "tid-2"), http.StatusBadRequest},
		{"200-byte transactionID", "transactionID of 200 bytes", signedWith(t, &testpki.RSAKey(t, 2048, 7).PublicKey, longTID), http.StatusBadRequest},
		{"unprintable transactionID", "not printable", signedWith(t, &testpki.RSAKey(t, 2048, 7).PublicKey, "a\x01b"), http.StatusBadRequest},
		{"nested BER", "nesting deeper", bytes.Repeat([]byte{0x30, 0x80}, 5000), http.StatusBadRequest},
		{"65 KiB body", "too large", make([]byte, 65<<10), http.StatusRequestEntityTooLarge},
	} {
		resp, body := f.post(t, tc.body)
		if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s: %d %q, want %d and %q", tc.name, resp.StatusCode, body, tc.code, tc.want)
		}
	}
	// A well-formed enrolment still works.
	d := newDevice(t, 0)
	resp, body := f.post(t, d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1")))
	if resp.StatusCode != 200 {
		t.Fatalf("valid request: %d %s", resp.StatusCode, body)
	}
	if rep := f.certRep(t, d, body); rep.PKIStatus != smallscep.SUCCESS {
		t.Fatalf("valid request refused: %v %v", rep.PKIStatus, rep.FailInfo)
	}
}
