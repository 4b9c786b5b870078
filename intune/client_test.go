package intune_test

import (
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/scep/x509util"

	"github.com/smimeca/smimeca/internal/testing/intunemock"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/intune"
)

func newClient(t *testing.T, m *intunemock.Mock, mut func(*intune.Config)) *intune.Client {
	t.Helper()
	cfg := intune.Config{
		Tenant: intunemock.Tenant, ClientID: intunemock.ClientID, ClientSecret: intunemock.Secret,
		AuthorityURL: m.URL + "/", GraphURL: m.URL, ResourceURL: m.URL + "/manage/",
		CallerInfo: "smimeca-test/1", HTTPClient: m.Client(), ValidateTimeout: 500 * time.Millisecond,
	}
	if mut != nil {
		mut(&cfg)
	}
	c, err := intune.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// csrWith returns a DER CSR carrying challenge as its challengePassword.
func csrWith(t *testing.T, challenge string) []byte {
	t.Helper()
	der, err := x509util.CreateCertificateRequest(rand.Reader, &x509util.CertificateRequest{
		CertificateRequest: x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice@example.com"}, EmailAddresses: []string{"alice@example.com"}},
		ChallengePassword:  challenge,
	}, testpki.RSAKey(t, 2048, 0))
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// Validation: Success allows, any other code is a *Refusal with that code,
// and the tokens asked for are Graph's (discovery) and Intune's.
func TestValidateRequest(t *testing.T) {
	m := intunemock.Start(t)
	c := newClient(t, m, nil)
	ctx := context.Background()
	if err := c.ValidateRequest(ctx, "tx-1", csrWith(t, m.Challenge(intune.CodeSuccess))); err != nil {
		t.Fatalf("a Success challenge: %v", err)
	}
	for _, code := range []string{"ChallengeExpired", "SubjectAltNameMismatch", "ChallengeDecryptionError"} {
		err := c.ValidateRequest(ctx, "tx-2", csrWith(t, m.Challenge(code)))
		var r *intune.Refusal
		if !errors.As(err, &r) || r.Code != code {
			t.Errorf("%s: got %v", code, err)
		}
	}
	if err := c.ValidateRequest(ctx, "tx-3", csrWith(t, "made-up")); err == nil {
		t.Error("an unknown challenge was accepted")
	}
	if s := m.Scopes(); s["graph"] != 1 || s["intune"] != 1 {
		t.Errorf("tokens %v: want one of each, cached", s)
	}
}

// Intune not answering, or answering 500, is unavailable after one retry;
// never a Success.
func TestValidateRequestFailures(t *testing.T) {
	m := intunemock.Start(t)
	c := newClient(t, m, nil)
	ctx := context.Background()
	ch := m.Challenge(intune.CodeSuccess)
	m.Set(func(m *intunemock.Mock) { m.ValidateStatus = 500 })
	before := m.Validations()
	if err := c.ValidateRequest(ctx, "tx", csrWith(t, ch)); !errors.Is(err, intune.ErrUnavailable) {
		t.Fatalf("500: %v", err)
	}
	if n := m.Validations() - before; n != 2 {
		t.Errorf("500 was tried %d times, want 2 (one retry)", n)
	}
	m.Set(func(m *intunemock.Mock) { m.ValidateStatus, m.ValidateDelay = 0, 2*time.Second })
	start := time.Now()
	if err := c.ValidateRequest(ctx, "tx", csrWith(t, ch)); !errors.Is(err, intune.ErrUnavailable) {
		t.Fatalf("timeout: %v", err)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("two timed-out attempts took %s", d)
	}
}

// A token refused and a service missing from discovery are unavailable,
// with a message that says what to check.
func TestTokenAndDiscoveryFailures(t *testing.T) {
	m := intunemock.Start(t)
	m.Set(func(m *intunemock.Mock) { m.TokenStatus = 401 })
	c := newClient(t, m, nil)
	err := c.ValidateRequest(context.Background(), "tx", csrWith(t, m.Challenge(intune.CodeSuccess)))
	if !errors.Is(err, intune.ErrUnavailable) || !strings.Contains(err.Error(), "credential") {
		t.Fatalf("token 401: %v", err)
	}
	m2 := intunemock.Start(t)
	m2.Set(func(m *intunemock.Mock) { m.Missing = []string{intune.ServiceValidation} })
	c2 := newClient(t, m2, nil)
	err = c2.ValidateRequest(context.Background(), "tx", csrWith(t, m2.Challenge(intune.CodeSuccess)))
	if !errors.Is(err, intune.ErrUnavailable) || !strings.Contains(err.Error(), intune.ServiceValidation) {
		t.Fatalf("discovery without the service: %v", err)
	}
	// Once the service is listed again, the next call finds it.
	m2.Set(func(m *intunemock.Mock) { m.Missing = nil })
	if err := c2.ValidateRequest(context.Background(), "tx", csrWith(t, m2.Challenge(intune.CodeSuccess))); err != nil {
		t.Fatalf("after rediscovery: %v", err)
	}
}

// Notifications carry what the library documents; a success notification
// answered with 500 or another code is an error.
func TestNotifications(t *testing.T) {
	m := intunemock.Start(t)
	c := newClient(t, m, nil)
	ctx := context.Background()
	is := testpki.NewIssuer(t)
	crt := is.UserCert(t, testpki.RSAKey(t, 2048, 0), testpki.CertOptions{Emails: []string{"alice@example.com"}})
	csr := csrWith(t, "x")
	if err := c.SuccessNotification(ctx, intune.Issued{TransactionID: "tx-s", CSRDER: csr, Certificate: crt, Issuer: is.Cert}); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("é", 400)
	if err := c.FailureNotification(ctx, "tx-f", csr, 0x80070057, long); err != nil {
		t.Fatal(err)
	}
	n := m.Notifications()
	sum := sha1.Sum(crt.Raw)
	if len(n) != 2 || !n[0].Success || n[0].TransactionID != "tx-s" || !strings.EqualFold(n[0].Thumbprint, hex.EncodeToString(sum[:])) ||
		!strings.EqualFold(n[0].Serial, crt.SerialNumber.Text(16)) || n[0].Expiry != crt.NotAfter.UTC().Format("2006-01-02T15:04:05.000Z") ||
		n[0].Issuer != is.Cert.Subject.String() || string(n[0].CSR) != string(csr) {
		t.Fatalf("success notification %+v", n)
	}
	if n[1].Success || n[1].HResult != 0x80070057 || len([]rune(n[1].Description)) != intune.MaxErrorDescription {
		t.Errorf("failure notification: hResult %#x, %d characters", n[1].HResult, len([]rune(n[1].Description)))
	}
	m.Set(func(m *intunemock.Mock) { m.SuccessStatus = 500 })
	if err := c.SuccessNotification(ctx, intune.Issued{TransactionID: "tx", CSRDER: csr, Certificate: crt, Issuer: is.Cert}); !errors.Is(err, intune.ErrUnavailable) {
		t.Errorf("success notification 500: %v", err)
	}
	m.Set(func(m *intunemock.Mock) { m.SuccessStatus, m.SuccessCode = 0, "ChallengeExpired" })
	var r *intune.Refusal
	if err := c.SuccessNotification(ctx, intune.Issued{TransactionID: "tx", CSRDER: csr, Certificate: crt, Issuer: is.Cert}); !errors.As(err, &r) {
		t.Errorf("success notification with another code: %v", err)
	}
}

// The revocation calls: requests come down once, results go up.
func TestRevocationCalls(t *testing.T) {
	m := intunemock.Start(t)
	c := newClient(t, m, nil)
	ctx := context.Background()
	if _, err := c.DownloadRevocationRequests(ctx, 501, ""); err == nil {
		t.Error("more than 500 requests asked for")
	}
	m.QueueRevocation("ctx-1", "0A1B", "CN=Issuing")
	m.QueueRevocation("ctx-2", "FF", "CN=Issuing")
	got, err := c.DownloadRevocationRequests(ctx, 500, "CN=Issuing")
	if err != nil || len(got) != 2 || got[0].RequestContext != "ctx-1" || got[1].SerialNumber != "FF" {
		t.Fatalf("download: %+v %v", got, err)
	}
	if again, _ := c.DownloadRevocationRequests(ctx, 500, ""); len(again) != 0 {
		t.Errorf("requests came down twice: %+v", again)
	}
	if err := c.UploadRevocationResults(ctx, []intune.RevocationResult{{RequestContext: "ctx-1", Succeeded: true},
		{RequestContext: "ctx-2", ErrorCode: intune.RevocationCertificateNotFound, ErrorMessage: "not ours"}}); err != nil {
		t.Fatal(err)
	}
	if r := m.Results(); len(r) != 2 || !r[0].Succeeded || r[1].ErrorCode != 4004 {
		t.Errorf("results %+v", r)
	}
}

// Imported PFX records: create, list by user, delete; with a client
// certificate as the credential.
func TestUserPFXWithClientCertificate(t *testing.T) {
	m := intunemock.Start(t)
	key := testpki.RSAKey(t, 2048, 1) // Entra takes RSA client certificates only
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "smimeca app"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	pemBytes := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})...)
	c := newClient(t, m, func(cfg *intune.Config) { cfg.ClientSecret, cfg.ClientCertPEM = "", pemBytes })
	ctx := context.Background()
	p := intune.UserPFX{Thumbprint: "AB", IntendedPurpose: intune.PurposeSMIMEEncryption, UserPrincipalName: "alice@example.com",
		StartDateTime: time.Now(), ExpirationDateTime: time.Now().Add(time.Hour), ProviderName: "Microsoft Software Key Storage Provider",
		KeyName: "PFXEncryptionKey", PaddingScheme: intune.PaddingOAEPSHA256, EncryptedPfxBlob: []byte("pfx"), EncryptedPfxPassword: "cGFzc3dvcmQ="}
	id, err := c.CreateUserPFX(ctx, p)
	if err != nil || id == "" {
		t.Fatalf("create: %q %v", id, err)
	}
	list, err := c.ListUserPFX(ctx, "alice@example.com")
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].Thumbprint != "AB" {
		t.Fatalf("list: %+v %v", list, err)
	}
	if other, _ := c.ListUserPFX(ctx, "bob@example.com"); len(other) != 0 {
		t.Errorf("another user's list: %+v", other)
	}
	if err := c.DeleteUserPFX(ctx, id); err != nil {
		t.Fatal(err)
	}
	if list, _ := c.ListUserPFX(ctx, "alice@example.com"); len(list) != 0 {
		t.Errorf("after delete: %+v", list)
	}
}

// The configuration says what is missing.
func TestNewRefusesIncompleteConfig(t *testing.T) {
	for _, cfg := range []intune.Config{
		{ClientID: "x", ClientSecret: "s"},
		{Tenant: "t", ClientSecret: "s"},
		{Tenant: "t", ClientID: "x"},
		{Tenant: "t", ClientID: "x", ClientSecret: "s", ClientCertPEM: []byte("y")},
		{Tenant: "t", ClientID: "x", ClientCertPEM: []byte("not pem")},
	} {
		if _, err := intune.New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// Reachable answers from the last call when it was recent, and asks Intune
// (a token and a fresh discovery) when nothing was called yet.
func TestReachable(t *testing.T) {
	m := intunemock.Start(t)
	m.Set(func(m *intunemock.Mock) { m.TokenStatus = 401 })
	c := newClient(t, m, nil)
	ctx := context.Background()
	if err := c.Reachable(ctx); !errors.Is(err, intune.ErrUnavailable) {
		t.Fatalf("with tokens refused: %v", err)
	}
	m.Set(func(m *intunemock.Mock) { m.TokenStatus = 0 })
	if err := c.ValidateRequest(ctx, "tx", csrWith(t, m.Challenge(intune.CodeSuccess))); err != nil {
		t.Fatal(err)
	}
	m.Set(func(m *intunemock.Mock) { m.ValidateStatus = 500 })
	if err := c.Reachable(ctx); err != nil {
		t.Errorf("after a successful call: %v", err)
	}
	c.ValidateRequest(ctx, "tx", csrWith(t, m.Challenge(intune.CodeSuccess)))
	if err := c.Reachable(ctx); !errors.Is(err, intune.ErrUnavailable) {
		t.Errorf("after a failed call: %v", err)
	}
}
