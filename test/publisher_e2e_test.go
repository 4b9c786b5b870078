package test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	"github.com/smimeca/smimeca/policy"
)

// slapd is a real OpenLDAP server (Debian's slapd) on a loopback port with
// a throw-away mdb database, as the directory smimeca publishes to.
type slapd struct {
	t        *testing.T
	dir, url string
	conf     string
	cmd      *exec.Cmd
}

const (
	slapdSuffix = "dc=example,dc=com"
	slapdAdmin  = "cn=admin,dc=example,dc=com"
)

func startSlapd(t *testing.T) *slapd {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "db"), 0o700); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "slapd.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile %[1]s/slapd.pid
database mdb
maxsize 104857600
suffix "%[2]s"
rootdn "%[3]s"
rootpw admin-secret
directory %[1]s/db
`, dir, slapdSuffix, slapdAdmin)), 0o600)
	s := &slapd{t: t, dir: dir, conf: conf, url: fmt.Sprintf("ldap://127.0.0.1:%d", freePort(t))}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *slapd) start() {
	s.t.Helper()
	if _, err := os.Stat("/usr/sbin/slapd"); err != nil {
		s.t.Fatal("slapd is not installed (scripts/deps.sh installs Debian's slapd)")
	}
	s.cmd = exec.Command("/usr/sbin/slapd", "-f", s.conf, "-h", s.url+"/", "-d", "0")
	var log bytes.Buffer
	s.cmd.Stdout, s.cmd.Stderr = &log, &log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		if r := run(s.t, 5*time.Second, tool(s.t, "ldapsearch"), "-x", "-H", s.url, "-b", "", "-s", "base"); r.code == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("slapd did not come up: %s", log.String())
}

func (s *slapd) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

func (s *slapd) ldapadd(ldif string) {
	s.t.Helper()
	cmd := exec.Command(tool(s.t, "ldapadd"), "-x", "-H", s.url, "-D", slapdAdmin, "-w", "admin-secret")
	cmd.Stdin = strings.NewReader(ldif)
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("ldapadd: %v: %s", err, out)
	}
}

// certs returns the DER values of userCertificate on the entry of mail.
func (s *slapd) certs(mail string) [][]byte {
	s.t.Helper()
	out := mustOK(s.t, "ldapsearch slapd", run(s.t, 10*time.Second, tool(s.t, "ldapsearch"), "-LLL", "-x", "-H", s.url,
		"-D", slapdAdmin, "-w", "admin-secret", "-b", slapdSuffix, "(mail="+mail+")", "userCertificate"))
	e := ldif(out)
	if len(e) != 1 {
		s.t.Fatalf("entries for %s: %v", mail, e)
	}
	var ders [][]byte
	for k, vs := range e[0] {
		if strings.HasPrefix(k, "userCertificate") {
			for _, v := range vs {
				ders = append(ders, []byte(v))
			}
		}
	}
	return ders
}

func holds(list [][]byte, der []byte) bool {
	for _, d := range list {
		if bytes.Equal(d, der) {
			return true
		}
	}
	return false
}

// TestPublisherToSlapd: a real slapd holds alice's entry with a
// certificate from another CA; smimeca publishes her current escrowed
// encryption certificates into it on import, takes out revoked and deleted
// ones, never touches the foreign value, catches up after the directory
// was down (retry with back-off), and `directory sync` reconciles a change
// made behind its back.
func TestPublisherToSlapd(t *testing.T) {
	t.Parallel()
	sl := startSlapd(t)
	is, foreign := testpki.NewIssuer(t), testpki.NewIssuer(t)
	kf := testpki.RSAKey(t, 2048, 4)
	other := foreign.UserCert(t, kf, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	sl.ldapadd(fmt.Sprintf(`dn: %[1]s
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,%[1]s
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,%[1]s
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Example
mail: alice@example.com
userCertificate;binary:: %[2]s

dn: uid=bob,ou=people,%[1]s
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Example
mail: bob@example.com
`, slapdSuffix, b64(other.Raw)))

	v := testvault.Start(t)
	pwFile := filepath.Join(t.TempDir(), "ldap-pw")
	os.WriteFile(pwFile, []byte("admin-secret\n"), 0o600)
	s := escrowServer(t, v, "--ldap-publish-url", sl.url, "--ldap-publish-bind-dn", slapdAdmin,
		"--ldap-publish-password-file", pwFile, "--ldap-publish-base-dn", slapdSuffix, "--ldap-publish-retry-max", "1s")
	in := t.TempDir()
	pw := randomPassword(t)
	k1, k2 := testpki.RSAKey(t, 2048, 0), testpki.RSAKey(t, 2048, 1)
	c1 := is.UserCert(t, k1, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	c2 := is.UserCert(t, k2, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	f1, pwf := writePFX(t, in, "c1", is.PFX(t, pkcs12.Modern2023, k1, c1, pw), pw)
	mustOK(t, "import c1", s.cli("pfx", "import", "--user", "alice@example.com", "--password-file", pwf, f1))
	defer func() {
		if t.Failed() {
			t.Logf("server log:\n%s", s.log.String())
		}
	}()
	eventually(t, "c1 published beside the foreign certificate", func() bool {
		got := sl.certs("alice@example.com")
		return len(got) == 2 && holds(got, c1.Raw) && holds(got, other.Raw)
	})

	// The directory goes down; an import is published once it is back.
	sl.stop()
	f2, _ := writePFX(t, in, "c2", is.PFX(t, pkcs12.Modern2023, k2, c2, pw), pw)
	mustOK(t, "import c2 while the directory is down", s.cli("pfx", "import", "--user", "alice@example.com", "--password-file", pwf, f2))
	time.Sleep(1500 * time.Millisecond)
	sl.start()
	eventually(t, "c2 published after the directory came back", func() bool {
		got := sl.certs("alice@example.com")
		return len(got) == 3 && holds(got, c2.Raw)
	})

	// Revoked and deleted certificates are taken out; the foreign one stays.
	mustOK(t, "revoke c1", s.cli("pfx", "revoke", "--user", "alice@example.com", "--thumbprint", policy.CertificateMetadata(c1).SHA1))
	eventually(t, "c1 removed after its revocation", func() bool {
		got := sl.certs("alice@example.com")
		return len(got) == 2 && !holds(got, c1.Raw) && holds(got, other.Raw)
	})
	mustOK(t, "delete c2", s.cli("pfx", "delete", "--user", "alice@example.com", "--thumbprint", policy.CertificateMetadata(c2).SHA256))
	eventually(t, "c2 removed after its deletion", func() bool {
		got := sl.certs("alice@example.com")
		return len(got) == 1 && holds(got, other.Raw)
	})

	// Someone removes the foreign value and adds ours back by hand:
	// directory sync takes ours out again and leaves theirs alone.
	cmd := exec.Command(tool(t, "ldapmodify"), "-x", "-H", sl.url, "-D", slapdAdmin, "-w", "admin-secret")
	cmd.Stdin = strings.NewReader(fmt.Sprintf("dn: uid=alice,ou=people,%s\nchangetype: modify\nadd: userCertificate;binary\nuserCertificate;binary:: %s\n", slapdSuffix, b64(c1.Raw)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ldapmodify: %v %s", err, out)
	}
	out := mustOK(t, "directory sync", s.cli("directory", "sync"))
	if !strings.Contains(out, "removed 1") {
		t.Errorf("directory sync: %s", out)
	}
	if got := sl.certs("alice@example.com"); len(got) != 1 || !holds(got, other.Raw) {
		t.Errorf("after sync: %d values", len(got))
	}
	// Bob has an entry but no escrow; nothing is written to it.
	if got := sl.certs("bob@example.com"); len(got) != 0 {
		t.Errorf("bob's entry got %d certificates", len(got))
	}
	if strings.Contains(s.log.String(), "admin-secret") {
		t.Error("the directory password reached the log")
	}
}

func b64(der []byte) string { return base64.StdEncoding.EncodeToString(der) }

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if ok() {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("not within 20 s: %s", what)
}
