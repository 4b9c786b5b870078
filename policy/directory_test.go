package policy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testpki"
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
