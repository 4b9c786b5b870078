package intune_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"log/slog"
	"strings"
	"testing"
	"time"

	scepx509 "github.com/smallstep/scep/x509util"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/testing/intunemock"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/intune"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

// The revocation feed revokes what Intune asks of this CA — a certificate
// issued through Intune's validation — answers every other request with
// the documented code, and runs on one node at a time.
func TestRevocationFeed(t *testing.T) {
	m := intunemock.Start(t)
	c := newClient(t, m, nil)
	authority := testpki.NewCA(t, ca.KeyTypeEC)
	store, err := nosqlstore.New(authority.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	domains, _ := policy.NewDomains([]string{"example.com"})
	svc, err := policy.New(authority, store, policy.Config{Domains: domains})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	csrDER, err := scepx509.CreateCertificateRequest(rand.Reader, &scepx509.CertificateRequest{
		CertificateRequest: x509.CertificateRequest{EmailAddresses: []string{"alice@example.com"}},
		ChallengePassword:  m.Challenge(intune.CodeSuccess)}, testpki.RSAKey(t, 2048, 0))
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)
	chain, err := svc.External(intune.Authority{Client: c}).Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: "x", TransactionID: "tx"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	issuer := authority.Intermediate().Subject.String()
	hexSerial := strings.ToUpper(leaf.SerialNumber.Text(16))
	m.QueueRevocation("ours", hexSerial, issuer)
	m.QueueRevocation("again", hexSerial, issuer)
	m.QueueRevocation("unknown", "0ABCDEF1234", issuer)
	m.QueueRevocation("other-issuer", hexSerial, "CN=Someone Else's CA")
	m.QueueRevocation("garbage", "not-hex", issuer)

	log := slog.New(slog.DiscardHandler)
	feed := &intune.Feed{Client: c, Revoker: svc, Leases: store, Holder: "node-1", IssuerName: issuer, Interval: time.Minute, Log: log}
	other := &intune.Feed{Client: c, Revoker: svc, Leases: store, Holder: "node-2", IssuerName: issuer, Interval: time.Minute, Log: log}
	n, err := feed.Once(ctx)
	if err != nil || n != 5 {
		t.Fatalf("feed answered %d: %v", n, err)
	}
	if revoked, _ := authority.IsRevoked(leaf.SerialNumber.String()); !revoked {
		t.Fatal("the requested certificate is not revoked")
	}
	want := map[string]struct {
		ok   bool
		code int
	}{
		"ours": {true, 0}, "again": {false, intune.RevocationConflict}, "unknown": {false, intune.RevocationCertificateNotFound},
		"other-issuer": {false, intune.RevocationCertificateNotFound}, "garbage": {false, intune.RevocationParameterInvalid},
	}
	results := m.Results()
	if len(results) != len(want) {
		t.Fatalf("results %+v", results)
	}
	for _, r := range results {
		if w := want[r.RequestContext]; r.Succeeded != w.ok || r.ErrorCode != w.code {
			t.Errorf("%s: succeeded %v code %d, want %v %d", r.RequestContext, r.Succeeded, r.ErrorCode, w.ok, w.code)
		}
	}
	// Another node does nothing while node-1 holds the lease.
	m.QueueRevocation("later", "01", issuer)
	if n, err := other.Once(ctx); n != 0 || err != nil {
		t.Errorf("a second node ran the feed: %d %v", n, err)
	}
	if n, _ := feed.Once(ctx); n != 1 {
		t.Errorf("the holder's next run answered %d", n)
	}
}
