package policy_test

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

// identityFor issues an MDM identity naming device for the key of index k.
func (v *bundleEnv) identityFor(t *testing.T, device string, k int) *x509.Certificate {
	t.Helper()
	return v.mdm.UserCert(t, testpki.RSAKey(t, 2048, k), testpki.CertOptions{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CommonName: device})
}

// As the attacker did it with a registrar credential: registering
// an identity it holds on the CEO's active device, then one ordinary bundle
// by the profile service. No key reaches the attacker's identity.
func TestRegistrarCannotSteerKeys(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	attacker := v.identityFor(t, "d", 7)
	_, err := v.enroll.RegisterDevice(ctx, "a@example.com", "d", attacker.Raw)
	wantReason(t, err, policy.ReasonIdentityChange)
	b, err := v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if err != nil {
		t.Fatal(err)
	}
	if !b.Recipient.Equal(v.devCert) {
		t.Fatal("the bundle went to another identity than the device's")
	}
	p7, _ := pkcs7.Parse(b.Encryption[0].EnvelopedPassword)
	if _, err := p7.Decrypt(attacker, testpki.RSAKey(t, 2048, 7)); err == nil {
		t.Fatal("the attacker's key opens the envelope")
	}

	// A rekey holds every release until an administrator confirms, or the
	// cooling-off passes.
	if _, err := v.enroll.RekeyDevice(ctx, "a@example.com", "d", attacker.Raw); err != nil {
		t.Fatal(err)
	}
	ev := v.audit.last(policy.ActionDeviceRekey)
	if ev.Result != "ok" || len(ev.SHA256) != 2 {
		t.Errorf("rekey audit %+v", ev)
	}
	_, err = v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	wantReason(t, err, policy.ReasonIdentityOnHold)
	_, err = v.bundles.Sealed(ctx, policy.BundleRequest{User: "a@example.com", Device: "d"}, func(*policy.Bundle, func([]byte) ([]byte, error)) ([]byte, error) {
		t.Fatal("sealed a profile for a held identity")
		return nil, nil
	})
	wantReason(t, err, policy.ReasonIdentityOnHold)
	if _, err := v.enroll.ConfirmIdentity(ctx, "a@example.com", "d"); err != nil {
		t.Fatal(err)
	}
	if b, err := v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS}); err != nil || !b.Recipient.Equal(attacker) {
		t.Fatalf("after the confirmation: %v", err)
	}
	if _, err := v.enroll.ConfirmIdentity(ctx, "a@example.com", "d"); err == nil {
		t.Error("confirmed an identity that was not on hold")
	}
}

func TestRekeyHoldEndsAfterTheCoolingOff(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	now := time.Now()
	clocked, err := policy.New(v.ca, v.store, policy.Config{DeviceIdentityCAs: v.pool, RekeyHold: time.Hour}, policy.WithClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	bundles := policy.NewBundles(clocked, v.keys, v.ca, "http://x/scep", nil)
	if _, err := clocked.RekeyDevice(ctx, "a@example.com", "d", v.identityFor(t, "d", 8).Raw); err != nil {
		t.Fatal(err)
	}
	_, err = bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	wantReason(t, err, policy.ReasonIdentityOnHold)
	now = now.Add(time.Hour + time.Second)
	if _, err := bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS}); err != nil {
		t.Fatalf("after the hold: %v", err)
	}
}

// An identity (its certificate, or another certificate for its key)
// belongs to one active device; retiring the device frees it.
func TestIdentityBelongsToOneDevice(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	// The same certificate (CN "d") on another user's device "d".
	_, err := v.enroll.RegisterDevice(ctx, "ceo@example.com", "d", v.devCert.Raw)
	wantReason(t, err, policy.ReasonIdentityInUse)
	if re, _ := policy.IsReject(err); re == nil || !strings.Contains(re.Detail, `device "d" of a@example.com`) {
		t.Errorf("the refusal does not name the holder: %v", err)
	}
	// Another certificate for the same key, naming another device.
	sameKey := v.identityFor(t, "ceo-phone", 3)
	_, err = v.enroll.RegisterDevice(ctx, "ceo@example.com", "ceo-phone", sameKey.Raw)
	wantReason(t, err, policy.ReasonIdentityInUse)
	// Nor by a rekey of another device.
	if _, err := v.enroll.RegisterDevice(ctx, "ceo@example.com", "ceo-phone", nil); err != nil {
		t.Fatal(err)
	}
	_, err = v.enroll.RekeyDevice(ctx, "ceo@example.com", "ceo-phone", sameKey.Raw)
	wantReason(t, err, policy.ReasonIdentityInUse)
	// Retired, the holder lets go.
	if _, err := v.enroll.RetireDevice(ctx, "a@example.com", "d", "sold"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.enroll.RekeyDevice(ctx, "ceo@example.com", "ceo-phone", sameKey.Raw); err != nil {
		t.Fatalf("after the holder's retirement: %v", err)
	}
	// A second store on the same database (another node) sees the claim.
	other, err := nosqlstore.New(v.ca.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	e2, _ := policy.New(v.ca, other, policy.Config{DeviceIdentityCAs: v.pool})
	_, err = e2.RegisterDevice(ctx, "cfo@example.com", "ceo-phone", sameKey.Raw)
	wantReason(t, err, policy.ReasonIdentityInUse)
}

// Every release re-checks the identity against the device identity CAs
// configured now: a CA dropped from --device-identity-ca releases nothing.
func TestReleaseRechecksTheIdentityCA(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	otherCA := testpki.NewIssuer(t)
	pool := x509.NewCertPool()
	pool.AddCert(otherCA.Cert)
	e2, _ := policy.New(v.ca, v.store, policy.Config{DeviceIdentityCAs: pool})
	_, err := policy.NewBundles(e2, v.keys, v.ca, "http://x/scep", nil).Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	wantReason(t, err, policy.ReasonNoIdentity)
}

// The challenge of a CMS bundle is usable only by the device: the caller
// gets it enveloped to the registered identity, and no bundle is given
// for a device without one.
func TestBundleChallengeOnlyForTheDevice(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	b, err := v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	if err != nil {
		t.Fatal(err)
	}
	if b.Signing.Challenge != "" || len(b.Signing.EnvelopedChallenge) == 0 {
		t.Fatalf("challenge in the clear %q, enveloped %d bytes", b.Signing.Challenge, len(b.Signing.EnvelopedChallenge))
	}
	// What the caller holds enrols nothing.
	csr := testpki.CSR(t, testpki.RSAKey(t, 2048, 9), nil)
	if _, err := v.enroll.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: string(b.Signing.EnvelopedChallenge)}); err == nil {
		t.Fatal("the envelope itself enrolled")
	}
	p7, err := pkcs7.Parse(b.Signing.EnvelopedChallenge)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := p7.Decrypt(v.devCert, testpki.RSAKey(t, 2048, 3))
	if err != nil {
		t.Fatalf("the device cannot open its challenge: %v", err)
	}
	chain, err := v.enroll.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: string(secret)})
	if err != nil || chain[0].EmailAddresses[0] != "a@example.com" {
		t.Fatalf("the device's enrolment: %v", err)
	}
	// No identity, no signing reference, even with nothing in escrow.
	if _, err := v.enroll.RegisterDevice(ctx, "a@example.com", "plain", nil); err != nil {
		t.Fatal(err)
	}
	_, err = policy.NewBundles(v.enroll, nil, v.ca, "http://x/scep", nil).Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "plain", Delivery: policy.DeliverCMS})
	wantReason(t, err, policy.ReasonNoIdentity)
	// An administrator's break-glass release carries it in the clear.
	bg, err := v.bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverPKCS12, BreakGlass: true, BreakGlassReason: "lab"})
	if err != nil || bg.Signing.Challenge == "" || len(bg.Signing.EnvelopedChallenge) != 0 {
		t.Fatalf("break-glass: %v", err)
	}
}

type revokedSerials map[string]bool

func (r revokedSerials) Revoked(c *x509.Certificate) (bool, error) {
	if r == nil {
		return false, errors.New("the CRL expired")
	}
	return r[c.SerialNumber.String()], nil
}

// Where the MDM CA's CRL is configured, a revoked identity is neither
// registered nor released to, and an unreadable CRL releases nothing.
func TestRevokedIdentityGetsNothing(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	revoked := revokedSerials{}
	e, _ := policy.New(v.ca, v.store, policy.Config{DeviceIdentityCAs: v.pool, IdentityRevocations: revoked})
	bundles := policy.NewBundles(e, v.keys, v.ca, "http://x/scep", nil)
	if _, err := bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS}); err != nil {
		t.Fatal(err)
	}
	revoked[v.devCert.SerialNumber.String()] = true
	_, err := bundles.Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	wantReason(t, err, policy.ReasonNoIdentity)
	other := v.identityFor(t, "e", 6)
	revoked[other.SerialNumber.String()] = true
	_, err = e.RegisterDevice(ctx, "a@example.com", "e", other.Raw)
	wantReason(t, err, policy.ReasonBadIdentity)
	var unknown revokedSerials
	e2, _ := policy.New(v.ca, v.store, policy.Config{DeviceIdentityCAs: v.pool, IdentityRevocations: unknown})
	_, err = policy.NewBundles(e2, v.keys, v.ca, "http://x/scep", nil).Bundle(ctx, policy.BundleRequest{User: "a@example.com", Device: "d", Delivery: policy.DeliverCMS})
	wantReason(t, err, policy.ReasonNoIdentity)
}

// retiringStore retires the device just before an update of it commits.
type retiringStore struct {
	policy.Store
	retire func()
}

func (r *retiringStore) UpdateDevice(ctx context.Context, d policy.Device) error {
	r.retire()
	return r.Store.UpdateDevice(ctx, d)
}

// A rekey racing a retirement never brings the device back: the rekey is
// refused and the device stays retired, with no claim on its old identity.
func TestRekeyRacingRetirement(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	rs := &retiringStore{Store: v.store}
	e, _ := policy.New(v.ca, rs, policy.Config{DeviceIdentityCAs: v.pool})
	rs.retire = func() {
		if _, err := v.enroll.RetireDevice(ctx, "a@example.com", "d", "stolen"); err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.RekeyDevice(ctx, "a@example.com", "d", v.identityFor(t, "d", 8).Raw)
	wantReason(t, err, policy.ReasonDeviceRetired)
	if d, _ := v.enroll.Device(ctx, "a@example.com", "d"); d.State != policy.DeviceRetired || string(d.Identity) != string(v.devCert.Raw) {
		t.Fatalf("the device after the race: %s", d.State)
	}
}
