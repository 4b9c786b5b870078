package test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	smallscep "github.com/smallstep/scep"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/intunemock"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// newIntuneServer starts smimeca as the mock tenant's SCEP CA: the mock's
// CA trusted through SSL_CERT_FILE, as an operator's would be through the
// system store.
func newIntuneServer(t *testing.T, m *intunemock.Mock, extra ...string) *server {
	t.Helper()
	return newServerEnv(t, []string{"SSL_CERT_FILE=" + m.CAFile}, append(intuneFlagsFor(t, m), extra...)...)
}

// intuneFlagsFor are the --intune-* flags of the mock's tenant.
func intuneFlagsFor(t *testing.T, m *intunemock.Mock) []string {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "intune-secret")
	if err := os.WriteFile(secret, []byte(intunemock.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"--intune-tenant", intunemock.Tenant, "--intune-client-id", intunemock.ClientID, "--intune-client-secret-file", secret,
		"--intune-authority-url", m.URL + "/", "--intune-graph-url", m.URL, "--intune-resource-url", m.URL + "/manage/"}
}

// intuneEnrol sends a PKCSReq for the address (an rfc822Name SAN, as an
// Intune SCEP profile's "Email address" SAN puts it, with Intune's SID URI
// beside it) with challenge to /scep/intune: what the device's SCEP
// client does. It returns the certificate and the CertRep's status.
func intuneEnrol(t *testing.T, s *server, ra *x509.Certificate, key *rsa.PrivateKey, addr, challenge string) (*x509.Certificate, smallscep.PKIStatus, smallscep.FailInfo, string) {
	t.Helper()
	return intuneEnrolAt(t, s, "/scep/intune", ra, key, addr, challenge)
}

// intuneEnrolAt is intuneEnrol to the SCEP endpoint at path.
func intuneEnrolAt(t *testing.T, s *server, path string, ra *x509.Certificate, key *rsa.PrivateKey, addr, challenge string) (*x509.Certificate, smallscep.PKIStatus, smallscep.FailInfo, string) {
	t.Helper()
	sid, _ := url.Parse("tag:microsoft.com,2022-09-14:sid:S-1-5-21-1004336348-1177238915-682003330-512")
	dev := newSCEPDeviceFor(t, key, addr, "device", x509.CertificateRequest{Subject: pkix.Name{CommonName: "Alice Example"},
		EmailAddresses: []string{addr}, URIs: []*url.URL{sid}}, challenge, ra)
	tx, err := smallscep.ParsePKIMessage(dev.msg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(s.baseURL+path+"?operation=PKIOperation", "application/x-pki-message", bytes.NewReader(dev.msg))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
	}
	rep, err := smallscep.ParsePKIMessage(body, smallscep.WithCACerts([]*x509.Certificate{ra}))
	if err != nil {
		t.Fatal(err)
	}
	if rep.PKIStatus != smallscep.SUCCESS {
		return nil, rep.PKIStatus, rep.FailInfo, string(tx.TransactionID)
	}
	if err := rep.DecryptPKIEnvelope(dev.cert, key); err != nil {
		t.Fatal(err)
	}
	return rep.CertRepMessage.Certificate, rep.PKIStatus, "", string(tx.TransactionID)
}

// TestIntuneSCEP: smimeca as Intune's third-party SCEP CA against the
// conformance mock, over HTTPS. A Success challenge gets smimeca's S/MIME
// certificate, reported to Intune with the thumbprint, serial and expiry
// of the very certificate the client received, and in the inventory; every
// injected failure — token refused, discovery without the service, a
// refusal code, validation 500, the success notification answered 500 or
// with another code — gets a CertRep FAILURE, leaves no certificate in the
// inventory and, wherever Intune can be reached, a failure notification;
// /scep is unchanged beside it.
func TestIntuneSCEP(t *testing.T) {
	t.Parallel()
	m := intunemock.Start(t)
	// Refused tokens from the start: nothing is cached when the first
	// enrolment comes (the revocation feed asks for tokens too).
	m.Set(func(m *intunemock.Mock) { m.TokenStatus = 401 })
	s := newIntuneServer(t, m, "--intune-revocation-interval", "1s")
	// /healthz shows Intune's state without making the node unhealthy.
	if code, h := s.health(t); code != http.StatusOK || !strings.Contains(h.Checks["intune"], "token") {
		t.Errorf("health with Intune refusing tokens: %d %+v", code, h)
	}
	ra := raCert(t, s)
	_, enr, _ := s.adminClients(t)
	ctx := context.Background()
	inventory := func(user string) []*pb.Certificate {
		t.Helper()
		l, err := enr.ListCertificates(ctx, &pb.ListCertificatesRequest{User: user})
		if err != nil {
			t.Fatal(err)
		}
		return l.GetCertificates()
	}
	failures := func() map[string]intunemock.Notification {
		out := map[string]intunemock.Notification{}
		for _, n := range m.Notifications() {
			if !n.Success {
				out[n.TransactionID] = n
			}
		}
		return out
	}
	key := testpki.RSAKey(t, 2048, 0)

	type failure struct {
		name     string
		set      func(m *intunemock.Mock)
		code     string // the challenge's validation code
		notified bool   // a failure notification reaches the mock
	}
	// Order matters: the token and discovery failures come before anything
	// is cached.
	for i, f := range []failure{
		{"token refused", func(m *intunemock.Mock) { m.TokenStatus = 401 }, "Success", false},
		{"discovery without the validation service", func(m *intunemock.Mock) { m.Missing = []string{"ScepRequestValidationFEService"} }, "Success", false},
		{"validation refused", nil, "ChallengeExpired", true},
		{"validation 500", func(m *intunemock.Mock) { m.ValidateStatus = 500 }, "Success", true},
		{"success notification 500", func(m *intunemock.Mock) { m.SuccessStatus = 500 }, "Success", true},
		{"success notification not Success", func(m *intunemock.Mock) { m.SuccessCode = "ChallengeExpired" }, "Success", true},
	} {
		m.Set(func(m *intunemock.Mock) {
			m.TokenStatus, m.Missing, m.ValidateStatus, m.SuccessStatus, m.SuccessCode = 0, nil, 0, 0, ""
			if f.set != nil {
				f.set(m)
			}
		})
		user := "fail" + string(rune('a'+i)) + "@example.com"
		crt, status, info, tx := intuneEnrol(t, s, ra, key, user, m.Challenge(f.code))
		if crt != nil || status != smallscep.FAILURE || info != smallscep.BadRequest {
			t.Errorf("%s: status %s failInfo %q, certificate %v", f.name, status, string(info), crt != nil)
		}
		if l := inventory(user); len(l) != 0 {
			t.Errorf("%s: the inventory holds %d certificates", f.name, len(l))
		}
		if _, got := failures()[tx]; got != f.notified {
			t.Errorf("%s: failure notification received %v, want %v", f.name, got, f.notified)
		}
	}
	m.Set(func(m *intunemock.Mock) {
		m.TokenStatus, m.Missing, m.ValidateStatus, m.SuccessStatus, m.SuccessCode = 0, nil, 0, 0, ""
	})

	crt, status, _, tx := intuneEnrol(t, s, ra, key, "Alice@Example.com", m.Challenge("Success"))
	if crt == nil {
		t.Fatalf("a Success challenge: status %s", status)
	}
	if len(crt.EmailAddresses) != 1 || crt.EmailAddresses[0] != "alice@example.com" || len(crt.URIs) != 0 ||
		len(crt.ExtKeyUsage) != 1 || crt.ExtKeyUsage[0] != x509.ExtKeyUsageEmailProtection {
		t.Errorf("certificate: %v %v %v", crt.EmailAddresses, crt.URIs, crt.ExtKeyUsage)
	}
	var success *intunemock.Notification
	for _, n := range m.Notifications() {
		if n.Success && n.TransactionID == tx {
			success = &n
		}
	}
	sum := sha1.Sum(crt.Raw)
	if success == nil || !strings.EqualFold(success.Thumbprint, hex.EncodeToString(sum[:])) || !strings.EqualFold(success.Serial, crt.SerialNumber.Text(16)) ||
		success.Expiry != crt.NotAfter.UTC().Format("2006-01-02T15:04:05.000Z") || !strings.Contains(success.Issuer, "CN=") {
		t.Fatalf("success notification %+v does not describe the certificate received", success)
	}
	l := inventory("alice@example.com")
	if len(l) != 1 || l[0].GetSerial() != crt.SerialNumber.String() || !strings.HasPrefix(l[0].GetDeviceId(), "intune/") {
		t.Fatalf("inventory %+v", l)
	}
	leaf := filepath.Join(t.TempDir(), "leaf.pem")
	os.WriteFile(leaf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: crt.Raw}), 0o644)
	mustOK(t, "verify -purpose smimesign", openssl(t, "verify", "-purpose", "smimesign", "-CAfile", filepath.Join(s.data, "ca", "root_ca.crt"),
		"-untrusted", filepath.Join(s.data, "ca", "intermediate_ca.crt"), leaf))
	// /scep does not take Intune's challenges; /scep/intune answers SCEP's
	// other operations like /scep.
	if _, status, _, _ := intuneEnrolAt(t, s, "/scep", ra, key, "bob@example.com", m.Challenge("Success")); status != smallscep.FAILURE {
		t.Errorf("/scep took an Intune challenge: %s", status)
	}
	resp, err := http.Get(s.baseURL + "/scep/intune?operation=GetCACaps")
	if err != nil {
		t.Fatal(err)
	}
	caps, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(caps), "POSTPKIOperation") {
		t.Errorf("GetCACaps on /scep/intune: %q", caps)
	}
	// Renewal on /scep/intune needs no Intune: a RenewalReq signed with the
	// current certificate gets the next one, for the same address, and no
	// validation is asked for.
	bkey := testpki.RSAKey(t, 2048, 2)
	bobCrt, _, _, _ := intuneEnrol(t, s, ra, bkey, "bob@example.com", m.Challenge("Success"))
	if bobCrt == nil {
		t.Fatal("bob's enrolment")
	}
	validations := m.Validations()
	resp, err = http.Post(s.baseURL+"/scep/intune?operation=PKIOperation", "application/x-pki-message", bytes.NewReader(renewal(t, bkey, bobCrt, ra)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	rep, err := smallscep.ParsePKIMessage(body, smallscep.WithCACerts([]*x509.Certificate{ra}))
	if err != nil || rep.PKIStatus != smallscep.SUCCESS || rep.DecryptPKIEnvelope(bobCrt, bkey) != nil {
		t.Fatalf("renewal on /scep/intune: %v", err)
	}
	if r := rep.CertRepMessage.Certificate; r.EmailAddresses[0] != "bob@example.com" || r.SerialNumber.Cmp(bobCrt.SerialNumber) == 0 || m.Validations() != validations {
		t.Errorf("renewed: %v, validations %d -> %d", r.EmailAddresses, validations, m.Validations())
	}
	// Intune's revocation feed: our certificate is revoked (openssl ocsp
	// and the CRL show it) and answered succeeded; a serial we never
	// issued gets CertificateNotFound (4004).
	issuerName := strings.TrimSpace(strings.TrimPrefix(mustOK(t, "issuer subject", openssl(t, "x509", "-in", filepath.Join(s.data, "ca", "intermediate_ca.crt"),
		"-noout", "-subject", "-nameopt", "RFC2253")), "subject="))
	m.QueueRevocation("revoke-ours", strings.ToUpper(crt.SerialNumber.Text(16)), issuerName)
	m.QueueRevocation("revoke-unknown", "0DEADBEEF0", issuerName)
	deadline := time.Now().Add(20 * time.Second)
	for len(m.Results()) < 2 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	got := map[string]intunemock.RevocationResult{}
	for _, r := range m.Results() {
		got[r.RequestContext] = r
	}
	if r := got["revoke-ours"]; !r.Succeeded {
		t.Fatalf("revocation of our certificate: %+v (all: %+v)", r, m.Results())
	}
	if r := got["revoke-unknown"]; r.Succeeded || r.ErrorCode != 4004 {
		t.Errorf("revocation of an unknown serial: %+v", r)
	}
	if l := inventory("alice@example.com"); len(l) != 1 || !l[0].GetRevoked() {
		t.Errorf("inventory after Intune's revocation: %+v", l)
	}
	ocspOut := mustOK(t, "openssl ocsp", openssl(t, "ocsp", "-url", s.baseURL+"/ocsp", "-issuer", filepath.Join(s.data, "ca", "intermediate_ca.crt"),
		"-CAfile", filepath.Join(s.data, "ca", "root_ca.crt"), "-no_nonce", "-cert", leaf))
	if !strings.Contains(ocspOut, leaf+": revoked") {
		t.Errorf("OCSP after Intune's revocation:\n%s", ocspOut)
	}
	crl := filepath.Join(t.TempDir(), "crl.der")
	fetch(t, s.baseURL+"/crl", filepath.Dir(crl), "crl.der")
	if out := mustOK(t, "crl", openssl(t, "crl", "-inform", "DER", "-in", crl, "-noout", "-text")); !strings.Contains(strings.ToUpper(out), strings.ToUpper(crt.SerialNumber.Text(16))) {
		t.Errorf("the CRL does not list the revoked serial:\n%s", out)
	}
	healthDeadline := time.Now().Add(15 * time.Second)
	for _, h := s.health(t); h.Checks["intune"] != "ok"; _, h = s.health(t) {
		if time.Now().After(healthDeadline) {
			t.Fatalf("health once Intune answers: %+v", h)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// doctor, given the server's --intune-* flags, runs a dry validation.
	doc := runEnv(t, []string{"SSL_CERT_FILE=" + m.CAFile}, smimecaBin(t), append([]string{"doctor", "--data", s.data, "--url", s.baseURL,
		"--ops-addr", s.opsAddr, "--server", s.grpcAddr}, intuneFlagsFor(t, m)...)...)
	if !strings.Contains(doc.stdout, "a dry validation work (Intune refused the challenge-less request: ChallengePasswordMissing)") {
		t.Errorf("doctor: %+v", doc)
	}
	// Intune's codes are in the log and the audit; the challenge never is.
	audit, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
	for what, text := range map[string]string{"log": s.log.String(), "audit": string(audit)} {
		if strings.Contains(text, "intune-challenge-") {
			t.Errorf("an Intune challenge is in smimeca's %s", what)
		}
		if !strings.Contains(text, "ChallengeExpired") {
			t.Errorf("Intune's refusal code is not in smimeca's %s", what)
		}
	}
}

// TestIntuneSync: `smimeca intune sync` puts every escrowed encryption
// certificate into the mock's imported-PFX store: each record's password
// opens only with the connector's private key (RSA-OAEP-SHA256) and its
// PFX holds the escrowed key; a second run uploads nothing; a purged user's
// records are deleted there; every upload is audited with the connector
// key as the recipient.
func TestIntuneSync(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	m := intunemock.Start(t)
	connector := testpki.RSAKey(t, 2048, 7)
	pubDER, _ := x509.MarshalPKIXPublicKey(&connector.PublicKey)
	pubFile := filepath.Join(t.TempDir(), "connector.pem")
	os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644)
	s := newIntuneServer(t, m, append(vaultFlags(t, v), "--intune-pfx-connector-key", pubFile, "--intune-revocation-interval", "0")...)

	is := testpki.NewIssuer(t)
	in := t.TempDir()
	keys := map[string]*rsa.PrivateKey{} // SHA-1 thumbprint → escrowed key
	for i, user := range []string{"alice@example.com", "alice@example.com", "alice@example.com", "bob@example.com"} {
		key := testpki.RSAKey(t, 2048, i)
		crt := is.UserCert(t, key, testpki.CertOptions{Emails: []string{user}, NotBefore: time.Now().Add(-time.Duration(i+1) * 24 * time.Hour)})
		sum := sha1.Sum(crt.Raw)
		keys[strings.ToUpper(hex.EncodeToString(sum[:]))] = key
		pw := randomPassword(t)
		file, pwFile := writePFX(t, in, fmt.Sprintf("c%d", i), is.PFX(t, nil, key, crt, pw), pw)
		mustOK(t, "pfx import", s.cli("pfx", "import", "--user", user, "--password-file", pwFile, file))
	}
	out := mustOK(t, "intune sync --all", s.cli("intune", "sync", "--all"))
	if !strings.Contains(out, "uploaded 4, already in Intune 0") {
		t.Fatalf("first sync: %s", out)
	}
	recs := m.PFX()
	if len(recs) != 4 {
		t.Fatalf("the mock holds %d records", len(recs))
	}
	for _, r := range recs {
		ct, err := base64.StdEncoding.DecodeString(r.EncryptedPfxPassword)
		if err != nil {
			t.Fatal(err)
		}
		pw, err := rsa.DecryptOAEP(sha256.New(), nil, connector, ct, nil)
		if err != nil {
			t.Fatalf("%s: the password does not open with the connector key: %v", r.Thumbprint, err)
		}
		key, crt, _, err := pkcs12.DecodeChain(r.EncryptedPfxBlob, string(pw))
		if err != nil {
			t.Fatalf("%s: the PFX does not open with its password: %v", r.Thumbprint, err)
		}
		sum := sha1.Sum(crt.Raw)
		want := keys[strings.ToUpper(hex.EncodeToString(sum[:]))]
		if want == nil || !strings.EqualFold(r.Thumbprint, hex.EncodeToString(sum[:])) || !want.Equal(key) {
			t.Errorf("%s: the PFX does not hold the escrowed key of its thumbprint", r.Thumbprint)
		}
		if r.IntendedPurpose != "smimeEncryption" || r.PaddingScheme != "oaepSha256" || r.KeyName != "PFXEncryptionKey" ||
			!strings.EqualFold(r.UserPrincipalName, crt.EmailAddresses[0]) || !r.ExpirationDateTime.Equal(crt.NotAfter) {
			t.Errorf("record fields: %+v", r)
		}
	}
	if out := mustOK(t, "intune sync again", s.cli("intune", "sync", "--user", "alice@example.com")); !strings.Contains(out, "uploaded 0, already in Intune 3") {
		t.Errorf("second sync: %s", out)
	}
	mustOK(t, "pfx purge", s.cli("pfx", "purge", "--user", "bob@example.com"))
	if out := mustOK(t, "intune sync after a purge", s.cli("intune", "sync", "--all")); !strings.Contains(out, "deleted from Intune 1") || len(m.PFX()) != 3 {
		t.Errorf("after purging bob: %s (%d records)", out, len(m.PFX()))
	}
	audit, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
	sum := sha256.Sum256(pubDER)
	if n := strings.Count(string(audit), `"action":"key.release.intune"`); n != 4 || !strings.Contains(string(audit), hex.EncodeToString(sum[:])) {
		t.Errorf("%d key.release.intune events; the connector key as recipient: %v", n, strings.Contains(string(audit), hex.EncodeToString(sum[:])))
	}
	// Without a connector key the server refuses to sync, saying why.
	if r := newIntuneServer(t, intunemock.Start(t), vaultFlags(t, v)...).cli("intune", "sync", "--all"); r.code == 0 || !strings.Contains(r.stderr, "connector-key") {
		t.Errorf("sync without a connector key: %+v", r)
	}
}

// TestSlowIntuneHoldsItsShare: while Intune takes its time over every
// validation, /scep/intune holds at most its half of the PKIOperation slots
// (more get 503), and /scep enrols as ever.
func TestSlowIntuneHoldsItsShare(t *testing.T) {
	t.Parallel()
	m := intunemock.Start(t)
	// Intune answers after 8 s: an enrolment /scep held behind it would
	// take 7 s from its start, one that is not finishes well within 6 s
	// even on a loaded machine (≈0.3 s alone).
	m.Set(func(m *intunemock.Mock) { m.ValidateDelay = 8 * time.Second })
	s := newIntuneServer(t, m, "--scep-max-inflight", "2", "--intune-revocation-interval", "0")
	ra := raCert(t, s)
	key := testpki.RSAKey(t, 2048, 0)
	dev := newSCEPDevice(t, key, "u@example.com", "d", "irrelevant", ra)
	codes := make(chan int, 3)
	for range 3 {
		go func() {
			resp, err := http.Post(s.baseURL+"/scep/intune?operation=PKIOperation", "application/x-pki-message", bytes.NewReader(dev.msg))
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	time.Sleep(time.Second) // the slot is taken, Intune is thinking
	start := time.Now()
	s.register("alice@example.com", "phone")
	mustOK(t, "scepclient on /scep while Intune is slow", s.scepclient(filepath.Join(t.TempDir(), "dev"), s.challenge("alice@example.com", "phone")))
	d := time.Since(start)
	t.Logf("/scep enrolment (register, challenge, scepclient) took %s while Intune was slow", d)
	if d > 6*time.Second {
		t.Errorf("/scep took %s while Intune was slow", d)
	}
	busy := 0
	for range 3 {
		if c := <-codes; c == http.StatusServiceUnavailable {
			busy++
		}
	}
	if busy != 2 {
		t.Errorf("%d of 3 requests to a slow Intune got 503; with one slot of its own, want 2", busy)
	}
}
