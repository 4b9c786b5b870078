package scep_test

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	smallscep "github.com/smallstep/scep"
)

// FuzzPKIOperation feeds arbitrary bytes to PKIOperation over POST and GET.
// The handler must never panic, must answer 200 only with a CertRep signed
// by the RA, and must otherwise answer 4xx. The seed corpus (valid
// PKCSReq/RenewalReq messages and garbage) is in testdata/fuzz.
func FuzzPKIOperation(f *testing.F) {
	fx := newFixture(f)
	d := newDevice(f, 0)
	f.Add(d.message(f, fx, smallscep.PKCSReq, fx.challenge(f, "alice@example.com", "dev-1")))
	f.Add(d.message(f, fx, smallscep.PKCSReq, "wrong"))
	f.Add(d.message(f, fx, smallscep.RenewalReq, ""))
	f.Add([]byte{0x30, 0x80})
	f.Add([]byte("garbage"))
	handler := fx.srv.Config.Handler
	ra := []*x509.Certificate{fx.ra}

	check := func(t *testing.T, rec *httptest.ResponseRecorder) {
		switch rec.Code {
		case http.StatusOK:
			rep, err := smallscep.ParsePKIMessage(rec.Body.Bytes(), smallscep.WithCACerts(ra))
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
