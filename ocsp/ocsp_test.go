package ocsp_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/nosql/database"
	"golang.org/x/crypto/ocsp"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/testing/certlint"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	responder "github.com/smimeca/smimeca/ocsp"
)

func leafTemplate(now time.Time) ca.Template {
	return ca.Template{
		CommonName: "alice@example.com", Emails: []string{"alice@example.com"},
		KeyUsage: []string{"digitalSignature"}, ExtKeyUsage: []string{"emailProtection"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(365 * 24 * time.Hour),
	}
}

func ocspRequest(t *testing.T, leaf, issuer *x509.Certificate, h crypto.Hash) []byte {
	t.Helper()
	req, err := ocsp.CreateRequest(leaf, issuer, &ocsp.RequestOptions{Hash: h})
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func parseOCSP(t *testing.T, der []byte, leaf, issuer *x509.Certificate) *ocsp.Response {
	t.Helper()
	resp, err := ocsp.ParseResponseForCert(der, leaf, issuer)
	if err != nil {
		t.Fatalf("parse OCSP response: %v", err)
	}
	return resp
}

// The responder says good, then revoked (time and reason) after a
// revocation by either path, unknown for a serial never issued, and
// unauthorized for another CA's certificate; answers are signed by a
// delegated responder certificate (OCSPSigning, ocsp-nocheck) and valid
// for the configured time.
func TestOCSPResponder(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	ctx := context.Background()
	r, err := responder.New(c, 12*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	issue := func() *x509.Certificate {
		chain, err := c.Issue(ctx, testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
		if err != nil {
			t.Fatal(err)
		}
		return chain[0]
	}
	inter := c.Intermediate()
	leaf := issue()
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		der, thisUpdate, nextUpdate := r.Respond(ocspRequest(t, leaf, inter, h))
		resp := parseOCSP(t, der, leaf, inter)
		if resp.Status != ocsp.Good {
			t.Errorf("%v: status %d, want good", h, resp.Status)
		}
		if got := resp.NextUpdate.Sub(resp.ThisUpdate); got != 12*time.Hour || !resp.ThisUpdate.Equal(thisUpdate) || !resp.NextUpdate.Equal(nextUpdate) {
			t.Errorf("%v: validity %s (%s–%s), want 12h", h, got, resp.ThisUpdate, resp.NextUpdate)
		}
	}

	// The responder certificate.
	signer := r.Signer()
	if len(signer.ExtKeyUsage) != 1 || signer.ExtKeyUsage[0] != x509.ExtKeyUsageOCSPSigning || signer.IsCA {
		t.Errorf("responder certificate EKU %v, CA %v", signer.ExtKeyUsage, signer.IsCA)
	}
	nocheck := false
	for _, e := range signer.Extensions {
		nocheck = nocheck || e.Id.Equal(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5})
	}
	if !nocheck || signer.CheckSignatureFrom(inter) != nil {
		t.Errorf("responder certificate: nocheck %v, signed by the intermediate: %v", nocheck, signer.CheckSignatureFrom(inter))
	}
	certlint.Check(t, "OCSP responder certificate", signer.Raw)

	// A cached answer is the same bytes (no new signature) until revoked.
	first, _, _ := r.Respond(ocspRequest(t, leaf, inter, crypto.SHA1))
	again, _, _ := r.Respond(ocspRequest(t, leaf, inter, crypto.SHA1))
	if !bytes.Equal(first, again) {
		t.Error("a second request for a hot serial was signed again")
	}
	revokedAt := time.Now()
	if err := c.Revoke(ctx, leaf.SerialNumber.String(), ca.ReasonKeyCompromise, "lost"); err != nil {
		t.Fatal(err)
	}
	der, _, _ := r.Respond(ocspRequest(t, leaf, inter, crypto.SHA1))
	resp := parseOCSP(t, der, leaf, inter)
	if resp.Status != ocsp.Revoked || resp.RevocationReason != ocsp.KeyCompromise || resp.RevokedAt.Sub(revokedAt).Abs() > 2*time.Second {
		t.Errorf("after revocation: status %d reason %d at %s, want revoked keyCompromise at %s", resp.Status, resp.RevocationReason, resp.RevokedAt, revokedAt)
	}

	// A revocation committed in another transaction (retire, renewal).
	other := issue()
	if resp := parseOCSP(t, mustRespond(r, ocspRequest(t, other, inter, crypto.SHA256)), other, inter); resp.Status != ocsp.Good {
		t.Fatalf("other: status %d", resp.Status)
	}
	rec, err := c.RevocationRecord(other.SerialNumber.String(), ca.ReasonSuperseded, "renewed", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DB.Update(&database.Tx{Operations: rec.Ops()}); err != nil {
		t.Fatal(err)
	}
	if resp := parseOCSP(t, mustRespond(r, ocspRequest(t, other, inter, crypto.SHA256)), other, inter); resp.Status != ocsp.Revoked || resp.RevocationReason != ocsp.Superseded {
		t.Errorf("after a committed revocation record: status %d reason %d", resp.Status, resp.RevocationReason)
	}

	// A serial this CA never issued is unknown, never good.
	fake := *leaf
	fake.SerialNumber = new(big.Int).Add(leaf.SerialNumber, big.NewInt(1))
	if resp := parseOCSP(t, mustRespond(r, ocspRequest(t, &fake, inter, crypto.SHA1)), &fake, inter); resp.Status != ocsp.Unknown {
		t.Errorf("never-issued serial: status %d, want unknown", resp.Status)
	}
	// Asked again, the unknown serial costs no new signature: the same
	// signed answer (ECDSA signatures differ each time they are made).
	if a, b := mustRespond(r, ocspRequest(t, &fake, inter, crypto.SHA1)), mustRespond(r, ocspRequest(t, &fake, inter, crypto.SHA1)); !bytes.Equal(a, b) {
		t.Error("an unknown serial's answer was signed afresh for a repeated request")
	}

	// Another issuer's certificate, garbage, and an oversized request.
	foreign := testpki.NewOtherCA(t, ca.KeyTypeEC)
	fchain, err := foreign.Issue(ctx, testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if der := mustRespond(r, ocspRequest(t, fchain[0], foreign.Intermediate(), crypto.SHA1)); !bytes.Equal(der, ocsp.UnauthorizedErrorResponse) {
		t.Errorf("foreign issuer: %x, want unauthorized", der)
	}
	for name, req := range map[string][]byte{"garbage": []byte("not DER"), "huge": make([]byte, 5<<10)} {
		if der := mustRespond(r, req); !bytes.Equal(der, ocsp.MalformedRequestErrorResponse) {
			t.Errorf("%s: %x, want malformedRequest", name, der)
		}
	}
}

func mustRespond(r *responder.Responder, req []byte) []byte {
	der, _, _ := r.Respond(req)
	return der
}

// Over HTTP: POST, and GET with the base64 request in the path (also
// percent-encoded), with RFC 5019's caching headers on GET.
func TestOCSPOverHTTP(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeRSA)
	r, err := responder.New(c, 0)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := c.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	leaf, inter := chain[0], c.Intermediate()
	srv := httptest.NewServer(r)
	defer srv.Close()
	req := ocspRequest(t, leaf, inter, crypto.SHA1)
	check := func(name string, resp *http.Response, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/ocsp-response" {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if o := parseOCSP(t, b, leaf, inter); o.Status != ocsp.Good || o.NextUpdate.Sub(o.ThisUpdate) != responder.DefaultValidity {
			t.Errorf("%s: status %d validity %s", name, o.Status, o.NextUpdate.Sub(o.ThisUpdate))
		}
		if resp.Request.Method == http.MethodGet && !strings.Contains(resp.Header.Get("Cache-Control"), "max-age=") {
			t.Errorf("%s: Cache-Control %q", name, resp.Header.Get("Cache-Control"))
		}
	}
	resp, err := http.Post(srv.URL+ca.OCSPPath, "application/ocsp-request", bytes.NewReader(req))
	check("POST", resp, err)
	b64 := base64.StdEncoding.EncodeToString(req)
	resp, err = http.Get(srv.URL + ca.OCSPPath + "/" + b64)
	check("GET", resp, err)
	escaped := strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(b64)
	resp, err = http.Get(srv.URL + ca.OCSPPath + "/" + escaped)
	check("GET percent-encoded", resp, err)
}

func TestOCSPValidityBounds(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	for _, d := range []time.Duration{time.Hour, 11 * 24 * time.Hour} {
		if _, err := responder.New(c, d); err == nil || !strings.Contains(err.Error(), "must be between") {
			t.Errorf("validity %s: %v", d, err)
		}
	}
}

// FuzzOCSPRespond feeds arbitrary bytes to the OCSP responder, which
// answers unauthenticated requests on the public port. It must never
// panic, and every answer is either one of OCSP's unsigned error responses
// or a response signed by the delegated responder that parses.
func FuzzOCSPRespond(f *testing.F) {
	c := testpki.NewCA(f, ca.KeyTypeEC)
	r, err := responder.New(c, 0)
	if err != nil {
		f.Fatal(err)
	}
	chain, err := c.Issue(context.Background(), testpki.CSR(f, testpki.ECKey(f), nil), leafTemplate(time.Now()))
	if err != nil {
		f.Fatal(err)
	}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA512} {
		req, err := ocsp.CreateRequest(chain[0], c.Intermediate(), &ocsp.RequestOptions{Hash: h})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(req)
	}
	errorResponses := [][]byte{ocsp.MalformedRequestErrorResponse, ocsp.UnauthorizedErrorResponse, ocsp.InternalErrorErrorResponse}
	f.Fuzz(func(t *testing.T, req []byte) {
		der, _, _ := r.Respond(req)
		for _, e := range errorResponses {
			if bytes.Equal(der, e) {
				return
			}
		}
		if _, err := ocsp.ParseResponse(der, c.Intermediate()); err != nil {
			t.Fatalf("answer does not parse or verify: %v", err)
		}
	})
}
