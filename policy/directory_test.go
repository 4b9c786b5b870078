package policy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
)

type countingSource struct {
	certs map[string][]policy.PublicCertificate
	reads int
	err   error
}

func (s *countingSource) Certificates(_ context.Context, user string) ([]policy.PublicCertificate, error) {
	s.reads++
	if s.err != nil {
		return nil, s.err
	}
	if c, ok := s.certs[user]; ok {
		return c, nil
	}
	return nil, policy.ErrNotFound
}

// The directory publishes only certificates that can be encrypted to now
// and name the address (an alias finds its user's certificates that name
// the alias), caches answers (also empty ones) until the TTL or a change,
// and passes escrow errors on.
func TestDirectoryRecipients(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	now := time.Now()
	mk := func(emails []string, nb, na time.Time, purpose string, revoked bool) policy.PublicCertificate {
		c := is.UserCert(t, key, testpki.CertOptions{Emails: emails, NotBefore: nb, NotAfter: na})
		m := policy.CertificateMetadata(c)
		m.Purpose = purpose
		if revoked {
			m.RevokedAt = now.Add(-time.Hour)
		}
		return policy.PublicCertificate{Escrowed: m, CertDER: c.Raw}
	}
	good := mk([]string{"alice@example.com", "a.old@example.com"}, now.Add(-time.Hour), now.Add(time.Hour), policy.PurposeEncryption, false)
	src := &countingSource{certs: map[string][]policy.PublicCertificate{"alice@example.com": {
		good,
		mk([]string{"alice@example.com"}, now.Add(-48*time.Hour), now.Add(-24*time.Hour), policy.PurposeEncryption, false), // expired
		mk([]string{"alice@example.com"}, now.Add(-time.Hour), now.Add(time.Hour), policy.PurposeSigning, false),           // signing
		mk([]string{"alice@example.com"}, now.Add(-time.Hour), now.Add(time.Hour), policy.PurposeEncryption, true),         // revoked
		mk([]string{"other@example.com"}, now.Add(-time.Hour), now.Add(time.Hour), policy.PurposeEncryption, false),        // names someone else
	}}}
	d := policy.NewDirectory(src, map[string]string{"a.old@example.com": "alice@example.com"}, time.Hour)
	ctx := context.Background()
	for _, addr := range []string{"Alice@Example.com", "a.old@example.com"} {
		got, err := d.Recipients(ctx, addr)
		if err != nil || len(got) != 1 || got[0].Equal(nil) || string(got[0].Raw) != string(good.CertDER) {
			t.Errorf("%s: %d certificates, %v; want the one current encryption certificate", addr, len(got), err)
		}
	}
	reads := src.reads
	d.Recipients(ctx, "alice@example.com")
	d.Recipients(ctx, "nobody@example.com")
	d.Recipients(ctx, "nobody@example.com")
	if src.reads != reads+1 {
		t.Errorf("%d escrow reads for one cached and two lookups of one unknown address, want 1", src.reads-reads)
	}
	d.Invalidate("alice@example.com", nil)
	d.Recipients(ctx, "alice@example.com")
	if src.reads != reads+2 {
		t.Error("a change did not drop the cached answer")
	}
	if got, err := d.Recipients(ctx, "not an address"); got != nil || err != nil {
		t.Errorf("a non-address: %v %v", got, err)
	}
	src.err = errors.New("sealed")
	if _, err := d.Recipients(ctx, "bob@example.com"); err == nil {
		t.Error("an escrow error was swallowed")
	}
}

type lister []string

func (l lister) Users(context.Context) ([]string, error) { return l, nil }

// Anonymous searches of made-up addresses, or of addresses outside the
// allowed domains, never reach the escrow once the index is loaded; a user
// escrowed here after the load is found.
func TestDirectoryIndexSparesTheEscrow(t *testing.T) {
	is := testpki.NewIssuer(t)
	c := is.UserCert(t, testpki.RSAKey(t, 2048, 0), testpki.CertOptions{Emails: []string{"alice@example.com"}})
	pc := policy.PublicCertificate{Escrowed: policy.CertificateMetadata(c), CertDER: c.Raw}
	src := &countingSource{certs: map[string][]policy.PublicCertificate{"alice@example.com": {pc}}}
	domains, _ := policy.NewDomains([]string{"example.com"})
	d := policy.NewDirectory(src, nil, time.Hour, policy.WithDirectoryDomains(domains))
	ctx := context.Background()
	if _, err := d.LoadIndex(ctx, lister{"alice@example.com"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400; i++ {
		for _, a := range []string{fmt.Sprintf("made-up-%d@example.com", i), fmt.Sprintf("x%d@evil.org", i)} {
			if got, err := d.Recipients(ctx, a); err != nil || len(got) != 0 {
				t.Fatalf("%s: %v %v", a, got, err)
			}
		}
	}
	if src.reads != 0 {
		t.Fatalf("%d escrow reads for 800 made-up addresses", src.reads)
	}
	if got, _ := d.Recipients(ctx, "alice@example.com"); len(got) != 1 || src.reads != 1 {
		t.Fatalf("alice: %d certificates, %d reads", len(got), src.reads)
	}
	// bob is escrowed on this node after the load: the change event adds him.
	src.certs["bob@example.com"] = src.certs["alice@example.com"]
	if got, _ := d.Recipients(ctx, "bob@example.com"); len(got) != 0 || src.reads != 1 {
		t.Fatal("bob looked up before he was known")
	}
	d.Invalidate("bob@example.com", nil)
	if _, err := d.Recipients(ctx, "bob@example.com"); err != nil || src.reads != 2 {
		t.Fatalf("bob after his import was not read: %v, %d reads", err, src.reads)
	}
	// A reload keeps him even if the listing (another node's view) lags.
	if _, err := d.LoadIndex(ctx, lister{"alice@example.com", "carol@example.com"}); err != nil {
		t.Fatal(err)
	}
	d.Invalidate("bob@example.com", nil) // drop the cached answer only
	d.Recipients(ctx, "bob@example.com")
	d.Recipients(ctx, "carol@example.com")
	if src.reads != 4 {
		t.Errorf("after the reload: %d reads, want bob's and carol's", src.reads)
	}
}
