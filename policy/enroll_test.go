package policy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/testing/certlint"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

type recordingAuditor struct {
	mu      sync.Mutex
	events  []policy.Event
	failErr error
}

func (r *recordingAuditor) Audit(_ context.Context, e policy.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// Record implements policy.Recorder; it fails after failRecord.
func (r *recordingAuditor) Record(ctx context.Context, e policy.Event) error {
	r.mu.Lock()
	err := r.failErr
	r.mu.Unlock()
	if err != nil {
		return err
	}
	r.Audit(ctx, e)
	return nil
}

func (r *recordingAuditor) failRecord(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failErr = err
}

type env struct {
	t     testing.TB
	ca    *testpki.CA
	store *nosqlstore.Store
	e     *policy.Services
	audit *recordingAuditor
	now   time.Time
	mu    sync.Mutex
}

func (v *env) clock() time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.now
}

func (v *env) advance(d time.Duration) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.now = v.now.Add(d)
}

func newEnv(t testing.TB, mut func(*policy.Config)) *env {
	t.Helper()
	c := testpki.NewCA(t, ca.KeyTypeEC)
	store, err := nosqlstore.New(c.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	domains, err := policy.NewDomains([]string{"example.com"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := policy.Config{Domains: domains}
	if mut != nil {
		mut(&cfg)
	}
	v := &env{t: t, ca: c, store: store, audit: &recordingAuditor{}, now: time.Now()}
	v.e, err = policy.New(c, store, cfg, policy.WithAuditor(v.audit), policy.WithClock(v.clock))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// register registers the user's device without an identity certificate.
func (v *env) register(user, device string) {
	v.t.Helper()
	if _, err := v.e.RegisterDevice(context.Background(), user, device, nil); err != nil {
		v.t.Fatal(err)
	}
}

// challenge registers the device (when it is not yet) and creates a
// challenge for it.
func (v *env) challenge(user, device string) string {
	v.t.Helper()
	v.register(user, device)
	c, err := v.e.CreateChallenge(context.Background(), user, device, 0)
	if err != nil {
		v.t.Fatal(err)
	}
	return c.Secret
}

func wantReason(t *testing.T, err error, r policy.Reason) {
	t.Helper()
	re, ok := policy.IsReject(err)
	if !ok {
		t.Fatalf("err = %v, want RejectError %s", err, r)
	}
	if re.Reason != r {
		t.Fatalf("reason = %s (%s), want %s", re.Reason, re.Detail, r)
	}
}

func TestCreateChallengeRules(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	v.register("alice@example.com", "dev-1")
	v.register("bob@example.com", "d")
	c, err := v.e.CreateChallenge(ctx, "  Alice@Example.COM ", "dev-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.User != "alice@example.com" {
		t.Errorf("user = %q, want lower-cased", c.User)
	}
	if len(c.Secret) < 40 {
		t.Errorf("challenge %d chars, want >= 40 (256 bits)", len(c.Secret))
	}
	// Every character is allowed in an ASN.1 PrintableString, as
	// certmonger encodes the challengePassword.
	if strings.Trim(c.Secret, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") != "" {
		t.Errorf("challenge %q holds characters outside base32", c.Secret)
	}
	if got := c.ExpiresAt.Sub(v.now); got < 23*time.Hour || got > 25*time.Hour {
		t.Errorf("default ttl = %s", got)
	}
	for _, tc := range []struct {
		user, device string
		ttl          time.Duration
		want         policy.Reason
	}{
		{"bob@evil.com", "d", 0, policy.ReasonDomainNotAllowed},
		{"bob@sub.example.com", "d", 0, policy.ReasonDomainNotAllowed},
		{"not an address", "d", 0, policy.ReasonBadUser},
		{"Bob <bob@example.com>", "d", 0, policy.ReasonBadUser},
		{"", "d", 0, policy.ReasonBadUser},
		{"jürgen@example.com", "d", 0, policy.ReasonBadUser}, // rfc822Name is ASCII
		{"bob@bücher.example.com", "d", 0, policy.ReasonBadUser},
		{"bob@example.com", "", 0, policy.ReasonBadDevice},
		{"bob@example.com", "has space", 0, policy.ReasonBadDevice},
		{"bob@example.com", strings.Repeat("x", 129), 0, policy.ReasonBadDevice},
		{"bob@example.com", "d", 31 * 24 * time.Hour, policy.ReasonBadTTL},
		{"bob@example.com", "d", time.Second, policy.ReasonBadTTL},
	} {
		_, err := v.e.CreateChallenge(ctx, tc.user, tc.device, tc.ttl)
		wantReason(t, err, tc.want)
	}
}

func TestEnrollBuildsCertificateFromBinding(t *testing.T) {
	v := newEnv(t, nil)
	secret := v.challenge("Alice@example.com", "dev-1")
	csr := testpki.CSR(t, testpki.RSAKey(t, 2048, 0), &x509.CertificateRequest{Subject: pkix.Name{CommonName: "whatever-the-device-says"}})
	chain, err := v.e.Enroll(context.Background(), policy.Request{Kind: policy.Initial, CSR: csr, Challenge: secret})
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	if leaf.Subject.CommonName != "alice@example.com" || len(leaf.EmailAddresses) != 1 || leaf.EmailAddresses[0] != "alice@example.com" {
		t.Errorf("leaf names %q %q", leaf.Subject.CommonName, leaf.EmailAddresses)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KU = %v, want digitalSignature only by default", leaf.KeyUsage)
	}
	rec, err := v.store.IssuedBySerial(context.Background(), leaf.SerialNumber.String())
	if err != nil {
		t.Fatal(err)
	}
	if rec.User != "alice@example.com" || rec.Device != "dev-1" {
		t.Errorf("inventory %+v", rec)
	}
	// Audit events never hold the challenge.
	b, _ := json.Marshal(v.audit.events)
	if strings.Contains(string(b), secret) {
		t.Error("audit log contains the challenge")
	}
	if len(v.audit.events) < 2 || v.audit.events[len(v.audit.events)-1].Action != policy.ActionEnroll {
		t.Errorf("audit events %+v", v.audit.events)
	}
	certlint.Check(t, "enrolled certificate", leaf.Raw)
}

// A validity beyond the S/MIME BR's 825 days is refused with the limit.
func TestValidityCappedAt825Days(t *testing.T) {
	for _, d := range []time.Duration{policy.MaxValidity + time.Hour, 10 * time.Minute} {
		c := policy.Config{Validity: d}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "825 days") {
			t.Errorf("validity %s: %v, want a refusal naming 825 days", d, err)
		}
	}
	c := policy.Config{Validity: policy.MaxValidity}
	if err := c.Validate(); err != nil {
		t.Errorf("825 days: %v", err)
	}
}

func TestContentCommitmentOption(t *testing.T) {
	v := newEnv(t, func(c *policy.Config) { c.ContentCommitment = true; c.Validity = 30 * 24 * time.Hour })
	chain, err := v.e.Enroll(context.Background(), policy.Request{Kind: policy.Initial,
		CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), Challenge: v.challenge("a@example.com", "d")})
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageContentCommitment {
		t.Errorf("KU = %v", chain[0].KeyUsage)
	}
	if d := chain[0].NotAfter.Sub(chain[0].NotBefore); d > 31*24*time.Hour {
		t.Errorf("validity %s, want 30d", d)
	}
}

func TestMalformedRequestsDoNotBurnTheChallenge(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	secret := v.challenge("alice@example.com", "dev-1")
	key := testpki.RSAKey(t, 2048, 0)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	weak := testpki.RSAKey(t, 1024, 0)
	u, _ := url.Parse("https://evil.example")
	bad := []struct {
		name string
		csr  *x509.CertificateRequest
		want policy.Reason
	}{
		{"other user SAN", testpki.CSR(t, key, &x509.CertificateRequest{EmailAddresses: []string{"bob@example.com"}}), policy.ReasonNameNotBound},
		{"other user CN", testpki.CSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "bob@example.com"}}), policy.ReasonNameNotBound},
		{"DNS SAN", testpki.CSR(t, key, &x509.CertificateRequest{DNSNames: []string{"host.example.com"}}), policy.ReasonNameNotBound},
		{"URI SAN", testpki.CSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{u}}), policy.ReasonNameNotBound},
		{"EC key", testpki.CSR(t, ecKey, nil), policy.ReasonWeakKey},
		{"RSA 1024", testpki.CSR(t, weak, nil), policy.ReasonWeakKey},
	}
	for _, tc := range bad {
		_, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: tc.csr, Challenge: secret})
		wantReason(t, err, tc.want)
	}
	tampered := testpki.CSR(t, key, nil)
	tampered.Signature[0] ^= 0xff
	_, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: tampered, Challenge: secret})
	wantReason(t, err, policy.ReasonBadCSR)

	// The same challenge still works for a proper request, with the bound
	// address requested in any case.
	ok := testpki.CSR(t, key, &x509.CertificateRequest{EmailAddresses: []string{"ALICE@example.com"}})
	if _, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: ok, Challenge: secret}); err != nil {
		t.Fatalf("valid request after refusals: %v", err)
	}
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: ok, Challenge: secret})
	wantReason(t, err, policy.ReasonChallengeUsed)
}

func TestChallengeUnknownMissingExpired(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	csr := testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil)
	_, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: "nope"})
	wantReason(t, err, policy.ReasonChallengeUnknown)
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr})
	wantReason(t, err, policy.ReasonChallengeMissing)
	v.register("a@example.com", "d")
	c, err := v.e.CreateChallenge(ctx, "a@example.com", "d", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	v.advance(time.Hour + time.Second)
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: c.Secret})
	wantReason(t, err, policy.ReasonChallengeExpired)
}

// Concurrent uses of one challenge give one certificate, within one
// Enrollment and across two on the same database (the store's transaction
// decides then), and the CA's database keeps only the certificate that was
// handed out.
func TestConcurrentDoubleUseIssuesOnce(t *testing.T) {
	v := newEnv(t, nil)
	other, err := policy.New(v.ca, v.store, policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	secret := v.challenge("alice@example.com", "dev-1")
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	issued, used := 0, 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			csr := testpki.CSR(t, testpki.RSAKey(t, 2048, i%4), nil)
			e := v.e
			if i%2 == 1 {
				e = other
			}
			_, err := e.Enroll(context.Background(), policy.Request{Kind: policy.Initial, CSR: csr, Challenge: secret})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				issued++
			} else if re, ok := policy.IsReject(err); ok && re.Reason == policy.ReasonChallengeUsed {
				used++
			} else {
				t.Errorf("unexpected error %v", err)
			}
		}(i)
	}
	wg.Wait()
	if issued != 1 || used != n-1 {
		t.Fatalf("issued %d, refused as used %d; want 1 and %d", issued, used, n-1)
	}
	list, err := v.e.ListCertificates(context.Background(), policy.Filter{User: "alice@example.com", Device: "dev-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 {
		t.Fatalf("inventory holds %d certificates, want 1", len(list))
	}
	certs, err := v.ca.DB.List([]byte("x509_certs"))
	if err != nil || len(certs) != 1 {
		t.Fatalf("CA database holds %d certificates (%v), want 1", len(certs), err)
	}
}

func TestRenewal(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	key := testpki.RSAKey(t, 2048, 0)
	chain, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, key, nil), Challenge: v.challenge("alice@example.com", "dev-1")})
	if err != nil {
		t.Fatal(err)
	}
	old := chain[0]
	newKey := testpki.RSAKey(t, 2048, 1)
	// Renewal for another address is refused and changes nothing.
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, Signer: old,
		CSR: testpki.CSR(t, newKey, &x509.CertificateRequest{EmailAddresses: []string{"bob@example.com"}})})
	wantReason(t, err, policy.ReasonNameNotBound)
	// Without a signer, or with a foreign certificate: refused.
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, newKey, nil)})
	wantReason(t, err, policy.ReasonRenewalNotAuthorized)
	other := testpki.NewOtherCA(t, ca.KeyTypeEC)
	foreign, err := other.Issue(ctx, testpki.CSR(t, key, nil), ca.Template{CommonName: "alice@example.com", Emails: []string{"alice@example.com"},
		KeyUsage: []string{"digitalSignature"}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, newKey, nil), Signer: foreign[0]})
	wantReason(t, err, policy.ReasonRenewalNotAuthorized)

	renewed, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, newKey, nil), Signer: old})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := v.store.IssuedBySerial(ctx, renewed[0].SerialNumber.String())
	if err != nil {
		t.Fatal(err)
	}
	if rec.User != "alice@example.com" || rec.Device != "dev-1" || rec.RenewedFrom != old.SerialNumber.String() {
		t.Errorf("renewal record %+v", rec)
	}
	if ev := v.audit.last(policy.ActionRenew); ev.Result != "ok" || !strings.Contains(ev.Detail, old.SerialNumber.String()) {
		t.Errorf("the renewal's audit event does not name what it superseded: %+v", ev)
	}
	// The predecessor is superseded: revoked, on the CRL with that reason,
	// and a replay of the same renewal (or any renewal with it) is refused.
	if rev, _ := v.ca.IsRevoked(old.SerialNumber.String()); !rev {
		t.Fatal("the renewed certificate is still valid")
	}
	crl := testpki.CurrentCRL(t, v.ca)
	if e := crlEntry(crl, old); e == nil || e.ReasonCode != ca.ReasonSuperseded {
		t.Errorf("CRL entry of the predecessor: %+v", e)
	}
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, newKey, nil), Signer: old})
	wantReason(t, err, policy.ReasonRenewalNotAuthorized)
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, key, nil), Signer: old})
	wantReason(t, err, policy.ReasonRenewalNotAuthorized)
	// The successor renews in turn.
	if _, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, key, nil), Signer: renewed[0]}); err != nil {
		t.Fatalf("renewal of the successor: %v", err)
	}
	// A revoked certificate cannot renew.
	third, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, key, nil), Challenge: v.challenge("alice@example.com", "dev-1")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.e.RevokeCertificate(ctx, third[0].SerialNumber.String(), ca.ReasonKeyCompromise, ""); err != nil {
		t.Fatal(err)
	}
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, newKey, nil), Signer: third[0]})
	wantReason(t, err, policy.ReasonRenewalNotAuthorized)
}

// A renewal is judged by today's rules: a user whose domain is no longer
// allowed cannot renew.
func TestRenewalRechecksPolicy(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	chain, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), Challenge: v.challenge("alice@example.com", "dev-1")})
	if err != nil {
		t.Fatal(err)
	}
	domains, _ := policy.NewDomains([]string{"other.example"})
	later, err := policy.New(v.ca, v.store, policy.Config{Domains: domains})
	if err != nil {
		t.Fatal(err)
	}
	_, err = later.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 1), nil), Signer: chain[0]})
	wantReason(t, err, policy.ReasonRenewalNotAuthorized)
	if rev, _ := v.ca.IsRevoked(chain[0].SerialNumber.String()); rev {
		t.Error("a refused renewal revoked its predecessor")
	}
}

func TestRevokeDeviceAndList(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	var serials []string
	for i := 0; i < 3; i++ {
		chain, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, i), nil), Challenge: v.challenge("alice@example.com", "dev-1")})
		if err != nil {
			t.Fatal(err)
		}
		serials = append(serials, chain[0].SerialNumber.String())
	}
	if _, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), Challenge: v.challenge("alice@example.com", "dev-2")}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.e.RevokeCertificate(ctx, serials[0], ca.ReasonKeyCompromise, ""); err != nil {
		t.Fatal(err)
	}
	got, err := v.e.RevokeDevice(ctx, "alice@example.com", "dev-1", ca.ReasonCessationOfOperation, "lost phone")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Errorf("RevokeDevice revoked %v, want the 2 still valid", got)
	}
	list, err := v.e.ListCertificates(ctx, policy.Filter{User: "ALICE@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	revoked := 0
	for _, c := range list {
		if c.Revoked {
			revoked++
			if c.Device != "dev-1" {
				t.Errorf("revoked a certificate of %s", c.Device)
			}
		}
	}
	if len(list) != 4 || revoked != 3 {
		t.Errorf("list: %d certificates, %d revoked; want 4 and 3", len(list), revoked)
	}
	_, err = v.e.RevokeCertificate(ctx, serials[1], 0, "")
	wantReason(t, err, policy.ReasonAlreadyRevoked)
	_, err = v.e.RevokeCertificate(ctx, "999", 0, "")
	wantReason(t, err, policy.ReasonUnknownCertificate)
	_, err = v.e.RevokeCertificate(ctx, "zz", 0, "")
	wantReason(t, err, policy.ReasonBadSerial)
	_, err = v.e.ListCertificates(ctx, policy.Filter{})
	if _, ok := policy.IsReject(err); !ok {
		t.Errorf("empty filter: %v", err)
	}
}

func TestStaticChallenge(t *testing.T) {
	ctx := context.Background()
	key := testpki.RSAKey(t, 2048, 0)
	const static = "lab-secret-0123456789"
	off := newEnv(t, nil)
	_, err := off.e.Enroll(ctx, policy.Request{Kind: policy.Initial, Challenge: static,
		CSR: testpki.CSR(t, key, &x509.CertificateRequest{EmailAddresses: []string{"a@example.com"}})})
	wantReason(t, err, policy.ReasonChallengeUnknown)

	on := newEnv(t, func(c *policy.Config) { c.StaticChallenge = static })
	chain, err := on.e.Enroll(ctx, policy.Request{Kind: policy.Initial, Challenge: static,
		CSR: testpki.CSR(t, key, &x509.CertificateRequest{EmailAddresses: []string{"A@example.com"}})})
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].EmailAddresses[0] != "a@example.com" {
		t.Errorf("static enrolment names %q", chain[0].EmailAddresses)
	}
	// Each static enrolment is its own anonymous device, and renews on it.
	second, err := on.e.Enroll(ctx, policy.Request{Kind: policy.Initial, Challenge: static,
		CSR: testpki.CSR(t, key, &x509.CertificateRequest{EmailAddresses: []string{"a@example.com"}})})
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := on.store.IssuedBySerial(ctx, chain[0].SerialNumber.String())
	r2, _ := on.store.IssuedBySerial(ctx, second[0].SerialNumber.String())
	if r1.Device == r2.Device || !strings.HasPrefix(r1.Device, policy.StaticDevice+"/") {
		t.Errorf("static devices %q and %q", r1.Device, r2.Device)
	}
	renewed, err := on.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, key, nil), Signer: chain[0]})
	if err != nil {
		t.Fatalf("renewal of a static enrolment: %v", err)
	}
	if r3, _ := on.store.IssuedBySerial(ctx, renewed[0].SerialNumber.String()); r3.Device != r1.Device {
		t.Errorf("renewal moved from %q to %q", r1.Device, r3.Device)
	}
	_, err = on.e.RegisterDevice(ctx, "a@example.com", r1.Device, nil)
	wantReason(t, err, policy.ReasonBadDevice)
	_, err = on.e.Enroll(ctx, policy.Request{Kind: policy.Initial, Challenge: static,
		CSR: testpki.CSR(t, key, &x509.CertificateRequest{EmailAddresses: []string{"a@evil.com"}})})
	wantReason(t, err, policy.ReasonDomainNotAllowed)
}

func TestParseSerial(t *testing.T) {
	for in, want := range map[string]string{"255": "255", "0xff": "255", "0XFF": "255", "00:ff": "255", " 10 ": "10"} {
		got, err := policy.ParseSerial(in)
		if err != nil || got != want {
			t.Errorf("ParseSerial(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "0", "0xzz", "abc"} {
		if _, err := policy.ParseSerial(in); err == nil {
			t.Errorf("ParseSerial(%q) accepted", in)
		}
	}
}

func TestPurgeChallenges(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	v.register("a@example.com", "d")
	c, err := v.e.CreateChallenge(ctx, "a@example.com", "d", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	keep := v.challenge("b@example.com", "d")
	n, err := v.store.PurgeChallenges(time.Now().Add(2 * time.Minute))
	if err != nil || n != 1 {
		t.Fatalf("purged %d, %v; want 1", n, err)
	}
	csr := testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil)
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: c.Secret})
	wantReason(t, err, policy.ReasonChallengeUnknown)
	if _, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: keep}); err != nil {
		t.Errorf("unexpired challenge purged: %v", err)
	}
}

// failingDB fails every Update while fail is set.
type failingDB struct {
	database.DB
	mu   sync.Mutex
	fail bool
}

func (f *failingDB) Update(tx *database.Tx) error {
	f.mu.Lock()
	fail := f.fail
	f.mu.Unlock()
	if fail {
		return errors.New("disk full")
	}
	return f.DB.Update(tx)
}

// An enrolment whose final write fails stores nothing: the challenge stays
// usable, the CA does not know the certificate that was signed, the device
// gets an error (not a refusal), and a retry then succeeds once.
func TestFailedCommitLosesNothing(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	fdb := &failingDB{DB: c.DB.DB}
	store, err := nosqlstore.New(fdb)
	if err != nil {
		t.Fatal(err)
	}
	audit := &recordingAuditor{}
	e, err := policy.New(c, store, policy.Config{}, policy.WithAuditor(audit))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := e.RegisterDevice(ctx, "alice@example.com", "dev-1", nil); err != nil {
		t.Fatal(err)
	}
	ch, err := e.CreateChallenge(ctx, "alice@example.com", "dev-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	req := policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), Challenge: ch.Secret}
	fdb.mu.Lock()
	fdb.fail = true
	fdb.mu.Unlock()
	if _, err := e.Enroll(ctx, req); err == nil {
		t.Fatal("enrolment succeeded without its write")
	} else if _, ok := policy.IsReject(err); ok {
		t.Fatalf("a storage failure reported as a refusal: %v", err)
	}
	if certs, _ := c.DB.List([]byte("x509_certs")); len(certs) != 0 {
		t.Fatalf("CA database holds %d certificates after a failed commit", len(certs))
	}
	if list, _ := e.ListCertificates(ctx, policy.Filter{User: "alice@example.com", Device: "dev-1"}); len(list) != 0 {
		t.Fatalf("inventory holds %d records after a failed commit", len(list))
	}
	if n := len(audit.events); n == 0 || audit.events[n-1].Result != "error" {
		t.Errorf("no error audit event for the failed commit: %+v", audit.events)
	}
	fdb.mu.Lock()
	fdb.fail = false
	fdb.mu.Unlock()
	chain, err := e.Enroll(ctx, req)
	if err != nil {
		t.Fatalf("retry with the same challenge: %v", err)
	}
	if _, err := c.Certificate(chain[0].SerialNumber.String()); err != nil {
		t.Fatalf("issued certificate not stored: %v", err)
	}
	_, err = e.Enroll(ctx, req)
	wantReason(t, err, policy.ReasonChallengeUsed)
}

// A device that lost the answer and sends the same request again (same
// transaction, same key) gets the same certificate; anything else that
// reuses the challenge is refused as before.
func TestRepeatedRequestGetsTheSameCertificate(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	key := testpki.RSAKey(t, 2048, 0)
	secret := v.challenge("alice@example.com", "dev-1")
	req := policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, key, nil), Challenge: secret, TransactionID: "tid-1"}
	first, err := v.e.Enroll(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// The same key in a new CSR, same transaction: the same certificate.
	again := req
	again.CSR = testpki.CSR(t, key, nil)
	second, err := v.e.Enroll(ctx, again)
	if err != nil || !second[0].Equal(first[0]) || len(second) != len(first) {
		t.Fatalf("repeat: %v", err)
	}
	if ev := v.audit.last(policy.ActionEnroll); ev.Result != "repeat" {
		t.Errorf("the repeat is not audited as such: %+v", ev)
	}
	otherKey := req
	otherKey.CSR = testpki.CSR(t, testpki.RSAKey(t, 2048, 1), nil)
	_, err = v.e.Enroll(ctx, otherKey)
	wantReason(t, err, policy.ReasonChallengeUsed)
	otherTID := req
	otherTID.TransactionID = "tid-2"
	_, err = v.e.Enroll(ctx, otherTID)
	wantReason(t, err, policy.ReasonChallengeUsed)
	noTID := req
	noTID.TransactionID = ""
	_, err = v.e.Enroll(ctx, noTID)
	wantReason(t, err, policy.ReasonChallengeUsed)
	// Once revoked, the repeat gets nothing.
	if _, err := v.e.RevokeCertificate(ctx, first[0].SerialNumber.String(), 0, ""); err != nil {
		t.Fatal(err)
	}
	_, err = v.e.Enroll(ctx, req)
	wantReason(t, err, policy.ReasonChallengeUsed)
	if list, _ := v.e.ListCertificates(ctx, policy.Filter{User: "alice@example.com"}); len(list) != 1 {
		t.Errorf("a repeat issued another certificate: %d", len(list))
	}
}

// A challenge handed out before a revocation enrols nothing after it,
// whatever the reason, and whether or not the device had a certificate.
func TestRevocationEndsTheLiveChallenge(t *testing.T) {
	for _, reason := range []int{ca.ReasonUnspecified, ca.ReasonKeyCompromise, ca.ReasonAffiliationChanged, ca.ReasonCessationOfOperation} {
		v := newEnv(t, nil)
		ctx := context.Background()
		v.enrol("ceo@example.com", "iphone", 0)
		live := v.challenge("ceo@example.com", "iphone")
		if _, err := v.e.RevokeDevice(ctx, "ceo@example.com", "iphone", reason, "stolen"); err != nil {
			t.Fatal(err)
		}
		_, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 1), nil), Challenge: live})
		wantReason(t, err, policy.ReasonChallengeUnknown)

		// Nothing left to revoke: the challenge dies all the same.
		live = v.challenge("ceo@example.com", "iphone")
		if got, err := v.e.RevokeDevice(ctx, "ceo@example.com", "iphone", reason, "again"); err != nil || len(got) != 0 {
			t.Fatalf("second revocation: %v %v", got, err)
		}
		_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 1), nil), Challenge: live})
		wantReason(t, err, policy.ReasonChallengeUnknown)

		// Revoking one certificate by serial ends the device's challenge too.
		crt := v.enrol("ceo@example.com", "iphone", 2)
		live = v.challenge("ceo@example.com", "iphone")
		if _, err := v.e.RevokeCertificate(ctx, crt.SerialNumber.String(), reason, ""); err != nil {
			t.Fatal(err)
		}
		_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 3), nil), Challenge: live})
		wantReason(t, err, policy.ReasonChallengeUnknown)
	}
}
