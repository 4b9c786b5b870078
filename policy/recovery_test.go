package policy_test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

// recoveryEnv is a bundleEnv (one escrowed key for a@example.com in a real
// Vault) with recovery rules on its database, and the officer's
// encryption certificate and key.
type recoveryEnv struct {
	*bundleEnv
	rec        *policy.Recoveries
	officer    *x509.Certificate
	officerKey *rsa.PrivateKey
	clock      time.Time
}

func newRecoveryEnv(t *testing.T) *recoveryEnv {
	t.Helper()
	v := newBundleEnv(t)
	rs, err := nosqlstore.NewRecoveryStore(v.ca.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	key := testpki.RSAKey(t, 2048, 7)
	officer := v.mdm.UserCert(t, key, testpki.CertOptions{CommonName: "officer", Emails: []string{"officer@example.com"}})
	e := &recoveryEnv{bundleEnv: v, officer: officer, officerKey: key, clock: time.Now()}
	e.rec = policy.NewRecoveries(rs, v.keys, v.audit, policy.RecoveryConfig{Now: func() time.Time { return e.clock }})
	return e
}

func as(role, name string) context.Context {
	return policy.WithActor(context.Background(), policy.Actor{Role: role, Name: name, Credential: "0A" + name})
}

// Two distinct approvers release; one does not. The officer gets one CMS
// envelope to the certificate named in the request, which opens into the
// escrowed key and certificate; a second download is refused. Every step
// is audited with the credentials' names.
func TestRecoveryQuorumReleasesOnce(t *testing.T) {
	e := newRecoveryEnv(t)
	officer := as("recovery-officer", "olga")
	req, err := e.rec.Request(officer, "A@example.com", nil, "mailbox of a leaver, ticket 7", e.officer.Raw)
	if err != nil {
		t.Fatal(err)
	}
	if req.State != policy.RecoveryPending || req.User != "a@example.com" || req.Quorum != 2 || !req.Deadline.Equal(req.CreatedAt.Add(72*time.Hour)) {
		t.Fatalf("request %+v", req)
	}
	if _, _, err := e.rec.Download(officer, req.ID); err == nil {
		t.Fatal("a pending request released")
	}
	if req, err = e.rec.Vote(as("recovery-approver", "ann"), req.ID, true, "ok"); err != nil || req.State != policy.RecoveryPending {
		t.Fatalf("first approval: %v %+v", err, req)
	}
	if _, _, err := e.rec.Download(officer, req.ID); err == nil {
		t.Fatal("one approval released")
	}
	if req, err = e.rec.Vote(as("recovery-approver", "bert"), req.ID, true, "confirmed with HR"); err != nil || req.State != policy.RecoveryApproved {
		t.Fatalf("second approval: %v %+v", err, req)
	}
	_, _, err = e.rec.Download(as("recovery-officer", "otto"), req.ID)
	wantReason(t, err, policy.ReasonNotRequester)
	env, got, err := e.rec.Download(officer, req.ID)
	if err != nil || got.State != policy.RecoveryReleased {
		t.Fatalf("download: %v %+v", err, got)
	}
	p7, err := pkcs7.Parse(env)
	if err != nil {
		t.Fatal(err)
	}
	content, err := p7.Decrypt(e.officer, e.officerKey)
	if err != nil {
		t.Fatalf("the officer's key does not open the release: %v", err)
	}
	block, rest := pem.Decode(content)
	certBlock, _ := pem.Decode(rest)
	want, _ := x509.MarshalPKCS8PrivateKey(testpki.RSAKey(t, 2048, 0))
	if block == nil || block.Type != "PRIVATE KEY" || !bytes.Equal(block.Bytes, want) || certBlock == nil || !bytes.Equal(certBlock.Bytes, e.escrow.Raw) {
		t.Fatal("the release is not the escrowed key and certificate")
	}
	_, _, err = e.rec.Download(officer, req.ID)
	wantReason(t, err, policy.ReasonRecoveryClosed)
	ok := map[string][]policy.Event{}
	for _, ev := range e.audit.events {
		if ev.Result == "ok" {
			ok[ev.Action] = append(ok[ev.Action], ev)
		}
	}
	for a, n := range map[string]int{policy.ActionRecoveryRequest: 1, policy.ActionRecoveryApprove: 2, policy.ActionKeyRecovery: 1} {
		if len(ok[a]) != n {
			t.Fatalf("%d %s events, want %d", len(ok[a]), a, n)
		}
		for _, ev := range ok[a] {
			if ev.User != "a@example.com" || ev.Actor.Name == "" || ev.Actor.Credential == "" || ev.Recipient != req.RecipientSHA256() {
				t.Errorf("%s audit: %+v", a, ev)
			}
		}
	}
	if ev := ok[policy.ActionKeyRecovery][0]; ev.Actor.Name != "olga" || len(ev.SHA256) != 1 {
		t.Errorf("release audit %+v", ev)
	}
}

// The refusals: self-approval, a double vote, a rejection (which ends the
// request), an expired request, a recipient that is no encryption
// certificate, a user without escrow. None releases anything.
func TestRecoveryRefusals(t *testing.T) {
	e := newRecoveryEnv(t)
	officer := as("recovery-officer", "olga")
	req, err := e.rec.Request(officer, "a@example.com", nil, "legal hold", e.officer.Raw)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.rec.Vote(as("recovery-approver", "olga"), req.ID, true, "")
	wantReason(t, err, policy.ReasonSelfApproval)
	if _, err := e.rec.Vote(as("recovery-approver", "ann"), req.ID, true, ""); err != nil {
		t.Fatal(err)
	}
	_, err = e.rec.Vote(as("recovery-approver", "ann"), req.ID, true, "again")
	wantReason(t, err, policy.ReasonDoubleVote)
	if req, err = e.rec.Vote(as("recovery-approver", "carl"), req.ID, false, "no ticket"); err != nil || req.State != policy.RecoveryRejected {
		t.Fatalf("rejection: %v %+v", err, req)
	}
	_, err = e.rec.Vote(as("recovery-approver", "bert"), req.ID, true, "")
	wantReason(t, err, policy.ReasonRecoveryClosed)
	_, _, err = e.rec.Download(officer, req.ID)
	wantReason(t, err, policy.ReasonRecoveryClosed)

	// Approved, then past the deadline: expired, audited once, no release.
	late, err := e.rec.Request(officer, "a@example.com", nil, "legal hold", e.officer.Raw)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.Vote(as("recovery-approver", "ann"), late.ID, true, "")
	e.rec.Vote(as("recovery-approver", "bert"), late.ID, true, "")
	e.clock = e.clock.Add(73 * time.Hour)
	_, _, err = e.rec.Download(officer, late.ID)
	wantReason(t, err, policy.ReasonRecoveryClosed)
	if got, _ := e.rec.Get(officer, late.ID); got.State != policy.RecoveryExpired {
		t.Errorf("state after the deadline: %s", got.State)
	}
	if ev := e.audit.last(policy.ActionRecoveryExpire); ev.Result != "ok" || ev.User != "a@example.com" {
		t.Errorf("expiry audit %+v", ev)
	}

	// What cannot be asked for at all.
	ca := e.ca.Intermediate()
	ecKey := testpki.ECKey(t)
	ecCert := e.mdm.UserCert(t, ecKey, testpki.CertOptions{CommonName: "ec"})
	small := e.mdm.UserCert(t, testpki.RSAKey(t, 1024, 0), testpki.CertOptions{CommonName: "small"})
	tlsOnly := e.mdm.UserCert(t, testpki.RSAKey(t, 2048, 8), testpki.CertOptions{CommonName: "tls", EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	for name, der := range map[string][]byte{"CA certificate": ca.Raw, "ECDSA": ecCert.Raw, "garbage": {0x30, 0x00}, "RSA-1024": small.Raw, "clientAuth only": tlsOnly.Raw} {
		_, err := e.rec.Request(officer, "a@example.com", nil, "x", der)
		var re *policy.RejectError
		if !errors.As(err, &re) || re.Reason != policy.ReasonBadRecipient {
			t.Errorf("recipient %s: %v", name, err)
		}
	}
	_, err = e.rec.Request(officer, "nobody@example.com", nil, "x", e.officer.Raw)
	wantReason(t, err, policy.ReasonNotEscrowed)
	_, err = e.rec.Request(officer, "a@example.com", []string{"00"}, "x", e.officer.Raw)
	wantReason(t, err, policy.ReasonBadThumbprint)
	_, err = e.rec.Request(officer, "a@example.com", nil, "", e.officer.Raw)
	wantReason(t, err, policy.ReasonBadText)
	for _, ev := range e.audit.events {
		if ev.Action == policy.ActionKeyRecovery && ev.Result == "ok" {
			t.Errorf("a refused recovery was audited as a release: %+v", ev)
		}
	}
}

// Two downloads racing (as from two nodes sharing the database): exactly
// one gets the release.
func TestRecoveryDownloadRace(t *testing.T) {
	e := newRecoveryEnv(t)
	officer := as("recovery-officer", "olga")
	req, err := e.rec.Request(officer, "a@example.com", nil, "legal hold", e.officer.Raw)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.Vote(as("recovery-approver", "ann"), req.ID, true, "")
	e.rec.Vote(as("recovery-approver", "bert"), req.ID, true, "")
	var wg sync.WaitGroup
	var mu sync.Mutex
	released, refused := 0, 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := e.rec.Download(officer, req.ID)
			mu.Lock()
			defer mu.Unlock()
			var re *policy.RejectError
			switch {
			case err == nil:
				released++
			case errors.As(err, &re) && re.Reason == policy.ReasonRecoveryClosed:
				refused++
			default:
				t.Errorf("download: %v", err)
			}
		}()
	}
	wg.Wait()
	if released != 1 || refused != 7 {
		t.Errorf("%d releases and %d refusals of 8 racing downloads; want 1 and 7", released, refused)
	}
}
