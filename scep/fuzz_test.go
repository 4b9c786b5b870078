package scep_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"testing"
	"time"

	smallscep "github.com/smallstep/scep"

	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/scep"
)

// FuzzPKIOperation feeds arbitrary bytes to PKIOperation over POST and GET.
// The handler must never panic, must answer 200 only with a CertRep signed
// by the RA, and must otherwise answer 4xx. The seed corpus (valid
// PKCSReq/RenewalReq messages and garbage) is in testdata/fuzz.
func FuzzPKIOperation(f *testing.F) {
	// Fixed test-only RSA-1024 keys (testdata/fuzz-keys.pem) and no CA: every fuzz
	// worker runs this set-up, and generating RSA keys under coverage
	// instrumentation took the whole fuzz budget, and 1024-bit operations are
	// 8× cheaper than 2048-bit ones there. The target is the protocol
	// path (parse, verify, decrypt, CertRep), not policy, so a refusing
	// enroller answers every well-formed request.
	raKey, devKey := fuzzKeys(f)
	ra := selfSigned(f, raKey, "fuzz RA")
	handler, err := scep.New(refuser{}, ra, raKey, nil)
	if err != nil {
		f.Fatal(err)
	}
	d := &device{key: devKey, cert: selfSigned(f, devKey, "device")}
	fx := &fixture{ra: ra, raKey: raKey}
	f.Add(d.message(f, fx, smallscep.PKCSReq, "a-challenge"))
	f.Add(d.message(f, fx, smallscep.PKCSReq, ""))
	f.Add(d.message(f, fx, smallscep.RenewalReq, ""))
	f.Add([]byte{0x30, 0x80})
	f.Add([]byte("garbage"))
	ras := []*x509.Certificate{ra}

	check := func(t *testing.T, rec *httptest.ResponseRecorder) {
		switch rec.Code {
		case http.StatusOK:
			rep, err := smallscep.ParsePKIMessage(rec.Body.Bytes(), smallscep.WithCACerts(ras))
			if err != nil {
				t.Fatalf("200 with an unparseable CertRep: %v", err)
			}
			if rep.MessageType != smallscep.CertRep {
				t.Fatalf("200 with message type %s", rep.MessageType)
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/scep?operation=PKIOperation", bytes.NewReader(body)))
		check(t, rec)
		rec = httptest.NewRecorder()
		handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet,
			"/scep?operation=PKIOperation&message="+url.QueryEscape(base64.StdEncoding.EncodeToString(body)), nil))
		check(t, rec)
	})
}

type refuser struct{}

func (refuser) Enroll(context.Context, policy.Request) ([]*x509.Certificate, error) {
	return nil, &policy.RejectError{Reason: policy.ReasonChallengeUnknown, Detail: "fuzz"}
}

func fuzzKeys(t testing.TB) (*rsa.PrivateKey, *rsa.PrivateKey) {
	b, err := os.ReadFile("testdata/fuzz-keys.pem")
	if err != nil {
		t.Fatal(err)
	}
	var keys []*rsa.PrivateKey
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.(*rsa.PrivateKey))
	}
	return keys[0], keys[1]
}

func selfSigned(t testing.TB, key *rsa.PrivateKey, cn string) *x509.Certificate {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}
