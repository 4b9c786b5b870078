package policy_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/smallstep/pkcs7"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

// bundleEnv is an Enrollment with a device identity CA, a real Vault with
// one escrowed certificate for a@example.com, and a registered device "d"
// whose identity key is devKey.
type bundleEnv struct {
	enroll  *policy.Services
	store   *nosqlstore.Store
	pool    *x509.CertPool
	ca      *testpki.CA
	keys    *escrow.Store
	vault   *testvault.Vault
	mdm     *testpki.Issuer
	escrow  *x509.Certificate
	devCert *x509.Certificate
	audit   *recordingAuditor
	bundles *policy.Bundles
}

// newBundleEnv is newBundleEnvOn the package's shared Vault.
func newBundleEnv(t testing.TB) *bundleEnv {
	t.Helper()
	return newBundleEnvOn(t, testvault.Mount(t))
}

// newBundleEnvOn sets up a registered device with an identity and one
// escrowed key for a@example.com in v.
func newBundleEnvOn(t testing.TB, v *testvault.Vault) *bundleEnv {
	t.Helper()
	c := testpki.NewCA(t, ca.KeyTypeEC)
	store, _ := nosqlstore.New(c.DB.DB)
	mdm := testpki.NewIssuer(t)
	pool := x509.NewCertPool()
	pool.AddCert(mdm.Cert)
	audit := &recordingAuditor{}
	enroll, err := policy.New(c, store, policy.Config{DeviceIdentityCAs: pool}, policy.WithAuditor(audit))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	devCert := mdm.UserCert(t, testpki.RSAKey(t, 2048, 3), testpki.CertOptions{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CommonName: "d"})
	if _, err := enroll.RegisterDevice(ctx, "a@example.com", "d", devCert.Raw); err != nil {
		t.Fatal(err)
	}
	ks, _ := v.Store(t)
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	if _, _, err := ks.Put(ctx, "a@example.com", policy.EscrowedKey{Escrowed: policy.CertificateMetadata(cert), CertDER: cert.Raw, KeyPKCS8: kder}); err != nil {
		t.Fatal(err)
	}
	return &bundleEnv{enroll: enroll, store: store, pool: pool, ca: c, keys: ks, vault: v, mdm: mdm, escrow: cert, devCert: devCert, audit: audit,
		bundles: policy.NewBundles(enroll, ks, c, "http://x/scep", audit, policy.AllowBreakGlass())}
}

// The default delivery: every password only as an envelope to the
// registered identity, opened by the device's key alone.
func TestBundleEncryptsToTheRegisteredIdentity(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	b, err := v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if err != nil || len(b.Encryption) != 1 || len(b.Chain) != 2 {
		t.Fatalf("bundle: %+v %v", b, err)
	}
	e := b.Encryption[0]
	if e.Password != "" || len(e.EnvelopedPassword) == 0 {
		t.Fatal("a CMS delivery carries a plain password")
	}
	p7, err := pkcs7.Parse(e.EnvelopedPassword)
	if err != nil {
		t.Fatal(err)
	}
	pw, err := p7.Decrypt(v.devCert, testpki.RSAKey(t, 2048, 3))
	if err != nil {
		t.Fatalf("the device key does not open the envelope: %v", err)
	}
	if k, c, err := pkcs12.Decode(e.PFX, string(pw)); err != nil || !c.Equal(v.escrow) || k == nil {
		t.Fatalf("the PFX does not open with the enveloped password: %v", err)
	}
	if !e.Current {
		t.Error("the only valid certificate is not current")
	}
	ev := v.audit.last(policy.ActionKeyRelease)
	if ev.Result != "ok" || ev.Recipient == "" || len(ev.SHA256) != 1 || ev.SHA256[0] != e.Metadata.SHA256 {
		t.Errorf("release audit %+v", ev)
	}
	// The subscriber is told that the keys are escrowed, and the audit
	// records that they were.
	if b.EscrowNotice != policy.KeyEscrowNotice || !strings.Contains(b.EscrowNotice, "escrow") || !ev.EscrowNotice {
		t.Errorf("escrow notice %q, audited %v", b.EscrowNotice, ev.EscrowNotice)
	}
	d, _ := v.enroll.Device(ctx, "a@example.com", "d")
	if ev.Recipient != d.IdentitySHA256() {
		t.Errorf("audit names recipient %s, the registered identity is %s", ev.Recipient, d.IdentitySHA256())
	}
	b2, _ := v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if string(b2.Encryption[0].EnvelopedPassword) == string(e.EnvelopedPassword) || string(b2.Signing.EnvelopedChallenge) == string(b.Signing.EnvelopedChallenge) {
		t.Error("two deliveries share an envelope or a challenge")
	}
}

// As an attacker with the profile credential would try it: no keys for a
// device nobody registered, a retired one, one without an identity, and
// never plain PKCS#12 without an explicit break-glass.
func TestBundleRefusals(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	cms := func(user, device string) error {
		_, err := v.bundles.Bundle(ctx, policy.BundleRequest{User: user, Device: device, Delivery: policy.DeliverCMS})
		return err
	}
	wantReason(t, cms("a@example.com", "attacker-device"), policy.ReasonUnknownDevice)
	if _, err := v.enroll.RegisterDevice(ctx, "a@example.com", "no-identity", nil); err != nil {
		t.Fatal(err)
	}
	wantReason(t, cms("a@example.com", "no-identity"), policy.ReasonNoIdentity)
	_, err := v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverPKCS12})
	wantReason(t, err, policy.ReasonBreakGlass)
	if _, err := v.enroll.RetireDevice(ctx, "a@example.com", "d", "lost"); err != nil {
		t.Fatal(err)
	}
	wantReason(t, cms("a@example.com", "d"), policy.ReasonDeviceRetired)
	for _, ev := range v.audit.events {
		if (ev.Action == policy.ActionKeyRelease || ev.Action == policy.ActionKeyBreakGlass) && ev.Result == "ok" {
			t.Errorf("a refused bundle was audited as a release: %+v", ev)
		}
	}
}

// An administrator's break-glass release is plain and audited as such.
func TestBundleBreakGlass(t *testing.T) {
	v := newBundleEnv(t)
	b, err := v.bundles.Bundle(context.Background(), policy.BundleRequest{User: "a@example.com", Device: "d",
		Delivery: policy.DeliverPKCS12, BreakGlass: true, BreakGlassReason: "mailbox export, ticket 42"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := pkcs12.Decode(b.Encryption[0].PFX, b.Encryption[0].Password); err != nil {
		t.Fatalf("break-glass PFX: %v", err)
	}
	ev := v.audit.last(policy.ActionKeyBreakGlass)
	if ev.Result != "ok" || ev.Recipient != "" || len(ev.SHA256) != 1 {
		t.Errorf("break-glass audit %+v", ev)
	}
}

// Without AllowBreakGlass (the default) a plain release is refused, says
// how to allow it, releases nothing and is audited as refused; the
// devices' CMS delivery is unchanged.
func TestBreakGlassOffByDefault(t *testing.T) {
	v := newBundleEnv(t)
	off := policy.NewBundles(v.enroll, v.keys, v.ca, "http://x/scep", v.audit)
	ctx := context.Background()
	b, err := off.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d",
		Delivery: policy.DeliverPKCS12, BreakGlass: true, BreakGlassReason: "mailbox export, ticket 42"})
	wantReason(t, err, policy.ReasonBreakGlassOff)
	if b != nil || !strings.Contains(err.Error(), "--allow-break-glass") {
		t.Fatalf("refusal %v (bundle %v)", err, b)
	}
	if ev := v.audit.last(policy.ActionKeyBreakGlass); ev.Result != "refused" || ev.User != "a@example.com" {
		t.Errorf("the refused break-glass is not audited as refused: %+v", ev)
	}
	if _, err := off.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS}); err != nil {
		t.Errorf("CMS delivery with break-glass off: %v", err)
	}
	// Allowed, but key recovery is configured: refused all the same.
	configured := false
	gated := policy.NewBundles(v.enroll, v.keys, v.ca, "http://x/scep", v.audit, policy.AllowBreakGlass(),
		policy.RefuseBreakGlassWith(func(context.Context) (bool, error) { return configured, nil }))
	glass := policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverPKCS12, BreakGlass: true, BreakGlassReason: "x"}
	if _, err := gated.Bundle(ctx, glass); err != nil {
		t.Fatalf("break-glass allowed, no recovery: %v", err)
	}
	configured = true
	_, err = gated.Bundle(ctx, glass)
	wantReason(t, err, policy.ReasonBreakGlassOff)
	if !strings.Contains(err.Error(), "recovery request") {
		t.Errorf("the refusal does not point at key recovery: %v", err)
	}
}

// No audit, no release: when the release cannot be recorded the caller
// gets an error and no key.
func TestBundleFailsClosedWithoutAudit(t *testing.T) {
	v := newBundleEnv(t)
	v.audit.failRecord(errors.New("disk full"))
	b, err := v.bundles.Bundle(context.Background(), policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if err == nil || b != nil {
		t.Fatalf("released without an audit record: %+v %v", b, err)
	}
}

func TestBundleWithoutEscrowAndWithVaultDown(t *testing.T) {
	v := newBundleEnvOn(t, testvault.Start(t)) // a Vault of its own to stop
	ctx := context.Background()
	// No escrow configured: a signing reference and an empty list.
	b, err := policy.NewBundles(v.enroll, nil, v.ca, "http://x/scep", nil).Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if err != nil || len(b.Signing.EnvelopedChallenge) == 0 || len(b.Encryption) != 0 || len(b.Chain) != 2 || b.EscrowNotice != "" {
		t.Fatalf("bundle without escrow (and so without an escrow notice): %+v %v", b, err)
	}
	// Vault down: the error says unavailable and nothing is released.
	v.vault.Stop()
	_, err = v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if !errors.Is(err, policy.ErrUnavailable) {
		t.Fatalf("Vault down: %v", err)
	}
	if last := v.audit.last(policy.ActionKeyRelease); last.Result != "error" {
		t.Errorf("last release event %+v", last)
	}
}

// The signing reference's key parameters come from the configuration, the
// one place they are set: a minimum of 3072 bits asks the device for 3072.
func TestSigningReferenceFollowsTheKeyRules(t *testing.T) {
	v := newBundleEnv(t)
	e, err := policy.New(v.ca, v.store, policy.Config{DeviceIdentityCAs: v.pool, MinRSABits: 3072})
	if err != nil {
		t.Fatal(err)
	}
	b, err := policy.NewBundles(e, nil, v.ca, "http://x/scep", nil).Bundle(context.Background(), policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if err != nil || b.Signing.KeySize != 3072 || b.Signing.KeyType != "RSA" || b.Signing.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("signing reference %+v %v", b.Signing, err)
	}
}
