package scep_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"
	smallscep "github.com/smallstep/scep"
	scepx509 "github.com/smallstep/scep/x509util"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
	"github.com/smimeca/smimeca/scep"
)

type fixture struct {
	srv    *httptest.Server
	e      *policy.Services
	raKey  scep.RAKey
	ra     *x509.Certificate
	caCert *testpki.CA
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	if err := scep.SetPKCS7Defaults("aes256-cbc"); err != nil {
		t.Fatal(err)
	}
	c := testpki.NewCA(t, ca.KeyTypeEC)
	store, err := nosqlstore.New(c.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(c, store, policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ra, raKey := c.RA()
	// As serve mounts it: the default ECDSA issuing CA is not in GetCACert
	// (the root signs the RA), so renewals name it (WithIssuers).
	h, err := scep.New(e, ra, raKey, c.SCEPCACerts(), scep.WithIssuers(c.Intermediate()))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &fixture{srv: srv, e: e, ra: ra, raKey: raKey, caCert: c}
}

// device is a SCEP client built from the same library a real client uses.
type device struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate // self-signed, or the issued one for renewal
}

func newDevice(t testing.TB, i int) *device {
	t.Helper()
	key := testpki.RSAKey(t, 2048, i)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	crt, _ := x509.ParseCertificate(der)
	return &device{key: key, cert: crt}
}

func (d *device) message(t testing.TB, f *fixture, mt smallscep.MessageType, challenge string, emails ...string) []byte {
	t.Helper()
	der, err := scepx509.CreateCertificateRequest(rand.Reader, &scepx509.CertificateRequest{
		CertificateRequest: x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}, EmailAddresses: emails},
		ChallengePassword:  challenge,
	}, d.key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := smallscep.NewCSRRequest(csr, &smallscep.PKIMessage{
		MessageType: mt, Recipients: []*x509.Certificate{f.ra}, SignerKey: d.key, SignerCert: d.cert,
	})
	if err != nil {
		t.Fatal(err)
	}
	return msg.Raw
}

func (f *fixture) post(t testing.TB, body []byte) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(f.srv.URL+"/scep?operation=PKIOperation", "application/x-pki-message", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func (f *fixture) certRep(t testing.TB, d *device, body []byte) *smallscep.PKIMessage {
	t.Helper()
	rep, err := smallscep.ParsePKIMessage(body, smallscep.WithCACerts([]*x509.Certificate{f.ra}))
	if err != nil {
		t.Fatalf("parse CertRep: %v", err)
	}
	if rep.MessageType != smallscep.CertRep {
		t.Fatalf("message type %s", rep.MessageType)
	}
	if rep.PKIStatus == smallscep.SUCCESS {
		if err := rep.DecryptPKIEnvelope(d.cert, d.key); err != nil {
			t.Fatalf("decrypt CertRep: %v", err)
		}
	}
	return rep
}

func (f *fixture) challenge(t testing.TB, user, device string) string {
	if _, err := f.e.RegisterDevice(context.Background(), user, device, nil); err != nil {
		t.Fatal(err)
	}
	c, err := f.e.CreateChallenge(context.Background(), user, device, 0)
	if err != nil {
		t.Fatal(err)
	}
	return c.Secret
}

// The RA key may be any signer and decrypter (a token's, later), but it
// must be RSA: SCEP's envelopes are encrypted to it with RSA.
func TestNewRefusesANonRSARAKey(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, err := scep.New(nil, &x509.Certificate{}, ecdsaDecrypter{ec}, nil)
	if err == nil || !strings.Contains(err.Error(), "RSA") {
		t.Errorf("an ECDSA RA key: %v", err)
	}
}

type ecdsaDecrypter struct{ *ecdsa.PrivateKey }

func (ecdsaDecrypter) Decrypt(io.Reader, []byte, crypto.DecrypterOpts) ([]byte, error) {
	return nil, errors.New("no")
}

func TestGetCACapsAndCert(t *testing.T) {
	f := newFixture(t)
	for _, path := range []string{"/scep", "/scep/pkiclient.exe"} {
		resp, err := http.Get(f.srv.URL + path + "?operation=GetCACaps")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		caps := string(b)
		for _, want := range []string{"POSTPKIOperation", "SHA-256", "SHA-512", "AES", "SCEPStandard", "Renewal"} {
			if !strings.Contains(caps, want+"\n") {
				t.Errorf("%s caps lack %s: %q", path, want, caps)
			}
		}
		for _, bad := range []string{"DES3", "SHA-1"} {
			if strings.Contains(caps, bad) {
				t.Errorf("caps advertise %s", bad)
			}
		}
	}
	resp, err := http.Get(f.srv.URL + "/scep?operation=GetCACert")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-x509-ca-ra-cert" {
		t.Errorf("content type %q", ct)
	}
	certs, err := smallscep.CACerts(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || !certs[0].Equal(f.ra) || !certs[1].Equal(f.caCert.Root()) {
		t.Errorf("GetCACert returned %d certs, want RA then root (which signed it)", len(certs))
	}
	for _, c := range certs {
		if _, ok := c.PublicKey.(*rsa.PublicKey); !ok {
			t.Errorf("GetCACert serves %s with a %T key: clients that encrypt to every certificate cannot", c.Subject, c.PublicKey)
		}
	}
}

func TestEnrollOverPOSTAndGET(t *testing.T) {
	f := newFixture(t)
	d := newDevice(t, 0)

	// POST
	_, body := f.post(t, d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1")))
	rep := f.certRep(t, d, body)
	if rep.PKIStatus != smallscep.SUCCESS {
		t.Fatalf("status %s failInfo %s", rep.PKIStatus, rep.FailInfo)
	}
	if got := rep.CertRepMessage.Certificate.EmailAddresses; len(got) != 1 || got[0] != "alice@example.com" {
		t.Errorf("issued names %q", got)
	}

	// GET with the base64 unescaped, as macOS sends it: '+' arrives as ' '.
	msg := d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1"))
	b64 := base64.StdEncoding.EncodeToString(msg)
	for !strings.Contains(b64, "+") { // make sure the test exercises the '+' case
		msg = d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1"))
		b64 = base64.StdEncoding.EncodeToString(msg)
	}
	resp, err := http.Get(f.srv.URL + "/scep?operation=PKIOperation&message=" + b64)
	if err != nil {
		t.Fatal(err)
	}
	gb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET status %d: %s", resp.StatusCode, gb)
	}
	if rep := f.certRep(t, d, gb); rep.PKIStatus != smallscep.SUCCESS {
		t.Fatalf("GET status %s", rep.PKIStatus)
	}
	// GET properly escaped.
	resp, err = http.Get(f.srv.URL + "/scep?operation=PKIOperation&message=" + url.QueryEscape(base64.StdEncoding.EncodeToString(
		d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1")))))
	if err != nil {
		t.Fatal(err)
	}
	gb, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if rep := f.certRep(t, d, gb); rep.PKIStatus != smallscep.SUCCESS {
		t.Fatalf("escaped GET status %s", rep.PKIStatus)
	}
}

// The identical PKCSReq sent again (a device that lost the CertRep) gets
// a SUCCESS with the same certificate, not "challenge used".
func TestRepeatedPKCSReq(t *testing.T) {
	f := newFixture(t)
	d := newDevice(t, 0)
	msg := d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1"))
	var certs []*x509.Certificate
	for i := 0; i < 2; i++ {
		resp, body := f.post(t, msg)
		if resp.StatusCode != 200 {
			t.Fatalf("attempt %d: %d", i, resp.StatusCode)
		}
		rep := f.certRep(t, d, body)
		if rep.PKIStatus != smallscep.SUCCESS {
			t.Fatalf("attempt %d: %s %s", i, rep.PKIStatus, rep.FailInfo)
		}
		certs = append(certs, rep.CertRepMessage.Certificate)
	}
	if !certs[0].Equal(certs[1]) {
		t.Error("the repeat got another certificate")
	}
}

// CertReps (successes and failures) are signed with SHA-256: GetCACaps
// advertises no SHA-1.
func TestCertRepIsSignedWithSHA256(t *testing.T) {
	f := newFixture(t)
	d := newDevice(t, 0)
	for _, msg := range [][]byte{
		d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1")),
		d.message(t, f, smallscep.PKCSReq, "unknown challenge"),
	} {
		_, body := f.post(t, msg)
		p7, err := pkcs7.Parse(body)
		if err != nil {
			t.Fatal(err)
		}
		if alg := p7.Signers[0].DigestAlgorithm.Algorithm; !alg.Equal(pkcs7.OIDDigestAlgorithmSHA256) {
			t.Errorf("CertRep digest %v, want SHA-256", alg)
		}
	}
}

func TestRefusalsAreSignedFailures(t *testing.T) {
	f := newFixture(t)
	d := newDevice(t, 0)
	secret := f.challenge(t, "alice@example.com", "dev-1")
	for name, msg := range map[string][]byte{
		"other user":             d.message(t, f, smallscep.PKCSReq, secret, "bob@example.com"),
		"unknown challenge":      d.message(t, f, smallscep.PKCSReq, "wrong"),
		"no challenge":           d.message(t, f, smallscep.PKCSReq, ""),
		"renewal by self-signed": d.message(t, f, smallscep.RenewalReq, ""),
	} {
		resp, body := f.post(t, msg)
		if resp.StatusCode != 200 {
			t.Errorf("%s: HTTP %d", name, resp.StatusCode)
			continue
		}
		rep := f.certRep(t, d, body)
		if rep.PKIStatus != smallscep.FAILURE {
			t.Errorf("%s: status %s", name, rep.PKIStatus)
		}
		want := smallscep.BadRequest
		if strings.HasPrefix(name, "renewal") {
			want = smallscep.BadMessageCheck
		}
		if rep.FailInfo != want {
			t.Errorf("%s: failInfo %s, want %s", name, rep.FailInfo, want)
		}
	}
	// The refused "other user" request did not burn the challenge.
	_, body := f.post(t, d.message(t, f, smallscep.PKCSReq, secret))
	if rep := f.certRep(t, d, body); rep.PKIStatus != smallscep.SUCCESS {
		t.Fatalf("challenge burned by a refused request: %s", rep.FailInfo)
	}
}

func TestRenewalReq(t *testing.T) {
	f := newFixture(t)
	d := newDevice(t, 0)
	_, body := f.post(t, d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1")))
	issued := f.certRep(t, d, body).CertRepMessage.Certificate
	renewer := &device{key: d.key, cert: issued}
	_, body = f.post(t, renewer.message(t, f, smallscep.RenewalReq, ""))
	rep := f.certRep(t, renewer, body)
	if rep.PKIStatus != smallscep.SUCCESS {
		t.Fatalf("renewal: %s %s", rep.PKIStatus, rep.FailInfo)
	}
	if rep.CertRepMessage.Certificate.SerialNumber.Cmp(issued.SerialNumber) == 0 {
		t.Error("renewal returned the old certificate")
	}
}

// A PKCSReq signed with a certificate this CA issued (and no challenge) is
// a renewal, as certmonger's rekey sends it, also when GetCACert does not
// serve the issuing CA (WithIssuers); signed with a certificate of another
// CA it stays an initial request and needs a challenge.
func TestPKCSReqSignedWithIssuedCertificateRenews(t *testing.T) {
	f := newFixture(t)
	d := newDevice(t, 0)
	_, body := f.post(t, d.message(t, f, smallscep.PKCSReq, f.challenge(t, "alice@example.com", "dev-1")))
	issued := f.certRep(t, d, body).CertRepMessage.Certificate
	renewer := &device{key: d.key, cert: issued}
	_, body = f.post(t, renewer.message(t, f, smallscep.PKCSReq, ""))
	rep := f.certRep(t, renewer, body)
	if rep.PKIStatus != smallscep.SUCCESS || rep.CertRepMessage.Certificate.SerialNumber.Cmp(issued.SerialNumber) == 0 {
		t.Fatalf("PKCSReq signed with the issued certificate: %s %s", rep.PKIStatus, rep.FailInfo)
	}
	// Replayed once the certificate it was signed with is superseded: a
	// renewal of a revoked certificate is refused.
	_, body = f.post(t, renewer.message(t, f, smallscep.PKCSReq, ""))
	if rep := f.certRep(t, renewer, body); rep.PKIStatus == smallscep.SUCCESS {
		t.Error("a second renewal from the superseded certificate succeeded")
	}
}

var (
	oidMessageType   = asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 2}
	oidSenderNonce   = asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 5}
	oidTransactionID = asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 7}
)

func TestCertPollGetsSignedFailure(t *testing.T) {
	f := newFixture(t)
	d := newDevice(t, 0)
	sd, err := pkcs7.NewSignedData([]byte("poll"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sd.AddSigner(d.cert, d.key, pkcs7.SignerInfoConfig{ExtraSignedAttributes: []pkcs7.Attribute{
		{Type: oidTransactionID, Value: smallscep.TransactionID("tx-1")},
		{Type: oidMessageType, Value: smallscep.CertPoll},
		{Type: oidSenderNonce, Value: smallscep.SenderNonce([]byte("0123456789abcdef"))},
	}}); err != nil {
		t.Fatal(err)
	}
	raw, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	resp, body := f.post(t, raw)
	if resp.StatusCode != 200 {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
	}
	rep := f.certRep(t, d, body)
	if rep.PKIStatus != smallscep.FAILURE || rep.FailInfo != smallscep.BadCertID || rep.TransactionID != "tx-1" {
		t.Errorf("CertPoll answer %s %s %s", rep.PKIStatus, rep.FailInfo, rep.TransactionID)
	}
}

func TestBadRequestsGet4xx(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		method, query string
		body          []byte
		want          int
	}{
		{"GET", "", nil, 400},
		{"GET", "operation=Nope", nil, 400},
		{"POST", "operation=PKIOperation", []byte("garbage"), 400},
		{"POST", "operation=PKIOperation", nil, 400},
		{"POST", "operation=PKIOperation", bytes.Repeat([]byte{0x30}, 300<<10), 413},
		{"GET", "operation=PKIOperation", nil, 400},
		{"GET", "operation=PKIOperation&message=%%%", nil, 400},
		{"GET", "operation=PKIOperation&message=AAAA", nil, 400},
		{"PUT", "operation=PKIOperation", []byte("x"), 405},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(tc.method, f.srv.URL+"/scep?"+tc.query, bytes.NewReader(tc.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s ?%s: HTTP %d, want %d", tc.method, tc.query, resp.StatusCode, tc.want)
		}
	}
	resp, err := http.Get(f.srv.URL + "/other")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("unknown path: %d", resp.StatusCode)
	}
}
