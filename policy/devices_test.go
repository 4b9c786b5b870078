package policy_test

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"sync"
	"testing"
	"time"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
)

func crlEntry(crl *x509.RevocationList, c *x509.Certificate) *x509.RevocationListEntry {
	for i, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
			return &crl.RevokedCertificateEntries[i]
		}
	}
	return nil
}

// last returns the newest audit event of the action.
func (r *recordingAuditor) last(action string) policy.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if r.events[i].Action == action {
			return r.events[i]
		}
	}
	return policy.Event{}
}

func (v *env) enrol(user, device string, keyIndex int) *x509.Certificate {
	v.t.Helper()
	chain, err := v.e.Enroll(context.Background(), policy.Request{Kind: policy.Initial,
		CSR: testpki.CSR(v.t, testpki.RSAKey(v.t, 2048, keyIndex), nil), Challenge: v.challenge(user, device)})
	if err != nil {
		v.t.Fatal(err)
	}
	return chain[0]
}

// As an attacker holding the profile or admin credential would try it: no
// challenge for a device nobody registered, nor for a retired one.
func TestChallengesOnlyForRegisteredDevices(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	_, err := v.e.CreateChallenge(ctx, "ceo@example.com", "attacker-phone", 0)
	wantReason(t, err, policy.ReasonUnknownDevice)
	v.register("ceo@example.com", "iphone-1")
	if _, err := v.e.CreateChallenge(ctx, "ceo@example.com", "iphone-1", 0); err != nil {
		t.Fatal(err)
	}
	// Registered for ceo, not for another user with the same device id.
	_, err = v.e.CreateChallenge(ctx, "cfo@example.com", "iphone-1", 0)
	wantReason(t, err, policy.ReasonUnknownDevice)
	if _, err := v.e.RetireDevice(ctx, "ceo@example.com", "iphone-1", "stolen"); err != nil {
		t.Fatal(err)
	}
	_, err = v.e.CreateChallenge(ctx, "ceo@example.com", "iphone-1", 0)
	wantReason(t, err, policy.ReasonDeviceRetired)
	_, err = v.e.RegisterDevice(ctx, "ceo@example.com", policy.StaticDevice, nil)
	wantReason(t, err, policy.ReasonBadDevice)
}

// Retiring a device revokes every certificate it holds, kills its unused
// challenge and ends renewal; another user's device of the same id is not
// touched.
func TestRetireEndsTheLifecycle(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	aliceOld := v.enrol("alice@example.com", "iphone-1", 0)
	aliceCur := v.enrol("alice@example.com", "iphone-1", 1)
	bob := v.enrol("bob@example.com", "iphone-1", 2)
	pending := v.challenge("alice@example.com", "iphone-1")
	if _, err := v.e.RevokeCertificate(ctx, aliceOld.SerialNumber.String(), ca.ReasonKeyCompromise, ""); err != nil {
		t.Fatal(err)
	}
	serials, err := v.e.RetireDevice(ctx, "Alice@Example.com", "iphone-1", "lost")
	if err != nil {
		t.Fatal(err)
	}
	if len(serials) != 1 || serials[0] != aliceCur.SerialNumber.String() {
		t.Errorf("retire revoked %v, want only the still valid %s", serials, aliceCur.SerialNumber)
	}
	crl := testpki.CurrentCRL(t, v.ca)
	if e := crlEntry(crl, aliceCur); e == nil || e.ReasonCode != ca.ReasonCessationOfOperation {
		t.Errorf("CRL entry of the retired device's certificate: %+v", e)
	}
	if e := crlEntry(crl, aliceOld); e == nil || e.ReasonCode != ca.ReasonKeyCompromise {
		t.Errorf("the earlier revocation was overwritten: %+v", e)
	}
	if crlEntry(crl, bob) != nil {
		t.Error("bob's iphone-1 was revoked by alice's retirement")
	}
	if rev, _ := v.ca.IsRevoked(bob.SerialNumber.String()); rev {
		t.Error("bob's certificate is revoked")
	}
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 3), nil), Challenge: pending})
	wantReason(t, err, policy.ReasonChallengeUnknown)
	_, err = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 3), nil), Signer: aliceCur})
	wantReason(t, err, policy.ReasonRenewalNotAuthorized)
	_, err = v.e.RetireDevice(ctx, "alice@example.com", "iphone-1", "again")
	wantReason(t, err, policy.ReasonDeviceRetired)
	d, err := v.e.Device(ctx, "alice@example.com", "iphone-1")
	if err != nil || d.State != policy.DeviceRetired || d.RetireReason != "lost" || d.RetiredAt.IsZero() {
		t.Errorf("retired device: %+v %v", d, err)
	}
	if last := v.audit.last(policy.ActionDeviceRetire); last.Result != "ok" || len(last.Serials) != 1 || last.Serials[0] != serials[0] {
		t.Errorf("audit of the retirement: %+v", last)
	}
	// Registering it again starts a new lifecycle; old certificates stay revoked.
	v.enrol("alice@example.com", "iphone-1", 4)
	if rev, _ := v.ca.IsRevoked(aliceCur.SerialNumber.String()); !rev {
		t.Error("re-registration revived a revoked certificate")
	}
}

// gatedStore holds RecordIssued of a renewal until released, so that a
// retirement can run while the renewal is signed but not yet committed.
type gatedStore struct {
	policy.Store
	reached, release chan struct{}
	once             sync.Once
}

func (g *gatedStore) RecordIssued(ctx context.Context, rec policy.Issued, c policy.Commit) error {
	if c.Supersedes != "" {
		g.once.Do(func() {
			close(g.reached)
			<-g.release
		})
	}
	return g.Store.RecordIssued(ctx, rec, c)
}

// lateStore lets a renewal commit between a retirement's listing of the
// device's certificates and its transaction.
type lateStore struct {
	policy.Store
	before func()
}

func (l *lateStore) RetireDevice(ctx context.Context, d policy.Device, r []policy.Revocation) error {
	l.before()
	return l.Store.RetireDevice(ctx, d, r)
}

// A renewal racing a retirement ends with no valid certificate, whichever
// commits first.
func TestRenewalRacingRetirement(t *testing.T) {
	ctx := context.Background()
	t.Run("renewal commits after the retirement", func(t *testing.T) {
		v := newEnv(t, nil)
		cur := v.enrol("alice@example.com", "d", 0)
		g := &gatedStore{Store: v.store, reached: make(chan struct{}), release: make(chan struct{})}
		e, _ := policy.New(v.ca, g, policy.Config{})
		errc := make(chan error, 1)
		go func() {
			_, err := e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 1), nil), Signer: cur})
			errc <- err
		}()
		<-g.reached
		if _, err := v.e.RetireDevice(ctx, "alice@example.com", "d", "race"); err != nil {
			t.Fatal(err)
		}
		close(g.release)
		wantReason(t, <-errc, policy.ReasonDeviceRetired)
		assertNothingValid(t, v, "alice@example.com", "d", 1)
	})
	t.Run("renewal commits before the retirement's transaction", func(t *testing.T) {
		v := newEnv(t, nil)
		cur := v.enrol("alice@example.com", "d", 0)
		var renewErr error
		l := &lateStore{Store: v.store}
		l.before = func() {
			l.before = func() {}
			_, renewErr = v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 1), nil), Signer: cur})
		}
		e, _ := policy.New(v.ca, l, policy.Config{})
		serials, err := e.RetireDevice(ctx, "alice@example.com", "d", "race")
		if err != nil || renewErr != nil {
			t.Fatalf("retire: %v; renewal: %v", err, renewErr)
		}
		if len(serials) != 2 {
			t.Errorf("retirement reported %v; want the listed and the late certificate", serials)
		}
		assertNothingValid(t, v, "alice@example.com", "d", 2)
	})
}

func assertNothingValid(t *testing.T, v *env, user, device string, want int) {
	t.Helper()
	list, err := v.e.ListCertificates(context.Background(), policy.Filter{User: user, Device: device})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != want {
		t.Errorf("%d certificates issued, want %d", len(list), want)
	}
	for _, c := range list {
		if !c.Revoked {
			t.Errorf("certificate %s of the retired device is still valid", c.Serial)
		}
	}
}

// Identity certificates: RSA 2048–4096 with e=65537, valid now, issued by a
// configured device identity CA; a new one replaces the old (audited).
func TestRegisterIdentity(t *testing.T) {
	mdm := testpki.NewIssuer(t)
	pool := x509.NewCertPool()
	pool.AddCert(mdm.Cert)
	v := newEnv(t, func(c *policy.Config) { c.DeviceIdentityCAs = pool })
	ctx := context.Background()
	key := testpki.RSAKey(t, 2048, 0)
	ident := func(o testpki.CertOptions) []byte {
		o.EKU = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		if o.CommonName == "" {
			o.CommonName = "iphone-1"
		}
		return mdm.UserCert(t, key, o).Raw
	}
	good := ident(testpki.CertOptions{})
	d, err := v.e.RegisterDevice(ctx, "alice@example.com", "iphone-1", good)
	if err != nil || d.State != policy.DeviceActive || string(d.Identity) != string(good) {
		t.Fatalf("register: %+v %v", d, err)
	}
	if ev := v.audit.events[len(v.audit.events)-1]; ev.Action != policy.ActionDeviceRegister || len(ev.SHA256) != 1 || ev.SHA256[0] != d.IdentitySHA256() {
		t.Errorf("audit %+v", ev)
	}
	other := testpki.NewIssuer(t)
	ecKey := testpki.ECKey(t)
	named := testpki.CertOptions{CommonName: "iphone-2"}
	for name, der := range map[string][]byte{
		"foreign CA":       other.UserCert(t, key, named).Raw,
		"EC key":           mdm.UserCert(t, ecKey, named).Raw,
		"expired":          ident(testpki.CertOptions{CommonName: "iphone-2", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}),
		"1024 bit":         mdm.UserCert(t, testpki.RSAKey(t, 1024, 0), named).Raw,
		"exponent 3":       mdm.UserCert(t, exponent3{key}, named).Raw,
		"no keyEncip.":     ident(testpki.CertOptions{CommonName: "iphone-2", KeyUsage: x509.KeyUsageDigitalSignature}),
		"another device's": ident(testpki.CertOptions{CommonName: "iphone-3"}),
		"garbage":          []byte("not a certificate"),
	} {
		_, err := v.e.RegisterDevice(ctx, "alice@example.com", "iphone-2", der)
		if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonBadIdentity {
			t.Errorf("%s: %v, want bad-identity-certificate", name, err)
		}
	}
	if _, err := v.e.Device(ctx, "alice@example.com", "iphone-2"); err == nil {
		t.Error("a refused registration stored the device")
	}
	// MDM re-enrolment: a new identity replaces the old by a rekey,
	// history kept; registering it over the old one is refused.
	cert := v.enrol("alice@example.com", "iphone-1", 1)
	renewedIdent := mdm.UserCert(t, testpki.RSAKey(t, 2048, 2), testpki.CertOptions{CommonName: "iphone-1"}).Raw
	_, err = v.e.RegisterDevice(ctx, "alice@example.com", "iphone-1", renewedIdent)
	wantReason(t, err, policy.ReasonIdentityChange)
	d2, err := v.e.RekeyDevice(ctx, "alice@example.com", "iphone-1", renewedIdent)
	if err != nil || string(d2.Identity) != string(renewedIdent) || !d2.CreatedAt.Equal(d.CreatedAt) {
		t.Fatalf("rekey: %+v %v", d2, err)
	}
	if ev := v.audit.events[len(v.audit.events)-1]; ev.Action != policy.ActionDeviceRekey || len(ev.SHA256) != 2 || ev.SHA256[0] != d.IdentitySHA256() {
		t.Errorf("identity replacement audited as %+v", ev)
	}
	if rev, _ := v.ca.IsRevoked(cert.SerialNumber.String()); rev {
		t.Error("rekey revoked the device's certificate")
	}
	// Without a configured identity CA, no identity can be registered.
	plain := newEnv(t, nil)
	_, err = plain.e.RegisterDevice(ctx, "alice@example.com", "iphone-1", good)
	wantReason(t, err, policy.ReasonBadIdentity)
}

// exponent3 presents key's modulus with public exponent 3: only the public
// key goes into the certificate the test issuer signs.
type exponent3 struct{ *rsa.PrivateKey }

func (k exponent3) Public() crypto.PublicKey { return &rsa.PublicKey{N: k.N, E: 3} }
