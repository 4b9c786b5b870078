package policy_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/testing/testhsm"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
)

type escrowEnv struct {
	e     *policy.Escrow
	store *escrow.Store
	is    *testpki.Issuer
	audit *recordingAuditor
	conn  *rsa.PrivateKey
}

func newEscrowEnv(t *testing.T) *escrowEnv {
	t.Helper()
	v := testvault.Mount(t)
	store, _ := v.Store(t)
	domains, _ := policy.NewDomains([]string{"example.com"})
	conn := testpki.RSAKey(t, 3072, 0)
	audit := &recordingAuditor{}
	e := policy.NewEscrow(store, conn, domains, policy.WithEscrowAuditor(audit),
		policy.WithAliases(map[string]string{"a.old@example.com": "alice@example.com"}))
	return &escrowEnv{e: e, store: store, is: testpki.NewIssuer(t), audit: audit, conn: conn}
}

func (v *escrowEnv) list(t *testing.T, user string) []policy.Escrowed {
	t.Helper()
	l, err := v.e.List(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestImportEncodings(t *testing.T) {
	v := newEscrowEnv(t)
	ctx := context.Background()
	key := testpki.RSAKey(t, 2048, 0)
	cases := map[string]func() []byte{
		"openssl -legacy (RC2-40/3DES, SHA-1 MAC)": func() []byte {
			return v.is.OpenSSLPFX(t, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}}), "pw-1", true)
		},
		"openssl default (AES-256/PBES2, SHA-256 MAC)": func() []byte {
			return v.is.OpenSSLPFX(t, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"Alice@Example.com"}}), "pw-1", false)
		},
		"go-pkcs12 LegacyRC2": func() []byte {
			return v.is.PFX(t, pkcs12.LegacyRC2, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}}), "pw-1")
		},
		"go-pkcs12 LegacyDES": func() []byte {
			return v.is.PFX(t, pkcs12.LegacyDES, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}}), "pw-1")
		},
		"go-pkcs12 Modern2023": func() []byte {
			return v.is.PFX(t, pkcs12.Modern2023, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}}), "pw-1")
		},
		"EC key with keyAgreement": func() []byte {
			ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return v.is.PFX(t, nil, ek, v.is.UserCert(t, ek, testpki.CertOptions{Emails: []string{"alice@example.com"}}), "pw-1")
		},
		"alias address": func() []byte {
			return v.is.PFX(t, nil, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a.old@example.com"}}), "pw-1")
		},
	}
	n := 0
	for name, mk := range cases {
		res, err := v.e.Import(ctx, policy.ImportRequest{User: "ALICE@example.com", PFX: mk(), Password: "pw-1"})
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		n++
		if res.Duplicate || res.Expired || res.Metadata.Purpose != policy.PurposeEncryption {
			t.Errorf("%s: %+v", name, res)
		}
	}
	if got := len(v.list(t, "alice@example.com")); got != n {
		t.Errorf("%d escrowed, want %d", got, n)
	}
}

func TestImportRefusalsLeaveVaultUnchanged(t *testing.T) {
	v := newEscrowEnv(t)
	ctx := context.Background()
	key := testpki.RSAKey(t, 2048, 0)
	good := v.is.PFX(t, nil, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}}), "pw")
	other := testpki.RSAKey(t, 2048, 1)
	certOnly, err := pkcs12.Modern.EncodeTrustStore([]*x509.Certificate{v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})}, "pw")
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 2048)
	rand.Read(garbage)
	// A PFX whose key belongs to another certificate.
	mismatch, err := pkcs12.Modern.Encode(other, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}}), nil, "pw")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		req  policy.ImportRequest
		want policy.Reason
	}{
		{"wrong password", policy.ImportRequest{PFX: good, Password: "nope"}, policy.ReasonWrongPassword},
		{"truncated", policy.ImportRequest{PFX: good[:len(good)/2], Password: "pw"}, policy.ReasonBadPFX},
		{"random bytes", policy.ImportRequest{PFX: garbage, Password: "pw"}, policy.ReasonBadPFX},
		{"empty", policy.ImportRequest{Password: "pw"}, policy.ReasonBadPFX},
		{"certificate only", policy.ImportRequest{PFX: certOnly, Password: "pw"}, policy.ReasonNoKey},
		{"another user's certificate", policy.ImportRequest{Password: "pw",
			PFX: v.is.PFX(t, nil, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"bob@example.com"}}), "pw")}, policy.ReasonUserMismatch},
		{"CA certificate", policy.ImportRequest{Password: "pw",
			PFX: v.is.PFX(t, nil, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}, IsCA: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageKeyEncipherment}), "pw")}, policy.ReasonCACertificate},
		{"signing-only key usage", policy.ImportRequest{Password: "pw",
			PFX: v.is.PFX(t, nil, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}, KeyUsage: x509.KeyUsageDigitalSignature}), "pw")}, policy.ReasonCannotEncrypt},
		{"TLS-only EKU", policy.ImportRequest{Password: "pw",
			PFX: v.is.PFX(t, nil, key, v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}, EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), "pw")}, policy.ReasonCannotEncrypt},
		{"key of another certificate", policy.ImportRequest{PFX: mismatch, Password: "pw"}, policy.ReasonKeyMismatch},
		{"bad purpose", policy.ImportRequest{PFX: good, Password: "pw", Purpose: "tls"}, policy.ReasonBadPurpose},
		{"bad encrypted password", policy.ImportRequest{PFX: good, EncryptedPassword: []byte("xx")}, policy.ReasonWrongPassword},
	}
	for _, c := range cases {
		c.req.User = "alice@example.com"
		_, err := v.e.Import(ctx, c.req)
		re, ok := policy.IsReject(err)
		if !ok || re.Reason != c.want {
			t.Errorf("%s: %v, want %s", c.name, err, c.want)
			continue
		}
		if strings.Contains(re.Detail, "pw") && c.name != "bad purpose" {
			t.Errorf("%s: the refusal mentions the password: %q", c.name, re.Detail)
		}
	}
	_, err = v.e.Import(ctx, policy.ImportRequest{User: "alice@evil.com", PFX: good, Password: "pw"})
	if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonDomainNotAllowed {
		t.Errorf("outside domains: %v", err)
	}
	if l := v.list(t, "alice@example.com"); len(l) != 0 {
		t.Fatalf("refused imports left %d entries in Vault", len(l))
	}
	b, _ := json.Marshal(v.audit.events)
	if strings.Contains(string(b), `"pw"`) {
		t.Error("audit events contain the password")
	}
}

func TestImportEncryptedPasswordExpiredAndDuplicate(t *testing.T) {
	v := newEscrowEnv(t)
	ctx := context.Background()
	key := testpki.RSAKey(t, 2048, 0)
	old := v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"},
		NotBefore: time.Now().Add(-3 * 365 * 24 * time.Hour), NotAfter: time.Now().Add(-2 * 365 * 24 * time.Hour)})
	pfx := v.is.PFX(t, pkcs12.LegacyDES, key, old, "s3cret pässword")
	for _, h := range []struct {
		name string
		hash func() crypto.Hash
	}{{"SHA256", func() crypto.Hash { return crypto.SHA256 }}, {"SHA384", func() crypto.Hash { return crypto.SHA384 }}, {"SHA512", func() crypto.Hash { return crypto.SHA512 }}} {
		var hf = sha256.New()
		switch h.hash() {
		case crypto.SHA384:
			hf = sha512.New384()
		case crypto.SHA512:
			hf = sha512.New()
		}
		ct, err := rsa.EncryptOAEP(hf, rand.Reader, v.e.ConnectorKey(), []byte("s3cret pässword"), nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := v.e.Import(ctx, policy.ImportRequest{User: "alice@example.com", PFX: pfx, EncryptedPassword: ct, PasswordHash: h.name})
		if err != nil {
			t.Fatalf("%s: %v", h.name, err)
		}
		if !res.Expired {
			t.Error("expired certificate not flagged")
		}
		if h.name == "SHA256" && res.Duplicate || h.name != "SHA256" && !res.Duplicate {
			t.Errorf("%s: duplicate = %v", h.name, res.Duplicate)
		}
	}
	l := v.list(t, "alice@example.com")
	if len(l) != 1 || l[0].SHA256 != policy.CertificateMetadata(old).SHA256 || l[0].Serial == "" || len(l[0].Emails) != 1 {
		t.Fatalf("escrow holds %+v", l)
	}
}

func TestDeletePurgeAudit(t *testing.T) {
	v := newEscrowEnv(t)
	ctx := policy.WithActor(context.Background(), policy.Actor{Role: "admin", Name: "ops"})
	key := testpki.RSAKey(t, 2048, 0)
	c1 := v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	c2 := v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	for _, c := range []*x509.Certificate{c1, c2} {
		if _, err := v.e.Import(ctx, policy.ImportRequest{User: "alice@example.com", PFX: v.is.PFX(t, nil, key, c, "pw"), Password: "pw"}); err != nil {
			t.Fatal(err)
		}
	}
	m1 := policy.CertificateMetadata(c1)
	if _, err := v.e.Delete(ctx, "alice@example.com", "zz"); !isReason(err, policy.ReasonBadThumbprint) {
		t.Errorf("bad thumbprint: %v", err)
	}
	if _, err := v.e.Delete(ctx, "alice@example.com", strings.ToUpper(m1.SHA1)); err != nil {
		t.Fatal(err)
	}
	if _, err := v.e.Delete(ctx, "alice@example.com", m1.SHA256); !isReason(err, policy.ReasonNotEscrowed) {
		t.Errorf("delete twice: %v", err)
	}
	purged, err := v.e.Purge(ctx, "alice@example.com")
	if err != nil || len(purged) != 1 {
		t.Fatalf("purge: %v %v", purged, err)
	}
	actions := map[string]int{}
	for _, ev := range v.audit.events {
		if ev.Result == "ok" {
			actions[ev.Action]++
			if ev.Actor.Name != "ops" || len(ev.SHA256) == 0 {
				t.Errorf("audit event lacks who or which: %+v", ev)
			}
		}
	}
	if actions[policy.ActionEscrowImport] != 2 || actions[policy.ActionEscrowDelete] != 1 || actions[policy.ActionEscrowPurge] != 1 {
		t.Errorf("audit actions %v", actions)
	}
}

func isReason(err error, r policy.Reason) bool {
	re, ok := policy.IsReject(err)
	return ok && re.Reason == r
}

// A record in Intune's import format lands the same escrow entry as the
// PFX import of the same file (and each is a duplicate of the other);
// signing, VPN and Wi-Fi records, a thumbprint that is not the PFX's, a
// password the connector key cannot decrypt and a malformed record are
// refused with the reason, and nothing is written.
func TestImportIntuneRecord(t *testing.T) {
	v := newEscrowEnv(t)
	ctx := policy.WithActor(context.Background(), policy.Actor{Role: "admin", Name: "migration"})
	key := testpki.RSAKey(t, 2048, 0)
	cert := v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	pfx := v.is.PFX(t, pkcs12.LegacyDES, key, cert, "Intune-pässword")
	conn := v.e.ConnectorKey()
	record := func(purpose, padding string, edit func(map[string]any)) []byte {
		r := testpki.IntuneRecord(t, conn, cert, pfx, "Intune-pässword", "Alice@example.com", purpose, padding)
		if edit != nil {
			edit(r)
		}
		return testpki.IntuneJSON(t, r)
	}
	other := v.is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	for name, tc := range map[string]struct {
		rec    []byte
		reason policy.Reason
		want   string
	}{
		"smimeSigning": {record("SmimeSigning", "OaepSha512", nil), policy.ReasonBadPurpose, "smimeSigning"},
		"vpn":          {record("VPN", "OaepSha512", nil), policy.ReasonBadPurpose, "vpn"},
		"thumbprint of another certificate": {record("SmimeEncryption", "OaepSha512", func(r map[string]any) {
			r["thumbprint"] = policy.CertificateMetadata(other).SHA1
		}), policy.ReasonBadThumbprint, "thumbprint"},
		"padding named wrongly": {record("SmimeEncryption", "OaepSha256", func(r map[string]any) { r["paddingScheme"] = "OaepSha384" }), policy.ReasonWrongPassword, "oaepSha384"},
		"two records":           {testpki.IntuneJSON(t, testpki.IntuneRecord(t, conn, cert, pfx, "x", "a@example.com", "Unassigned", "OaepSha512"), testpki.IntuneRecord(t, conn, cert, pfx, "x", "a@example.com", "Unassigned", "OaepSha512")), policy.ReasonBadIntuneRecord, "one userPFXCertificate record per call"},
		"no user":               {record("SmimeEncryption", "OaepSha512", func(r map[string]any) { delete(r, "userPrincipalName") }), policy.ReasonBadIntuneRecord, "userPrincipalName"},
	} {
		_, err := v.e.ImportIntune(ctx, tc.rec)
		if !isReason(err, tc.reason) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %s naming %q", name, err, tc.reason, tc.want)
		}
	}
	if l := v.list(t, "alice@example.com"); len(l) != 0 {
		t.Fatalf("refused records wrote %+v", l)
	}

	res, err := v.e.ImportIntune(ctx, record("SmimeEncryption", "None", nil))
	if err != nil || res.Duplicate {
		t.Fatalf("import: %+v %v", res, err)
	}
	again, err := v.e.Import(ctx, policy.ImportRequest{User: "alice@example.com", PFX: pfx, Password: "Intune-pässword"})
	if err != nil || !again.Duplicate || again.Metadata.SHA256 != res.Metadata.SHA256 || again.Metadata.Purpose != policy.PurposeEncryption {
		t.Fatalf("the PFX import of the same file: %+v %v, want a duplicate of %+v", again, err, res)
	}
	if r, err := v.e.ImportIntune(ctx, record("Unassigned", "OaepSha1", nil)); err != nil || !r.Duplicate {
		t.Errorf("re-run with an unassigned, OAEP-SHA-1 record: %+v %v", r, err)
	}
	if _, err := v.e.ImportIntune(ctx, record("SmimeEncryption", "Pkcs1", nil)); !isReason(err, policy.ReasonBadIntuneRecord) {
		t.Errorf("PKCS#1 v1.5 record: %v, want bad-intune-record", err)
	}
	l := v.list(t, "alice@example.com")
	if len(l) != 1 || l[0].ImportedBy != "migration" {
		t.Fatalf("escrow holds %+v", l)
	}
	var audited bool
	for _, ev := range v.audit.events {
		audited = audited || ev.Action == policy.ActionEscrowImport && ev.Result == "ok" && ev.Actor.Name == "migration"
	}
	if !audited {
		t.Errorf("no audit event for the Intune import: %+v", v.audit.events)
	}
}

// With the connector key in a token that decrypts RSA-OAEP with SHA-1 only
// (SoftHSM2 2.6), the escrow lists only that hash, refuses a password
// encrypted with another by naming it, and imports one encrypted with it.
func TestImportWithConnectorKeyInToken(t *testing.T) {
	tok := testhsm.New(t)
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	keys, err := keystore.Open(tok.URI, t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer keys.Close()
	conn, err := pfxconnector.LoadOrCreateKey(keys)
	if err != nil {
		t.Fatal(err)
	}
	v := testvault.Mount(t)
	store, _ := v.Store(t)
	domains, _ := policy.NewDomains([]string{"example.com"})
	e := policy.NewEscrow(store, conn, domains)
	if got := e.ConnectorHashes(); !slices.Equal(got, []string{"SHA1"}) {
		t.Fatalf("ConnectorHashes = %v, want SoftHSM2 2.6's [SHA1]", got)
	}
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	pfx := is.PFX(t, pkcs12.Modern2023, key, is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}}), "pw")
	ct256, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, e.ConnectorKey(), []byte("pw"), nil)
	_, err = e.Import(context.Background(), policy.ImportRequest{User: "alice@example.com", PFX: pfx, EncryptedPassword: ct256, PasswordHash: "SHA256"})
	if !isReason(err, policy.ReasonWrongPassword) || !strings.Contains(err.Error(), "it can with: SHA1") {
		t.Fatalf("SHA-256 to a SHA-1-only token: %v", err)
	}
	ct1, _ := rsa.EncryptOAEP(sha1.New(), rand.Reader, e.ConnectorKey(), []byte("pw"), nil)
	if _, err := e.Import(context.Background(), policy.ImportRequest{User: "alice@example.com", PFX: pfx, EncryptedPassword: ct1, PasswordHash: "SHA1"}); err != nil {
		t.Fatalf("SHA-1: %v", err)
	}
}

// TestMain shares one Vault among the package's tests (per-test mounts).
func TestMain(m *testing.M) { testvault.Main(m) }
