package policy_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

func newCredentials(t *testing.T) (*policy.Credentials, *testpki.Issuer, *recordingAuditor) {
	t.Helper()
	c := testpki.NewCA(t, "EC")
	store, err := nosqlstore.NewCredentialStore(c.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	audit := &recordingAuditor{}
	return policy.NewCredentials(store, nil, map[string]string{"profile": "urn:smimeca:role:profile"}, audit), testpki.NewIssuer(t), audit
}

func clientCert(t *testing.T, is *testpki.Issuer, k int) *x509.Certificate {
	return is.UserCert(t, testpki.RSAKey(t, 2048, k), testpki.CertOptions{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CommonName: "profile"})
}

// As the attacker kept using it: the server renews the bootstrap
// profile credential's file, and the predecessor is revoked with it; a
// revocation by name ends every live serial.
func TestCredentialsEnd(t *testing.T) {
	creds, is, audit := newCredentials(t)
	ctx := context.Background()
	old, renewed := clientCert(t, is, 0), clientCert(t, is, 1)
	if err := creds.Bootstrap(ctx, "profile", "profile", old); err != nil {
		t.Fatal(err)
	}
	if _, err := creds.Check(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := creds.Bootstrap(ctx, "profile", "profile", renewed); err != nil {
		t.Fatal(err)
	}
	if _, err := creds.Check(ctx, old); !errors.Is(err, policy.ErrRevokedCredential) {
		t.Fatalf("the renewed bootstrap credential's predecessor: %v", err)
	}
	if ev := audit.last(policy.ActionCredentialRevoke); ev.Result != "ok" || ev.Serials[0] != policy.Serial(old) || ev.Actor.Name != "smimeca serve" {
		t.Errorf("predecessor's revocation audited as %+v", ev)
	}
	if _, err := creds.Check(ctx, renewed); err != nil {
		t.Fatal(err)
	}
	revoked, err := creds.Revoke(ctx, "profile")
	if err != nil || len(revoked) != 1 || revoked[0].Serial != policy.Serial(renewed) {
		t.Fatalf("revoke by name: %+v %v", revoked, err)
	}
	if _, err := creds.Check(ctx, renewed); !errors.Is(err, policy.ErrRevokedCredential) {
		t.Fatalf("revoked by name, still valid: %v", err)
	}
	_, err = creds.Revoke(ctx, "profile")
	wantReason(t, err, policy.ReasonAlreadyRevoked)
	_, err = creds.Revoke(ctx, "nobody")
	wantReason(t, err, policy.ReasonUnknownCredential)
}

func TestRevokeCredentialBySerial(t *testing.T) {
	creds, is, _ := newCredentials(t)
	ctx := context.Background()
	crt := clientCert(t, is, 2)
	if err := creds.Bootstrap(ctx, "profile", "profile", crt); err != nil {
		t.Fatal(err)
	}
	if _, err := creds.Check(ctx, crt); err != nil { // cached as valid now
		t.Fatal(err)
	}
	if _, err := creds.RevokeSerial(ctx, "0x"+policy.Serial(crt)); err != nil {
		t.Fatal(err)
	}
	// The cache of this node is dropped at once.
	if _, err := creds.Check(ctx, crt); !errors.Is(err, policy.ErrRevokedCredential) {
		t.Fatalf("revoked by serial, still valid: %v", err)
	}
	_, err := creds.RevokeSerial(ctx, policy.Serial(crt))
	wantReason(t, err, policy.ReasonAlreadyRevoked)
	_, err = creds.RevokeSerial(ctx, "abcdef")
	wantReason(t, err, policy.ReasonUnknownCredential)
}

// A revocation on another node (another Credentials on the same database)
// takes effect here within CredentialCheckTTL.
func TestRevocationOnAnotherNode(t *testing.T) {
	c := testpki.NewCA(t, "EC")
	is := testpki.NewIssuer(t)
	ctx := context.Background()
	now := time.Now()
	store1, _ := nosqlstore.NewCredentialStore(c.DB.DB)
	store2, _ := nosqlstore.NewCredentialStore(c.DB.DB)
	roles := map[string]string{"profile": "urn:smimeca:role:profile"}
	node1 := policy.NewCredentials(store1, nil, roles, nil, policy.WithCredentialClock(func() time.Time { return now }))
	node2 := policy.NewCredentials(store2, nil, roles, nil)
	crt := clientCert(t, is, 3)
	if err := node1.Bootstrap(ctx, "profile", "profile", crt); err != nil {
		t.Fatal(err)
	}
	if _, err := node1.Check(ctx, crt); err != nil {
		t.Fatal(err)
	}
	if _, err := node2.Revoke(ctx, "profile"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(policy.CredentialCheckTTL)
	if _, err := node1.Check(ctx, crt); !errors.Is(err, policy.ErrRevokedCredential) {
		t.Fatalf("revoked on another node, still valid here after %s: %v", policy.CredentialCheckTTL, err)
	}
}
