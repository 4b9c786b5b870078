package policy_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

// authority stands for an external challenge authority at policy's border:
// it answers per transaction and records what it is told.
type authority struct {
	mu        sync.Mutex
	answers   map[string]error // transaction → Validate's answer
	issuedErr error
	issued    []string // transaction IDs told of a certificate
	failed    map[string]policy.Kind
	inIssued  func() // runs inside Issued
}

func newAuthority() *authority {
	return &authority{answers: map[string]error{}, failed: map[string]policy.Kind{}}
}

func (a *authority) Name() string { return "intune" }

func (a *authority) Validate(_ context.Context, tx string, _ []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.answers[tx]
}

func (a *authority) Issued(_ context.Context, tx string, _ []byte, _, _ *x509.Certificate) error {
	if a.inIssued != nil {
		a.inIssued()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.issued = append(a.issued, tx)
	return a.issuedErr
}

func (a *authority) Failed(_ context.Context, tx string, _ []byte, kind policy.Kind, _ string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.failed[tx] = kind
}

func externalRequest(t *testing.T, tx string, tmpl *x509.CertificateRequest, key int) policy.Request {
	t.Helper()
	return policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, key), tmpl), Challenge: "opaque-intune-blob", TransactionID: tx}
}

// The authority's Success is the only way to a certificate on its
// endpoint; the certificate is smimeca's S/MIME profile for the one
// address the CSR names, recorded under an external device after the
// authority took the notice, and it renews without the authority.
func TestExternalEnrollment(t *testing.T) {
	v := newEnv(t, nil)
	auth := newAuthority()
	x := v.e.External(auth)
	ctx := context.Background()
	sid, _ := url.Parse("tag:microsoft.com,2022-09-14:sid:S-1-5-21-1-2-3-1001")
	dev, _ := url.Parse("IntuneDeviceId://5f0c8f8a-1b2c-4d5e-8f90-123456789abc")
	req := externalRequest(t, "tx-ok", &x509.CertificateRequest{Subject: pkix.Name{CommonName: "Alice"},
		EmailAddresses: []string{"Alice@Example.com"}, URIs: []*url.URL{sid, dev}}, 0)
	var recordedBeforeNotice bool
	auth.inIssued = func() {
		l, _ := v.e.ListCertificates(ctx, policy.Filter{User: "alice@example.com"})
		recordedBeforeNotice = len(l) > 0
	}
	chain, err := x.Enroll(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if len(leaf.EmailAddresses) != 1 || leaf.EmailAddresses[0] != "alice@example.com" || len(leaf.URIs) != 0 || leaf.Subject.CommonName != "alice@example.com" {
		t.Errorf("certificate names: %v %v %q", leaf.EmailAddresses, leaf.URIs, leaf.Subject.CommonName)
	}
	if recordedBeforeNotice || len(auth.issued) != 1 || len(auth.failed) != 0 {
		t.Errorf("recorded before the notice: %v; notices %v; failures %v", recordedBeforeNotice, auth.issued, auth.failed)
	}
	l, err := v.e.ListCertificates(ctx, policy.Filter{User: "alice@example.com"})
	if err != nil || len(l) != 1 || l[0].Device != policy.ExternalDevicePrefix+"5f0c8f8a-1b2c-4d5e-8f90-123456789abc" || l[0].Serial != leaf.SerialNumber.String() {
		t.Fatalf("inventory: %+v %v", l, err)
	}
	// Renewal: signed with the certificate, no authority asked.
	renewed, err := x.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 1), nil), Signer: leaf})
	if err != nil || len(auth.issued) != 1 {
		t.Fatalf("renewal: %v (notices %v)", err, auth.issued)
	}
	if renewed[0].EmailAddresses[0] != "alice@example.com" {
		t.Errorf("renewed for %v", renewed[0].EmailAddresses)
	}
	// An external device id cannot be registered by hand.
	if _, err := v.e.RegisterDevice(ctx, "alice@example.com", policy.ExternalDevicePrefix+"x", nil); err == nil {
		t.Error("an intune/ device id was registered")
	}
}

// Every way to fail: a request without a challenge never reaches the
// authority; once it was asked, every failure — its refusal, its silence,
// the names, the domain — is reported to it; a notice the authority did
// not take leaves no certificate in the inventory.
func TestExternalEnrollmentFailures(t *testing.T) {
	v := newEnv(t, nil)
	auth := newAuthority()
	x := v.e.External(auth)
	ctx := context.Background()
	one := &x509.CertificateRequest{EmailAddresses: []string{"bob@example.com"}}

	auth.answers["tx-refused"] = &policy.AuthorityRefusal{Code: "ChallengeExpired", Description: "expired"}
	_, err := x.Enroll(ctx, externalRequest(t, "tx-refused", one, 0))
	wantReason(t, err, policy.ReasonChallengeRefused)
	if !strings.Contains(err.Error(), "ChallengeExpired") || strings.Contains(err.Error(), "opaque-intune-blob") {
		t.Errorf("refusal: %v", err)
	}
	auth.answers["tx-down"] = errors.New("HTTP 500")
	_, err = x.Enroll(ctx, externalRequest(t, "tx-down", one, 0))
	wantReason(t, err, policy.ReasonChallengeUnverified)

	noChallenge := externalRequest(t, "tx-none", one, 0)
	noChallenge.Challenge = ""
	_, err = x.Enroll(ctx, noChallenge)
	wantReason(t, err, policy.ReasonChallengeMissing)

	for tx, tmpl := range map[string]*x509.CertificateRequest{
		"tx-two":    {EmailAddresses: []string{"bob@example.com", "carol@example.com"}},
		"tx-none@":  {Subject: pkix.Name{CommonName: "Bob"}},
		"tx-dns":    {EmailAddresses: []string{"bob@example.com"}, DNSNames: []string{"bob.example.com"}},
		"tx-domain": {EmailAddresses: []string{"bob@elsewhere.org"}},
	} {
		_, err := x.Enroll(ctx, externalRequest(t, tx, tmpl, 0))
		if _, ok := policy.IsReject(err); !ok {
			t.Errorf("%s: %v", tx, err)
		}
		if _, told := auth.failed[tx]; !told {
			t.Errorf("%s: the authority was not told of the failure", tx)
		}
	}
	if len(auth.failed) != 6 || auth.failed["tx-refused"] != policy.KindDenied || auth.failed["tx-down"] != policy.KindFailedPrecondition {
		t.Errorf("failures reported %v: want the refusal, the silence and the four bad requests, not the one without a challenge", auth.failed)
	}

	auth.issuedErr = errors.New("successNotification answered 500")
	_, err = x.Enroll(ctx, externalRequest(t, "tx-notice", one, 0))
	wantReason(t, err, policy.ReasonChallengeUnverified)
	if _, told := auth.failed["tx-notice"]; !told {
		t.Error("a notice not taken was not reported as a failure")
	}
	if l, _ := v.e.ListCertificates(ctx, policy.Filter{User: "bob@example.com"}); len(l) != 0 {
		t.Errorf("the inventory holds %+v after a notice not taken", l)
	}
}

// failingStore fails every issuance's record.
type failingStore struct{ *nosqlstore.Store }

func (failingStore) RecordIssued(context.Context, policy.Issued, policy.Commit) error {
	return errors.New("disk full")
}

// A certificate the authority validated but smimeca could not record is a
// refusal for the device too (a resend would need a new validation), and
// the authority hears of it as smimeca's own failure.
func TestExternalEnrollmentInternalFailure(t *testing.T) {
	v := newEnv(t, nil)
	domains, _ := policy.NewDomains([]string{"example.com"})
	svc, err := policy.New(v.ca, failingStore{v.store}, policy.Config{Domains: domains})
	if err != nil {
		t.Fatal(err)
	}
	auth := newAuthority()
	_, err = svc.External(auth).Enroll(context.Background(), externalRequest(t, "tx-disk", &x509.CertificateRequest{EmailAddresses: []string{"a@example.com"}}, 0))
	wantReason(t, err, policy.ReasonIssueFailed)
	if k, told := auth.failed["tx-disk"]; !told || k != 0 {
		t.Errorf("the authority was told %v (kind %d), want smimeca's own failure (0)", told, k)
	}
}
