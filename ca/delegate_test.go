package ca_test

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"path/filepath"
	"testing"
	"time"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/testing/testpki"
)

var testDelegate = ca.Delegate{
	Key: keystore.Profile, Spec: keystore.Spec{Type: ca.KeyTypeEC, Bits: 256},
	CertFile: "delegate.crt", What: "test delegate",
	Template: x509.Certificate{Subject: pkix.Name{CommonName: "delegate"}, KeyUsage: x509.KeyUsageDigitalSignature},
	Lifetime: 30 * 24 * time.Hour, RenewBefore: 7 * 24 * time.Hour,
}

// A delegated certificate is issued by the intermediate once, kept while it
// is valid beyond RenewBefore, and replaced, with a new key, when it is due
// or no longer the intermediate's; ReadDelegated reads it without the CA.
func TestDelegated(t *testing.T) {
	c := testpki.NewCA(t, ca.KeyTypeEC)
	now := time.Now()
	first, _, err := c.Delegated(testDelegate, now)
	if err != nil {
		t.Fatal(err)
	}
	if first.CheckSignatureFrom(c.Intermediate()) != nil || first.IsCA || first.Subject.CommonName != "delegate" ||
		first.NotAfter.Sub(first.NotBefore) != testDelegate.Lifetime+time.Minute {
		t.Fatalf("delegate: CA %v, subject %s, validity %s", first.IsCA, first.Subject, first.NotAfter.Sub(first.NotBefore))
	}
	again, _, err := c.Delegated(testDelegate, now.Add(time.Hour))
	if err != nil || !again.Equal(first) {
		t.Fatalf("a valid delegate was replaced: %v", err)
	}
	due, key, err := c.Delegated(testDelegate, first.NotAfter.Add(-testDelegate.RenewBefore+time.Minute))
	if err != nil || due.Equal(first) || due.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(first.PublicKey) {
		t.Fatalf("a due delegate was not renewed with a new key: %v", err)
	}
	dir := filepath.Join(c.Dir, "ca")
	kept, keptKey, inter, err := ca.ReadDelegated(dir, keystore.Files(dir), testDelegate.Key, testDelegate.CertFile)
	if err != nil || !kept.Equal(due) || !inter.Equal(c.Intermediate()) || !keptKey.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
		t.Fatalf("ReadDelegated: %v", err)
	}
}
