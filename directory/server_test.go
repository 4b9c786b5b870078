package directory

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/smimeca/smimeca/internal/freeport"
	"github.com/smimeca/smimeca/internal/testing/testpki"
)

func TestFilterAddresses(t *testing.T) {
	for filter, want := range map[string][]string{
		"(mail=Alice@Example.com)": {"alice@example.com"},
		"(&(objectClass=person)(|(mail=a@example.com)(proxyAddresses=SMTP:b@example.com)(userPrincipalName=c@example.com)))": {"a@example.com", "b@example.com", "c@example.com"},
		"(proxyAddresses=x500:/o=Org/cn=a)":           nil,
		"(mail=*)":                                    nil,
		"(!(mail=a@example.com))":                     nil,
		"(cn=a@example.com)":                          nil,
		"(|(mail=a@example.com)(mail=A@example.com))": {"a@example.com"},
		"(|(mail=1@x)(mail=2@x)(mail=3@x)(mail=4@x)(mail=5@x)(mail=6@x)(mail=7@x)(mail=8@x)(mail=9@x))": {"1@x", "2@x", "3@x", "4@x", "5@x", "6@x", "7@x", "8@x"},
	} {
		got, err := filterAddresses(filter)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("%s: %q %v, want %q", filter, got, err, want)
		}
	}
	if _, err := filterAddresses("(mail=a"); err == nil {
		t.Error("a broken filter was accepted")
	}
}

// FuzzFilterAddresses feeds arbitrary filter strings (what gldap decodes
// from an anonymous client's search) to filterAddresses: no panic, at most
// maxAddresses lower-case addresses.
func FuzzFilterAddresses(f *testing.F) {
	f.Add("(mail=a@example.com)")
	f.Add("(&(objectClass=*)(|(mail=a@x)(proxyAddresses=smtp:b@x)))")
	f.Fuzz(func(t *testing.T, filter string) {
		got, err := filterAddresses(filter)
		if err != nil {
			return
		}
		if len(got) > maxAddresses {
			t.Fatalf("%d addresses", len(got))
		}
		for _, a := range got {
			if a != strings.ToLower(a) || a == "" {
				t.Fatalf("address %q", a)
			}
		}
	})
}

type fakeSource struct {
	certs map[string][]*x509.Certificate
	err   error
	block chan struct{}
}

func (f *fakeSource) Recipients(ctx context.Context, a string) ([]*x509.Certificate, error) {
	if f.block != nil {
		<-f.block
	}
	return f.certs[a], f.err
}

func startServer(t *testing.T, src Source, cfg ServerConfig) string {
	t.Helper()
	s, err := NewServer(src, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(addr)
	t.Cleanup(func() { s.Stop() })
	for i := 0; i < 200 && !s.Ready(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	return addr
}

// Over go-ldap's client: the size limit, busy when too many searches run,
// unavailable when the store is, and write operations refused.
func TestServerLimits(t *testing.T) {
	is := testpki.NewIssuer(t)
	src := &fakeSource{certs: map[string][]*x509.Certificate{}}
	for i := 0; i < 3; i++ {
		a := fmt.Sprintf("u%d@example.com", i)
		src.certs[a] = []*x509.Certificate{is.UserCert(t, testpki.RSAKey(t, 2048, 0), testpki.CertOptions{Emails: []string{a}})}
	}
	addr := startServer(t, src, ServerConfig{MaxInFlight: 1})
	c, err := ldap.DialURL("ldap://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := ldap.NewSearchRequest(DefaultBaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2, 0, false,
		"(|(mail=u0@example.com)(mail=u1@example.com)(mail=u2@example.com))", nil, nil)
	res, err := c.Search(req)
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) || res == nil || len(res.Entries) != 2 {
		t.Errorf("size limit 2: %v entries, %v", res, err)
	}
	if err := c.Add(ldap.NewAddRequest("mail=x,"+DefaultBaseDN, nil)); !ldap.IsErrorWithCode(err, ldap.LDAPResultUnwillingToPerform) {
		t.Errorf("add: %v", err)
	}

	// The store is down: unavailable, and the message says nothing more.
	down := startServer(t, &fakeSource{err: errors.New("vault sealed at 10.0.0.7")}, ServerConfig{})
	c2, _ := ldap.DialURL("ldap://" + down)
	defer c2.Close()
	_, err = c2.Search(ldap.NewSearchRequest(DefaultBaseDN, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(mail=a@example.com)", nil, nil))
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultUnavailable) || strings.Contains(err.Error(), "10.0.0.7") {
		t.Errorf("store down: %v", err)
	}

	// One search in flight at a time: the second is answered busy.
	block := &fakeSource{certs: src.certs, block: make(chan struct{})}
	busy := startServer(t, block, ServerConfig{MaxInFlight: 1})
	c3, _ := ldap.DialURL("ldap://" + busy)
	defer c3.Close()
	first := make(chan error, 1)
	go func() {
		_, err := c3.Search(ldap.NewSearchRequest(DefaultBaseDN, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(mail=u0@example.com)", nil, nil))
		first <- err
	}()
	time.Sleep(100 * time.Millisecond)
	c4, _ := ldap.DialURL("ldap://" + busy)
	defer c4.Close()
	_, err = c4.Search(ldap.NewSearchRequest(DefaultBaseDN, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(mail=u1@example.com)", nil, nil))
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultBusy) {
		t.Errorf("second search while one runs: %v, want busy", err)
	}
	close(block.block)
	if err := <-first; err != nil {
		t.Errorf("first search: %v", err)
	}

	// One connection past its search rate gets busy; a new connection is
	// served.
	rated := startServer(t, src, ServerConfig{SearchRate: 2})
	c5, _ := ldap.DialURL("ldap://" + rated)
	defer c5.Close()
	var ok, refused int
	for i := 0; i < 10; i++ {
		_, err := c5.Search(ldap.NewSearchRequest(DefaultBaseDN, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(mail=u0@example.com)", nil, nil))
		switch {
		case err == nil:
			ok++
		case ldap.IsErrorWithCode(err, ldap.LDAPResultBusy):
			refused++
		default:
			t.Fatalf("search %d: %v", i, err)
		}
	}
	if ok < 4 || ok > 5 || refused != 10-ok {
		t.Errorf("10 quick searches at 2/s (burst 4): %d served, %d busy", ok, refused)
	}
	c6, _ := ldap.DialURL("ldap://" + rated)
	defer c6.Close()
	if _, err := c6.Search(ldap.NewSearchRequest(DefaultBaseDN, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(mail=u0@example.com)", nil, nil)); err != nil {
		t.Errorf("a new connection: %v", err)
	}
}
