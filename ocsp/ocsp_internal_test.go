package ocsp

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"
	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
)

// The delegated OCSP signer is renewed by the responder itself a month
// before it expires, and the new one is kept with the CA's files.
func TestOCSPSignerRenewal(t *testing.T) {
	dir := t.TempDir()
	authDB, err := db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(dir, "db")})
	if err != nil {
		t.Fatal(err)
	}
	defer authDB.Shutdown()
	a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), BaseURL: "http://ca.example.com", IssuerKeyType: ca.KeyTypeEC}, authDB)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	r, err := New(a, 0)
	if err != nil {
		t.Fatal(err)
	}
	first := r.Signer()
	if got := first.NotAfter.Sub(first.NotBefore); got < signerLifetime-time.Hour || got > signerLifetime+time.Hour {
		t.Errorf("signer lifetime %s, want %s", got, signerLifetime)
	}
	// A restart within its life keeps it.
	r2, err := New(a, 0)
	if err != nil || !r2.Signer().Equal(first) {
		t.Fatalf("a second responder made a new signer: %v", err)
	}
	// A month before it ends, the next signature renews it.
	r.now = func() time.Time { return first.NotAfter.Add(-signerRenewBefore + time.Hour) }
	r.mu.Lock()
	err = r.loadOrRenewSigner()
	r.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	second := r.Signer()
	if second.Equal(first) || second.CheckSignatureFrom(a.Intermediate()) != nil {
		t.Fatal("the signer was not renewed by the intermediate")
	}
	kept, _, _, err := ca.ReadDelegated(filepath.Join(dir, "ca"), keystore.Files(filepath.Join(dir, "ca")), keystore.OCSP, SignerCertFile)
	if err != nil || !kept.Equal(second) {
		t.Errorf("the renewed signer was not kept: %v", err)
	}
}
