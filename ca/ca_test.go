package ca_test

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/internal/testing/certlint"
	"github.com/smimeca/smimeca/internal/testing/testpki"
)

var oidStepProvisioner = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 37476, 9000, 64, 1}

func leafTemplate(now time.Time) ca.Template {
	return ca.Template{
		CommonName: "alice@example.com", Emails: []string{"alice@example.com"},
		KeyUsage: []string{"digitalSignature"}, ExtKeyUsage: []string{"emailProtection"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(365 * 24 * time.Hour),
	}
}

func TestIssueFollowsTemplateNotCSR(t *testing.T) {
	for _, kt := range []string{ca.KeyTypeEC, ca.KeyTypeRSA} {
		t.Run(kt, func(t *testing.T) {
			c := testpki.NewCA(t, kt)
			key := testpki.RSAKey(t, 2048, 0)
			csr := testpki.CSR(t, key, &x509.CertificateRequest{
				DNSNames: []string{"evil.example"}, EmailAddresses: []string{"mallory@example.com"},
			})
			now := time.Now()
			chain, err := c.Issue(context.Background(), csr, leafTemplate(now))
			if err != nil {
				t.Fatal(err)
			}
			leaf := chain[0]
			if leaf.Subject.CommonName != "alice@example.com" || len(leaf.EmailAddresses) != 1 || leaf.EmailAddresses[0] != "alice@example.com" {
				t.Errorf("names = %q %q, want alice@example.com only", leaf.Subject.CommonName, leaf.EmailAddresses)
			}
			if len(leaf.DNSNames) != 0 {
				t.Errorf("DNS names copied from CSR: %q", leaf.DNSNames)
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("key usage = %v", leaf.KeyUsage)
			}
			if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageEmailProtection {
				t.Errorf("EKU = %v", leaf.ExtKeyUsage)
			}
			if leaf.IsCA {
				t.Error("leaf is a CA")
			}
			if got := leaf.NotAfter.Sub(leaf.NotBefore); got < 364*24*time.Hour {
				t.Errorf("validity %s, want about a year (step-ca's 24h default must not apply)", got)
			}
			if len(leaf.CRLDistributionPoints) != 1 || leaf.CRLDistributionPoints[0] != "http://ca.test/crl" {
				t.Errorf("CDP = %q", leaf.CRLDistributionPoints)
			}
			for _, ext := range leaf.Extensions {
				if ext.Id.Equal(oidStepProvisioner) {
					t.Error("leaf carries the smallstep provisioner extension")
				}
			}
			if !leaf.PublicKey.(*rsa.PublicKey).Equal(&key.PublicKey) {
				t.Error("leaf key is not the CSR key")
			}
			if err := c.VerifyIssued(leaf, now); err != nil {
				t.Errorf("VerifyIssued: %v", err)
			}
			certlint.Check(t, "leaf", leaf.Raw)
			certlint.Check(t, "issuing CA", c.Intermediate().Raw)
			pool := x509.NewCertPool()
			pool.AddCert(c.Root())
			inter := x509.NewCertPool()
			inter.AddCert(c.Intermediate())
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
				t.Errorf("chain: %v", err)
			}
		})
	}
}

func TestRevokeAndCRL(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	ctx := context.Background()
	csr := testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil)
	chain, err := c.Issue(ctx, csr, leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	serial := chain[0].SerialNumber.String()
	if err := c.Revoke(ctx, serial, ca.ReasonKeyCompromise, "test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, serial, ca.ReasonKeyCompromise, "again"); !errors.Is(err, ca.ErrAlreadyRevoked) {
		t.Errorf("second revoke: %v, want ErrAlreadyRevoked", err)
	}
	if err := c.Revoke(ctx, "12345", 0, ""); !errors.Is(err, ca.ErrNotFound) {
		t.Errorf("unknown serial: %v, want ErrNotFound", err)
	}
	der, err := c.CRL()
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(c.Intermediate()); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	found := false
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(chain[0].SerialNumber) == 0 {
			found = true
			if e.ReasonCode != ca.ReasonKeyCompromise {
				t.Errorf("reason = %d", e.ReasonCode)
			}
		}
	}
	if !found {
		t.Error("revoked serial missing from CRL")
	}
	certlint.CheckCRL(t, "CRL", der)
	if err := c.VerifyIssued(chain[0], time.Now()); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("VerifyIssued of revoked cert: %v", err)
	}
}

// A revocation committed from RevocationRecord is what step-ca itself
// reads: the serial is revoked, on the next CRL with its reason, and a
// second record for it does not overwrite the first.
func TestRevocationRecord(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	ctx := context.Background()
	chain, err := c.Issue(ctx, testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	serial := chain[0].SerialNumber.String()
	rec, err := c.RevocationRecord(serial, ca.ReasonSuperseded, "renewed", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if rev, _ := c.IsRevoked(serial); rev {
		t.Fatal("revoked before the record was committed")
	}
	if err := c.DB.Update(&database.Tx{Operations: rec.Ops()}); err != nil {
		t.Fatal(err)
	}
	if !rec.Applied() {
		t.Error("the first revocation did not apply")
	}
	if rev, _ := c.IsRevoked(serial); !rev {
		t.Fatal("step-ca does not see the committed revocation")
	}
	if err := c.RefreshCRL(); err != nil {
		t.Fatal(err)
	}
	der, _ := c.CRL()
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].ReasonCode != ca.ReasonSuperseded {
		t.Errorf("CRL entries %+v", crl.RevokedCertificateEntries)
	}
	again, _ := c.RevocationRecord(serial, ca.ReasonKeyCompromise, "again", time.Now())
	if err := c.DB.Update(&database.Tx{Operations: again.Ops()}); err != nil {
		t.Fatal(err)
	}
	if again.Applied() {
		t.Error("a second revocation overwrote the first")
	}
	if _, err := c.RevocationRecord("12345", 0, "", time.Now()); !errors.Is(err, ca.ErrNotFound) {
		t.Errorf("unknown serial: %v", err)
	}
	if _, err := c.RevocationRecord(serial, 2, "", time.Now()); err == nil {
		t.Error("reason code 2 (cACompromise) accepted for a leaf")
	}
}

// Certificates follow the S/MIME BR mailbox-validated strict profile: zlint
// (its CA/B Forum S/MIME and RFC 5280 lints) finds no error, and each
// carries the policy and the URLs that say where its status and issuer are.
func TestCertificatesFollowSMIMEBaselineRequirements(t *testing.T) {
	for _, kt := range []string{ca.KeyTypeEC, ca.KeyTypeRSA} {
		t.Run(kt, func(t *testing.T) {
			c := testpki.NewCA(t, kt)
			tmpl := leafTemplate(time.Now())
			tmpl.KeyUsage = append(tmpl.KeyUsage, "contentCommitment")
			chain, err := c.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), tmpl)
			if err != nil {
				t.Fatal(err)
			}
			leaf, inter := chain[0], c.Intermediate()
			certlint.Check(t, "leaf", leaf.Raw)
			certlint.Check(t, "issuing CA", inter.Raw)
			certlint.Check(t, "root", c.Root().Raw)
			if len(leaf.PolicyIdentifiers) != 1 || !leaf.PolicyIdentifiers[0].Equal(ca.OIDMailboxStrict) {
				t.Errorf("leaf policies %v, want %v", leaf.PolicyIdentifiers, ca.OIDMailboxStrict)
			}
			if len(inter.PolicyIdentifiers) != 1 || inter.PolicyIdentifiers[0].String() != "2.5.29.32.0" {
				t.Errorf("issuing CA policies %v, want anyPolicy", inter.PolicyIdentifiers)
			}
			for _, crt := range []*x509.Certificate{leaf, inter} {
				if len(crt.SubjectKeyId) == 0 || len(crt.AuthorityKeyId) == 0 {
					t.Errorf("%s: SKI %x AKI %x, want both", crt.Subject.CommonName, crt.SubjectKeyId, crt.AuthorityKeyId)
				}
				if crt.SerialNumber.BitLen() < 64 {
					t.Errorf("%s: serial has %d bits, want ≥ 64", crt.Subject.CommonName, crt.SerialNumber.BitLen())
				}
			}
			if got := leaf.OCSPServer; len(got) != 1 || got[0] != "http://ca.test"+ca.OCSPPath {
				t.Errorf("leaf OCSP = %q", got)
			}
			if got := leaf.IssuingCertificateURL; len(got) != 1 || got[0] != "http://ca.test"+ca.IssuerPath {
				t.Errorf("leaf caIssuers = %q", got)
			}
			if got := inter.CRLDistributionPoints; len(got) != 1 || got[0] != "http://ca.test"+ca.RootCRLPath {
				t.Errorf("issuing CA's CRL DP = %q", got)
			}
			der, err := c.RootCRL()
			if err != nil {
				t.Fatal(err)
			}
			crl, err := x509.ParseRevocationList(der)
			if err != nil {
				t.Fatal(err)
			}
			if err := crl.CheckSignatureFrom(c.Root()); err != nil {
				t.Errorf("root CRL signature: %v", err)
			}
			if left := time.Until(crl.NextUpdate); left < 180*24*time.Hour || left > 366*24*time.Hour {
				t.Errorf("root CRL next update in %s, want 6–12 months", left)
			}
			certlint.CheckCRL(t, "root CRL", der)
		})
	}
}

// The issuing CA of a new hierarchy vouches for S/MIME only: EKU
// emailProtection and critical name constraints that exclude every DNS name
// and IP address; the leaves it issues verify for emailProtection.
func TestIssuingCAIsConstrainedToSMIME(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	inter := c.Intermediate()
	if len(inter.ExtKeyUsage) != 1 || inter.ExtKeyUsage[0] != x509.ExtKeyUsageEmailProtection {
		t.Errorf("issuing CA EKU %v", inter.ExtKeyUsage)
	}
	if len(inter.ExcludedDNSDomains) != 1 || inter.ExcludedDNSDomains[0] != "" || len(inter.ExcludedIPRanges) != 2 || !inter.PermittedDNSDomainsCritical {
		t.Errorf("name constraints: DNS %q, IP %v, critical %v", inter.ExcludedDNSDomains, inter.ExcludedIPRanges, inter.PermittedDNSDomainsCritical)
	}
	chain, err := c.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(c.Root())
	inters.AddCert(inter)
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
		t.Errorf("leaf under the constrained CA: %v", err)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a leaf of the S/MIME CA verifies for TLS servers")
	}
}

func TestVerifyIssuedRejectsForeignCertificates(t *testing.T) {
	a := testpki.NewCA(t, ca.KeyTypeEC)
	b := testpki.NewCA(t, ca.KeyTypeEC)
	chain, err := b.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.VerifyIssued(chain[0], time.Now()); err == nil {
		t.Error("a certificate of another CA was accepted")
	}
	if err := b.VerifyIssued(chain[0], time.Now().Add(2*365*24*time.Hour)); err == nil {
		t.Error("an expired certificate was accepted")
	}
}

func TestOpenPersistsAndProtectsKeys(t *testing.T) {
	dir := t.TempDir()
	open := func() (*ca.Authority, db.AuthDB) {
		authDB, err := db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(dir, "db")})
		if err != nil {
			t.Fatal(err)
		}
		a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), BaseURL: "http://x"}, authDB)
		if err != nil {
			t.Fatal(err)
		}
		return a, authDB
	}
	first, firstDB := open()
	chain, err := first.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	ra1, raKey1 := first.RA()
	if pub, ok := raKey1.Public().(*rsa.PublicKey); !ok || pub.N.BitLen() < 2048 {
		t.Error("RA key is not RSA >= 2048")
	}
	if ra1.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Error("RA certificate lacks keyEncipherment")
	}
	first.Close()
	firstDB.Shutdown()

	second, secondDB := open()
	defer secondDB.Shutdown()
	defer second.Close()
	if !second.Root().Equal(first.Root()) || !second.Intermediate().Equal(first.Intermediate()) {
		t.Error("CA certificates changed across restart")
	}
	if ra2, _ := second.RA(); !ra2.Equal(ra1) {
		t.Error("RA certificate changed across restart")
	}
	if _, err := second.Certificate(chain[0].SerialNumber.String()); err != nil {
		t.Errorf("issued certificate lost across restart: %v", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	keys := 0
	for _, e := range entries {
		fi, _ := e.Info()
		if strings.HasSuffix(e.Name(), ".key") {
			keys++
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %o, want 600", e.Name(), fi.Mode().Perm())
			}
		}
	}
	if keys != 3 {
		t.Errorf("found %d key files, want 3 (root, intermediate, RA; the delegates' are made by their users)", keys)
	}
}

func TestRejectsWorldReadableKey(t *testing.T) {
	dir := t.TempDir()
	authDB, err := db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(dir, "db")})
	if err != nil {
		t.Fatal(err)
	}
	defer authDB.Shutdown()
	a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), BaseURL: "http://x"}, authDB)
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := os.Chmod(filepath.Join(dir, "ca", "intermediate_ca.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), BaseURL: "http://x"}, authDB); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("open with 0644 key: %v", err)
	}
}

// Sign leaves the certificate's record to the caller: until its operations
// are committed the CA does not know the certificate (it cannot be renewed
// with or revoked), and committing them stores exactly what step-ca would.
func TestSignDefersTheRecord(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	ctx := context.Background()
	iss, err := c.Sign(ctx, testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	leaf := iss.Chain[0]
	serial := leaf.SerialNumber.String()
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 || leaf.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %s: want a positive random 128-bit number", serial)
	}
	if _, err := c.Certificate(serial); !errors.Is(err, ca.ErrNotFound) {
		t.Fatalf("before commit: %v, want ErrNotFound", err)
	}
	if err := c.VerifyIssued(leaf, time.Now()); err == nil {
		t.Fatal("an uncommitted certificate verifies as issued")
	}
	if len(iss.Record.Ops()) == 0 {
		t.Fatal("no record operations")
	}
	if err := c.DB.Update(&database.Tx{Operations: iss.Record.Ops()}); err != nil {
		t.Fatal(err)
	}
	stored, err := c.Certificate(serial)
	if err != nil || !stored.Equal(leaf) {
		t.Fatalf("after commit: %v", err)
	}
	if err := c.VerifyIssued(leaf, time.Now()); err != nil {
		t.Fatalf("committed certificate: %v", err)
	}
	if err := c.Revoke(ctx, serial, ca.ReasonKeyCompromise, "test"); err != nil {
		t.Fatalf("revoke committed certificate: %v", err)
	}
	// Issue still stores by itself, and serials differ.
	chain, err := c.Issue(ctx, testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if chain[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two certificates with one serial")
	}
	if _, err := c.Certificate(chain[0].SerialNumber.String()); err != nil {
		t.Errorf("Issue did not store: %v", err)
	}
}

// A private policy OID is added after the S/MIME BR one; a malformed OID,
// or the reserved one named again, and a BaseURL that is not plain http are
// refused at Open.
func TestPolicyOIDsAndBaseURL(t *testing.T) {
	dir := t.TempDir()
	authDB, err := db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(dir, "db")})
	if err != nil {
		t.Fatal(err)
	}
	defer authDB.Shutdown()
	for _, cfg := range []ca.Config{
		{Dir: filepath.Join(dir, "bad"), BaseURL: "http://x", PolicyOIDs: []string{"1.2.x"}},
		{Dir: filepath.Join(dir, "bad"), BaseURL: "http://x", PolicyOIDs: []string{ca.OIDMailboxStrict.String()}},
		{Dir: filepath.Join(dir, "bad"), BaseURL: "https://x"},
	} {
		if _, err := ca.Open(cfg, authDB); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), BaseURL: "http://ca.example.com/", PolicyOIDs: []string{"1.3.6.1.4.1.99999.1.2"}}, authDB)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	chain, err := a.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if p := chain[0].PolicyIdentifiers; len(p) != 2 || !p[0].Equal(ca.OIDMailboxStrict) || p[1].String() != "1.3.6.1.4.1.99999.1.2" {
		t.Errorf("policies %v", p)
	}
	if got := chain[0].CRLDistributionPoints; len(got) != 1 || got[0] != "http://ca.example.com/crl" {
		t.Errorf("CRL DP %q (a trailing slash on BaseURL must not double)", got)
	}
	certlint.Check(t, "leaf with a private policy", chain[0].Raw)
}

// crlRace is a database on which another node's CRL of the same number is
// stored just before the next CRL this node stores (armed once): the
// other node generated from the list as it was before the latest
// revocation, and stored first.
type crlRace struct {
	database.DB
	armed bool
}

func (r *crlRace) CmpAndSwap(bucket, key, old, value []byte) ([]byte, bool, error) {
	if r.armed && string(bucket) == "x509_crl" {
		r.armed = false
		var stale, ours db.CertificateRevocationListInfo
		if err := json.Unmarshal(old, &stale); err != nil {
			return nil, false, err
		}
		if err := json.Unmarshal(value, &ours); err != nil {
			return nil, false, err
		}
		stale.Number = ours.Number // the older list under our number
		b, _ := json.Marshal(stale)
		if err := r.DB.Set(bucket, key, b); err != nil {
			return nil, false, err
		}
	}
	return r.DB.CmpAndSwap(bucket, key, old, value)
}

// TestRevocationSurvivesLostCRLRace: when another node's CRL of the same
// number, generated before a revocation committed, is stored before this
// node's, the revocation stays pending and the next CRL read of any node
// lists it (the CRL number still only grows).
func TestRevocationSurvivesLostCRLRace(t *testing.T) {
	dir := t.TempDir()
	store, err := datastore.OpenBolt(filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	race := &crlRace{DB: store.DB.DB}
	c, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), IssuerKeyType: ca.KeyTypeEC, BaseURL: "http://x"}, &db.DB{DB: race})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	chain, err := c.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	serial := chain[0].SerialNumber
	first := testpki.CurrentCRL(t, c)
	rec, err := c.RevocationRecord(serial.String(), ca.ReasonKeyCompromise, "lost", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := race.Update(&database.Tx{Operations: rec.Ops()}); err != nil {
		t.Fatal(err)
	}
	race.armed = true
	testpki.CurrentCRL(t, c) // this node's CRL loses to the other node's
	if race.armed {
		t.Fatal("the CRL read did not regenerate")
	}
	next := testpki.CurrentCRL(t, c)
	listed := false
	for _, e := range next.RevokedCertificateEntries {
		listed = listed || e.SerialNumber.Cmp(serial) == 0
	}
	if !listed {
		t.Errorf("CRL %s lacks serial %s, revoked before the lost race", next.Number, serial)
	}
	if next.Number.Cmp(first.Number) <= 0 {
		t.Errorf("CRL number %s after %s", next.Number, first.Number)
	}
}
