package test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	"github.com/smimeca/smimeca/policy"
)

// ldif parses ldapsearch -LLL output into entries of attribute → values
// (base64 "::" values decoded; continuation lines joined).
func ldif(out string) []map[string][]string {
	var entries []map[string][]string
	var cur map[string][]string
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, " ") && len(lines) > 0 {
			lines[len(lines)-1] += l[1:]
			continue
		}
		lines = append(lines, l)
	}
	for _, l := range lines {
		if strings.TrimSpace(l) == "" {
			cur = nil
			continue
		}
		if cur == nil {
			cur = map[string][]string{}
			entries = append(entries, cur)
		}
		if k, v, ok := strings.Cut(l, ":: "); ok {
			b, _ := base64.StdEncoding.DecodeString(v)
			cur[k] = append(cur[k], string(b))
		} else if k, v, ok := strings.Cut(l, ": "); ok {
			cur[k] = append(cur[k], v)
		}
	}
	return entries
}

func (s *server) ldapsearch(t *testing.T, addr string, args ...string) result {
	t.Helper()
	return run(t, 30*time.Second, tool(t, "ldapsearch"), append([]string{"-LLL", "-x", "-H", "ldap://" + addr, "-b", "ou=recipients,o=smimeca"}, args...)...)
}

// TestRecipientDirectoryWithLdapsearch: the built-in LDAP endpoint
// answers (mail=…) with the user's current encryption certificates —
// userCertificate;binary (DER, openssl reads it) and userSMIMECertificate
// (PKCS#7) — not with expired, revoked or deleted ones; anonymous only,
// nothing to enumerate.
func TestRecipientDirectoryWithLdapsearch(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	ldapAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := escrowServer(t, v, "--ldap-addr", ldapAddr)
	is := testpki.NewIssuer(t)
	in := t.TempDir()
	pw := randomPassword(t)
	k1, k2, k3 := testpki.RSAKey(t, 2048, 0), testpki.RSAKey(t, 2048, 1), testpki.RSAKey(t, 2048, 2)
	old := is.UserCert(t, k1, testpki.CertOptions{Emails: []string{"alice@example.com"},
		NotBefore: time.Now().Add(-3 * 365 * 24 * time.Hour), NotAfter: time.Now().Add(-365 * 24 * time.Hour)})
	cur := is.UserCert(t, k2, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	next := is.UserCert(t, k3, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	for i, p := range [][]byte{is.PFX(t, pkcs12.Modern2023, k1, old, pw), is.PFX(t, pkcs12.Modern2023, k2, cur, pw)} {
		f, pwf := writePFX(t, in, fmt.Sprintf("a%d", i), p, pw)
		mustOK(t, "import", s.cli("pfx", "import", "--user", "alice@example.com", "--password-file", pwf, f))
	}
	lookup := func() []map[string][]string {
		t.Helper()
		return ldif(mustOK(t, "ldapsearch", s.ldapsearch(t, ldapAddr, "(mail=Alice@example.com)")))
	}
	e := lookup()
	if len(e) != 1 || len(e[0]["userCertificate;binary"]) != 1 || len(e[0]["userSMIMECertificate"]) != 1 || e[0]["mail"][0] != "alice@example.com" {
		t.Fatalf("entries %v", e)
	}
	der := []byte(e[0]["userCertificate;binary"][0])
	if !bytes.Equal(der, cur.Raw) {
		t.Error("the published certificate is not the current one (the expired one must not be published)")
	}
	derFile, p7File := filepath.Join(in, "alice.der"), filepath.Join(in, "alice.p7")
	os.WriteFile(derFile, der, 0o644)
	os.WriteFile(p7File, []byte(e[0]["userSMIMECertificate"][0]), 0o644)
	if out := mustOK(t, "openssl x509", openssl(t, "x509", "-inform", "DER", "-in", derFile, "-noout", "-ext", "subjectAltName")); !strings.Contains(out, "alice@example.com") {
		t.Errorf("openssl reads %s", out)
	}
	if out := mustOK(t, "openssl pkcs7", openssl(t, "pkcs7", "-inform", "DER", "-in", p7File, "-print_certs", "-noout")); !strings.Contains(out, "alice@example.com") {
		t.Errorf("userSMIMECertificate: %s", out)
	}
	// Requested attributes only; an OR of addresses, as Outlook asks.
	e = ldif(mustOK(t, "ldapsearch attrs", s.ldapsearch(t, ldapAddr, "(|(mail=nobody@example.com)(proxyAddresses=smtp:alice@example.com))", "userCertificate")))
	if len(e) != 1 || len(e[0]["userCertificate;binary"]) != 1 || e[0]["userSMIMECertificate"] != nil {
		t.Errorf("attribute selection / OR filter: %v", e)
	}
	// A newer certificate is published at once (the cache is dropped on change).
	f, pwf := writePFX(t, in, "next", is.PFX(t, pkcs12.Modern2023, k3, next, pw), pw)
	mustOK(t, "import next", s.cli("pfx", "import", "--user", "alice@example.com", "--password-file", pwf, f))
	if e := lookup(); len(e) != 1 || len(e[0]["userCertificate;binary"]) != 2 {
		t.Fatalf("after a new import: %v", e)
	}
	// Revoked and deleted certificates disappear.
	mustOK(t, "pfx revoke", s.cli("pfx", "revoke", "--user", "alice@example.com", "--thumbprint", policy.CertificateMetadata(cur).SHA256, "--reason", "keyCompromise"))
	if e := lookup(); len(e) != 1 || len(e[0]["userCertificate;binary"]) != 1 || !bytes.Equal([]byte(e[0]["userCertificate;binary"][0]), next.Raw) {
		t.Fatalf("after revoking the current certificate: %v", e)
	}
	if r := s.cli("pfx", "revoke", "--user", "alice@example.com", "--thumbprint", policy.CertificateMetadata(cur).SHA256); r.code != 1 || !strings.Contains(r.stderr, "already-revoked") {
		t.Errorf("second revoke: %+v", r)
	}
	mustOK(t, "pfx delete", s.cli("pfx", "delete", "--user", "alice@example.com", "--thumbprint", policy.CertificateMetadata(next).SHA1))
	if e := lookup(); len(e) != 0 {
		t.Fatalf("after deleting the last current certificate: %v", e)
	}
	// The revoked key stays in escrow for old mail.
	if l := s.pfxList(t, "alice@example.com"); len(l.Certificates) != 2 {
		t.Errorf("escrow after revoke and delete: %+v", l)
	}

	// Nothing to enumerate, no other data, anonymous only.
	for _, filter := range []string{"(objectClass=*)", "(mail=*)", "(cn=alice*)", "(!(mail=alice@example.com))"} {
		if out := mustOK(t, "ldapsearch "+filter, s.ldapsearch(t, ldapAddr, filter)); strings.TrimSpace(out) != "" {
			t.Errorf("%s returned %q", filter, out)
		}
	}
	r := s.ldapsearch(t, ldapAddr, "-D", "cn=admin,o=smimeca", "-w", "secret", "(mail=alice@example.com)")
	if r.code != 48 || !strings.Contains(r.stderr, "anonymous") {
		t.Errorf("a named bind: %+v", r)
	}

	// Made-up addresses cost Vault nothing: 400 anonymous searches of 8
	// addresses each (in and outside the allowed domains) read no escrow
	// entry, as Vault's own audit log counts.
	auditLog := filepath.Join(t.TempDir(), "vault-audit.log")
	if err := v.Root.Sys().EnableAuditWithOptions("file", &vault.EnableAuditOptions{Type: "file", Options: map[string]string{"file_path": auditLog}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400; i++ {
		var f strings.Builder
		f.WriteString("(|")
		for j := 0; j < 8; j++ {
			domain := "example.com"
			if j%2 == 1 {
				domain = "evil.org"
			}
			fmt.Fprintf(&f, "(mail=random-%d-%d@%s)", i, j, domain)
		}
		f.WriteString(")")
		if out := mustOK(t, "ldapsearch of made-up addresses", s.ldapsearch(t, ldapAddr, f.String())); strings.TrimSpace(out) != "" {
			t.Fatalf("made-up addresses answered %q", out)
		}
	}
	s.pfxList(t, "alice@example.com") // one escrow read the audit device must show
	b, err := os.ReadFile(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "random-"); n != 0 {
		t.Errorf("Vault's audit log shows %d requests for made-up addresses, want 0", n)
	}
	if !strings.Contains(string(b), "smimeca/data/users/alice@example.com") {
		t.Error("the audit device did not record an escrow read, so the count above proves nothing")
	}
}
