package policy_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/testpki"
	"github.com/smimeca/smimeca/internal/testvault"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

func TestBundleWithoutEscrowAndWithVaultDown(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	store, _ := nosqlstore.New(c.DB.DB)
	enroll, err := policy.NewEnrollment(c, store, store, policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// No escrow configured: a signing reference and an empty list.
	b, err := policy.NewBundles(enroll, nil, c, "http://x/scep", nil).Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverPKCS12})
	if err != nil || b.Signing.Challenge == "" || len(b.Encryption) != 0 || len(b.Chain) != 2 {
		t.Fatalf("bundle without escrow: %+v %v", b, err)
	}

	// With Vault: keys re-wrapped, each opens with its fresh password.
	v := testvault.Start(t)
	ks, _ := v.Store(t)
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	if _, _, err := ks.Put(ctx, "a@example.com", escrow.Record{Metadata: policy.CertificateMetadata(cert), CertDER: cert.Raw, KeyPKCS8: kder}); err != nil {
		t.Fatal(err)
	}
	audit := &recordingAuditor{}
	bundles := policy.NewBundles(enroll, ks, c, "http://x/scep", audit)
	b, err = bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverPKCS12})
	if err != nil || len(b.Encryption) != 1 {
		t.Fatalf("bundle: %v", err)
	}
	k, c2, err := pkcs12.Decode(b.Encryption[0].PFX, b.Encryption[0].Password)
	if err != nil || !c2.Equal(cert) || k == nil {
		t.Fatalf("re-wrapped PFX does not open: %v", err)
	}
	if !b.Encryption[0].Current {
		t.Error("the only valid certificate is not current")
	}
	b2, _ := bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverPKCS12})
	if b2.Encryption[0].Password == b.Encryption[0].Password || b2.Signing.Challenge == b.Signing.Challenge {
		t.Error("two deliveries share a password or a challenge")
	}

	// Vault down: the error says unavailable and no challenge was created.
	before, _ := enroll.ListCertificates(ctx, policy.Filter{Device: "d"})
	v.Stop()
	_, err = bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverPKCS12})
	if !errors.Is(err, escrow.ErrUnavailable) {
		t.Fatalf("Vault down: %v", err)
	}
	last := audit.events[len(audit.events)-1]
	if last.Action != policy.ActionKeyRelease || last.Result != "error" {
		t.Errorf("last audit event %+v", last)
	}
	after, _ := enroll.ListCertificates(ctx, policy.Filter{Device: "d"})
	if len(after) != len(before) {
		t.Error("a failed bundle changed the inventory")
	}
}
