package ca_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/certificates/db"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/internal/testing/testhsm"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// backends opens, per subtest, the key store under test: 0600 files
// (softkms) and a SoftHSM2 token made by scripts/softhsm.sh.
var backends = []struct {
	name string
	open func(t *testing.T, caDir string) keystore.Store
}{
	{"softkms", func(t *testing.T, caDir string) keystore.Store { return keystore.Files(caDir) }},
	{"softhsm", func(t *testing.T, caDir string) keystore.Store {
		tok := tokenFor(t)
		k, err := keystore.Open(tok.URI, caDir, "")
		if err != nil {
			t.Fatal(err)
		}
		return k
	}},
}

// tokens are the SoftHSM2 tokens of this test binary by test name, so that
// a reopen within a test finds the same token.
var tokens = map[string]*testhsm.Token{}

func tokenFor(t *testing.T) *testhsm.Token {
	if tok, ok := tokens[t.Name()]; ok {
		return tok
	}
	tok := testhsm.New(t)
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	tokens[t.Name()] = tok
	return tok
}

// Every key the CA uses works through either store, the CA comes back the
// same after a restart, and with a token no private key is in a file.
func TestKeyStoreBackends(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			dir := t.TempDir()
			caDir := filepath.Join(dir, "ca")
			open := func() (*ca.Authority, keystore.Store, db.AuthDB) {
				authDB, err := db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(dir, "db")})
				if err != nil {
					t.Fatal(err)
				}
				keys := b.open(t, caDir)
				a, err := ca.Open(ca.Config{Dir: caDir, BaseURL: "http://x", Keys: keys}, authDB)
				if err != nil {
					t.Fatal(err)
				}
				return a, keys, authDB
			}
			a, keys, authDB := open()
			chain, err := a.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
			if err != nil {
				t.Fatal(err)
			}
			if err := chain[0].CheckSignatureFrom(a.Intermediate()); err != nil {
				t.Errorf("leaf signed through the %s store does not verify: %v", b.name, err)
			}
			// The RA decrypts (PKCS#1 v1.5, as SCEP envelopes) and signs.
			ra, raKey := a.RA()
			secret := []byte("0123456789abcdef0123456789abcdef")
			//lint:ignore SA1019 SCEP's pkcsPKIEnvelope uses rsaEncryption: what the RA must decrypt
			ct, _ := rsa.EncryptPKCS1v15(rand.Reader, ra.PublicKey.(*rsa.PublicKey), secret)
			//lint:ignore SA1019 as smallstep/pkcs7 asks the RA key for it
			opts := &rsa.PKCS1v15DecryptOptions{}
			if pt, err := raKey.Decrypt(rand.Reader, ct, opts); err != nil || string(pt) != string(secret) {
				t.Errorf("RA decrypt: %q, %v", pt, err)
			}
			digest := sha256.Sum256([]byte("certrep"))
			sig, err := raKey.Sign(rand.Reader, digest[:], crypto.SHA256)
			if err != nil || rsa.VerifyPKCS1v15(ra.PublicKey.(*rsa.PublicKey), crypto.SHA256, digest[:], sig) != nil {
				t.Errorf("RA sign: %v", err)
			}
			if crt, key, err := a.Delegated(testDelegate, time.Now()); err != nil || crt.CheckSignatureFrom(a.Intermediate()) != nil {
				t.Errorf("delegated certificate: %v", err)
			} else if sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil || crt.CheckSignature(x509.ECDSAWithSHA256, []byte("certrep"), sig) != nil {
				t.Errorf("delegated key signs: %v", err)
			}
			if _, err := a.CRL(); err != nil {
				t.Errorf("CRL: %v", err)
			}
			conn, err := pfxconnector.LoadOrCreateKey(keys)
			if err != nil {
				t.Fatal(err)
			}
			hashes := pfxconnector.DecryptableHashes(conn)
			if b.name == "softkms" && len(hashes) != len(pfxconnector.PasswordHashes) || !slices.Contains(hashes, pfxconnector.SHA1) {
				t.Errorf("connector key decrypts OAEP with %v", hashes)
			}
			a.Close()
			keys.Close()
			authDB.Shutdown()

			second, keys2, db2 := open()
			defer db2.Shutdown()
			defer keys2.Close()
			defer second.Close()
			ra2, _ := second.RA()
			if !second.Root().Equal(a.Root()) || !second.Intermediate().Equal(a.Intermediate()) || !ra2.Equal(ra) {
				t.Error("CA certificates changed across a restart")
			}
			conn2, err := pfxconnector.LoadOrCreateKey(keys2)
			if err != nil || !conn2.Public().(*rsa.PublicKey).Equal(conn.Public()) {
				t.Errorf("connector key changed across a restart: %v", err)
			}
			files, _ := filepath.Glob(filepath.Join(caDir, "*.key"))
			if want := b.name == "softkms"; (len(files) > 0) != want {
				t.Errorf("%s: key files in the CA directory: %v", b.name, files)
			}
		})
	}
}

// A CA whose certificates are on disk but whose keys are not in the store
// named is refused, naming the key that is missing — never re-created.
func TestMissingKeyIsRefusedNotRecreated(t *testing.T) {
	s := newStoreCA(t, backends[0].open)
	caDir, authDB := s.dir, s.db
	a, err := s.open()
	if err != nil {
		t.Fatal(err)
	}
	root := a.Root()
	a.Close()
	keys := backends[1].open(t, caDir) // a token
	defer keys.Close()
	_, err = ca.Open(ca.Config{Dir: caDir, BaseURL: "http://x", Keys: keys}, authDB)
	if err == nil || !strings.Contains(err.Error(), "object=smimeca-issuing") || !strings.Contains(err.Error(), "does not") {
		t.Fatalf("open with the keys elsewhere: %v", err)
	}
	if _, err := keys.Key(keystore.Root); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a root key was made in the token: %v", err)
	}
	crt, _ := os.ReadFile(filepath.Join(caDir, ca.RootCertFile))
	if !strings.Contains(string(crt), "CERTIFICATE") || root == nil {
		t.Error("root certificate touched")
	}
}

// The root key is offline: once the hierarchy exists the CA opens, issues
// and serves the root CRL with no root key in the store (files or token);
// only a ceremony (LoadRoot + SignRootCRL) needs it, and a CRL it signs is
// served without a restart. Without the issuing CA, the root key is needed.
func TestRootKeyOffline(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := newStoreCA(t, b.open)
			a, err := s.open()
			if err != nil {
				t.Fatal(err)
			}
			root := a.Root()
			crl1, _ := a.RootCRL()
			a.Close()
			// A ceremony elsewhere (the offline root) signs the next CRL,
			// then the key leaves the serving store.
			rootKey, err := s.keys.Key(keystore.Root)
			if err != nil {
				t.Fatal(err)
			}
			ceremony := t.TempDir()
			time.Sleep(1100 * time.Millisecond) // a new CRL number (seconds)
			if err := ca.SignRootCRL(ceremony, root, rootKey, 180*24*time.Hour, time.Now()); err != nil {
				t.Fatal(err)
			}
			if err := ca.SignRootCRL(ceremony, root, rootKey, 400*24*time.Hour, time.Now()); err == nil {
				t.Error("a root CRL valid over 366 days was signed")
			}
			if err := s.keys.Delete(keystore.Root); err != nil {
				t.Fatal(err)
			}
			if _, err := s.keys.Key(keystore.Root); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the root key is still in the store: %v", err)
			}
			a, err = s.open()
			if err != nil {
				t.Fatalf("open without the root key: %v", err)
			}
			defer a.Close()
			chain, err := a.Sign(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
			if err != nil || chain.Chain[0] == nil {
				t.Fatalf("issue without the root key: %v", err)
			}
			if got, err := a.RootCRL(); err != nil || !bytes.Equal(got, crl1) {
				t.Fatalf("root CRL without the root key: %v", err)
			}
			// The ceremony's CRL, copied in, is served by the running CA.
			next, err := os.ReadFile(filepath.Join(ceremony, "root_ca.crl"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(s.dir, "root_ca.crl.new"), next, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(s.dir, "root_ca.crl.new"), filepath.Join(s.dir, "root_ca.crl")); err != nil {
				t.Fatal(err)
			}
			crl2, err := a.RootCRL()
			if err != nil || bytes.Equal(crl2, crl1) {
				t.Fatalf("the ceremony's CRL is not served: %v", err)
			}
			parsed, _ := x509.ParseRevocationList(crl2)
			if parsed.CheckSignatureFrom(root) != nil || parsed.NextUpdate.Before(time.Now().Add(179*24*time.Hour)) {
				t.Errorf("ceremony CRL: next update %s", parsed.NextUpdate)
			}
			// No issuing CA: creating it needs the root key, which is not there.
			a.Close()
			os.Remove(filepath.Join(s.dir, ca.IntermediateCertFile))
			if _, err := s.open(); err == nil || !strings.Contains(err.Error(), "root") {
				t.Errorf("an issuing CA made without the root key: %v", err)
			}
		})
	}
}

// Start-up errors say which URI failed and what to fix, never the PIN.
func TestKeyStoreErrors(t *testing.T) {
	tok := tokenFor(t)
	pin := tok.PIN(t)
	base := strings.SplitN(tok.URI, "?", 2)[0]
	cases := []struct{ name, uri, pin, want string }{
		{"wrong PIN", base + "?pin-value=00000000", "", "PIN is wrong"},
		{"wrong PIN from the environment", base, "11111111", "PIN is wrong"},
		{"missing module", "pkcs11:module-path=/nonexistent/libvendor.so;token=smimeca?pin-value=" + pin, "", "/nonexistent/libvendor.so"},
		{"missing token", strings.Replace(base, "token=smimeca", "token=nosuch", 1) + "?pin-value=" + pin, "", "no such token: check token="},
		{"missing PIN file", base + "?pin-source=/nonexistent/pin", "", "/nonexistent/pin"},
		{"not a URI", "vault:transit", "", "neither softkms nor a pkcs11: URI"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := keystore.Open(c.uri, t.TempDir(), c.pin)
			if err == nil {
				k.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if strings.Contains(err.Error(), pin) || (c.pin != "" && strings.Contains(err.Error(), c.pin)) || strings.Contains(err.Error(), "00000000") {
				t.Errorf("error %q shows a PIN", err)
			}
		})
	}
	// SoftHSM2 without its configuration looks for tokens elsewhere.
	t.Run("SOFTHSM2_CONF unset", func(t *testing.T) {
		t.Setenv("SOFTHSM2_CONF", "")
		k, err := keystore.Open(tok.URI, t.TempDir(), "")
		if err == nil {
			k.Close()
			t.Fatal("opened")
		}
		if !strings.Contains(err.Error(), "$SOFTHSM2_CONF is not set") {
			t.Errorf("error %q does not name SOFTHSM2_CONF", err)
		}
	})

}

// A CA made with key files moves into a token: every key is imported and
// works from there (the CA opens on the token alone and its certificates
// stay the same), the files go only when asked, and a second run finds the
// keys already there.
func TestMigrateFilesToToken(t *testing.T) {
	s := newStoreCA(t, backends[0].open)
	caDir, authDB := s.dir, s.db
	a, err := s.open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pfxconnector.LoadOrCreateKey(keystore.Files(caDir)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Delegated(testDelegate, time.Now()); err != nil { // the profile signer's key
		t.Fatal(err)
	}
	a.Close()
	keys := backends[1].open(t, caDir) // a token
	defer keys.Close()
	if _, err := keystore.Migrate(caDir, keystore.Files(caDir), false); err == nil {
		t.Error("migrated into files")
	}
	moved, err := keystore.Migrate(caDir, keys, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(moved) != 5 { // root, issuing, RA, profile, connector
		t.Fatalf("moved %+v", moved)
	}
	for _, m := range moved {
		if m.Already || m.Removed {
			t.Errorf("%+v", m)
		}
		if _, err := os.Stat(m.File); err != nil {
			t.Errorf("%s removed without --remove-files", m.File)
		}
	}
	again, err := keystore.Migrate(caDir, keys, true)
	if err != nil || len(again) != 5 || !again[0].Already || !again[0].Removed {
		t.Fatalf("second run: %+v, %v", again, err)
	}
	if files, _ := filepath.Glob(filepath.Join(caDir, "*.key")); len(files) != 0 {
		t.Errorf("key files left: %v", files)
	}
	b, err := ca.Open(ca.Config{Dir: caDir, BaseURL: "http://x", Keys: keys}, authDB)
	if err != nil {
		t.Fatalf("the CA does not open on the token alone: %v", err)
	}
	defer b.Close()
	if !b.Root().Equal(a.Root()) || !b.Intermediate().Equal(a.Intermediate()) {
		t.Error("the hierarchy changed")
	}
	chain, err := b.Issue(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil || chain[0].CheckSignatureFrom(a.Intermediate()) != nil {
		t.Fatalf("issue with the imported issuing key: %v", err)
	}
}

// storeCA is a CA directory, its database and a key store of backend b, for
// one test; open opens the CA on them.
type storeCA struct {
	dir     string
	keys    keystore.Store
	db      db.AuthDB
	keyType string // IssuerKeyType ("" = the default, EC)
}

func newStoreCA(t *testing.T, b func(t *testing.T, caDir string) keystore.Store) *storeCA {
	t.Helper()
	dir := t.TempDir()
	authDB, err := db.New(&db.Config{Type: "bbolt", DataSource: filepath.Join(dir, "db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authDB.Shutdown() })
	keys := b(t, filepath.Join(dir, "ca"))
	t.Cleanup(func() { keys.Close() })
	return &storeCA{dir: filepath.Join(dir, "ca"), keys: keys, db: authDB}
}

func (s *storeCA) open() (*ca.Authority, error) {
	return ca.Open(ca.Config{Dir: s.dir, BaseURL: "http://x", Keys: s.keys, IssuerKeyType: s.keyType}, s.db)
}

// A store that holds a CA key whose certificate is missing (a new data
// directory pointed at a production token, a lost certificate file) is
// never overwritten: start-up stops, and the key is still there.
func TestExistingKeyIsNeverReplaced(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := newStoreCA(t, b.open)
			a, err := s.open()
			if err != nil {
				t.Fatal(err)
			}
			rootPub := a.Root().PublicKey
			a.Close()
			if err := os.Remove(filepath.Join(s.dir, ca.RootCertFile)); err != nil {
				t.Fatal(err)
			}
			_, err = s.open()
			if !errors.Is(err, fs.ErrExist) || !strings.Contains(err.Error(), "restore the certificate") {
				t.Fatalf("open without the root certificate: %v", err)
			}
			k, err := s.keys.Key(keystore.Root)
			if err != nil || !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(rootPub) {
				t.Errorf("the root key was replaced: %v", err)
			}
		})
	}
}

// An RA certificate that no longer chains to the issuing CA is reissued
// with a new key in the same store, replacing the old key there (the
// renewal path, in files and in a token).
func TestRAKeyRenewedInStore(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := newStoreCA(t, b.open)
			s.keyType = ca.KeyTypeRSA // the issuing CA signs the RA
			open := func() *ca.Authority {
				a, err := s.open()
				if err != nil {
					t.Fatal(err)
				}
				return a
			}
			a := open()
			ra1, _ := a.RA()
			a.Close()
			staleRA(t, s.dir)
			b2 := open()
			defer b2.Close()
			ra2, raKey2 := b2.RA()
			if ra2.Equal(ra1) || ra2.CheckSignatureFrom(b2.Intermediate()) != nil || !raKey2.Public().(*rsa.PublicKey).Equal(ra2.PublicKey) {
				t.Fatal("RA not reissued with its new key")
			}
			if raKey2.Public().(*rsa.PublicKey).Equal(ra1.PublicKey) {
				t.Error("the RA kept its old key")
			}
			if k, err := s.keys.Key(keystore.RA); err != nil || !k.Public().(*rsa.PublicKey).Equal(ra2.PublicKey) {
				t.Errorf("the store holds another RA key: %v", err)
			}
		})
	}
}

// staleRA replaces the RA certificate by one its parent did not sign (the
// root's own).
func staleRA(t *testing.T, dir string) {
	t.Helper()
	root, _ := os.ReadFile(filepath.Join(dir, ca.RootCertFile))
	if err := os.WriteFile(filepath.Join(dir, ca.RACertFile), root, 0o644); err != nil {
		t.Fatal(err)
	}
}

// With an ECDSA issuing CA (the default) the RSA root signs the RA, so
// GetCACert serves only RSA certificates and the RA's issuer, and the
// CAFingerprint anchor is the root. The offline root cannot renew the RA
// at start-up: a stale RA stops the start naming the ceremony, which makes
// a new key and certificate under the root.
func TestRAUnderTheRoot(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := newStoreCA(t, b.open)
			a, err := s.open()
			if err != nil {
				t.Fatal(err)
			}
			ra1, _ := a.RA()
			if _, ok := a.Intermediate().PublicKey.(*ecdsa.PublicKey); !ok {
				t.Fatalf("the default issuing CA is %T, not ECDSA", a.Intermediate().PublicKey)
			}
			if _, ok := a.Root().PublicKey.(*rsa.PublicKey); !ok || ra1.CheckSignatureFrom(a.Root()) != nil {
				t.Fatal("the RA is not signed by an RSA root")
			}
			if got := a.SCEPCACerts(); len(got) != 1 || !got[0].Equal(a.Root()) || !a.SCEPAnchor().Equal(a.Root()) {
				t.Fatalf("GetCACert serves %d certificates after the RA; want the root alone", len(got))
			}
			if a.RARenewalDue() {
				t.Error("a new RA is already due for renewal")
			}
			a.Close()
			staleRA(t, s.dir)
			if _, err := s.open(); err == nil || !strings.Contains(err.Error(), "smimeca root reissue-ra") {
				t.Fatalf("opened with an RA the root did not sign (or without naming the ceremony): %v", err)
			}
			crt, err := ca.ReissueRA(s.dir, s.keys, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(crt.RawSubject, ra1.RawSubject) || bytes.Equal(crt.RawSubjectPublicKeyInfo, ra1.RawSubjectPublicKeyInfo) {
				t.Error("the ceremony's RA is not the same subject with a new key")
			}
			a, err = s.open()
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			ra2, key2 := a.RA()
			if !ra2.Equal(crt) || ra2.CheckSignatureFrom(a.Root()) != nil || !key2.Public().(*rsa.PublicKey).Equal(ra2.PublicKey) {
				t.Fatal("the CA did not open on the ceremony's RA and key")
			}
		})
	}
}

// With an RSA issuing CA the issuing CA signs the RA; GetCACert serves it
// and the root (or without the root when configured), and the ceremony
// has nothing to do.
func TestRAUnderAnRSAIssuingCA(t *testing.T) {
	s := newStoreCA(t, backends[0].open)
	s.keyType = ca.KeyTypeRSA
	a, err := s.open()
	if err != nil {
		t.Fatal(err)
	}
	if got := a.SCEPCACerts(); len(got) != 2 || !got[0].Equal(a.Intermediate()) || !got[1].Equal(a.Root()) || !a.SCEPAnchor().Equal(a.Root()) {
		t.Fatalf("GetCACert serves %d certificates after the RA; want the issuing CA and the root", len(got))
	}
	a.Close()
	a, err = ca.Open(ca.Config{Dir: s.dir, BaseURL: "http://x", Keys: s.keys, SCEPOmitRoot: true}, s.db)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if got := a.SCEPCACerts(); len(got) != 1 || !a.SCEPAnchor().Equal(a.Intermediate()) {
		t.Fatal("SCEPOmitRoot: GetCACert's anchor is not the issuing CA")
	}
	if _, err := ca.ReissueRA(s.dir, s.keys, time.Now()); err == nil || !strings.Contains(err.Error(), "nothing for the root to do") {
		t.Errorf("the ceremony renewed an RA the issuing CA signs: %v", err)
	}
}

// --db must be a postgres:// URL, and an error never shows its password.
func TestOpenPostgresRefusesOtherURLs(t *testing.T) {
	for _, dsn := range []string{"mysql://u:s3cret@h/db", "s3cret", "postgres://u:s3cret@127.0.0.1:1/db?connect_timeout=1"} {
		_, err := datastore.OpenPostgres(dsn)
		if err == nil {
			t.Fatalf("%s: opened", dsn)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

// The ceremony that renews the issuing CA keeps its key and profile, gives
// it a new serial and validity under the same root, and the CA opens and
// issues on it (the root key offline again).
func TestReissueIntermediate(t *testing.T) {
	s := newStoreCA(t, backends[0].open)
	a, err := s.open()
	if err != nil {
		t.Fatal(err)
	}
	old, root := a.Intermediate(), a.Root()
	a.Close()
	crt, err := ca.ReissueIntermediate(s.dir, s.keys, 5*365*24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if crt.SerialNumber.Cmp(old.SerialNumber) == 0 || !bytes.Equal(crt.RawSubjectPublicKeyInfo, old.RawSubjectPublicKeyInfo) ||
		!bytes.Equal(crt.RawSubject, old.RawSubject) || crt.CheckSignatureFrom(root) != nil {
		t.Fatal("the re-issued issuing CA is not the same CA under the same root")
	}
	if len(crt.ExcludedDNSDomains) != 1 || len(crt.ExcludedIPRanges) != 2 || !slices.Equal(crt.CRLDistributionPoints, old.CRLDistributionPoints) ||
		len(crt.ExtKeyUsage) != 1 || crt.ExtKeyUsage[0] != x509.ExtKeyUsageEmailProtection || !crt.MaxPathLenZero {
		t.Errorf("profile not kept: %+v", crt)
	}
	if err := os.Remove(filepath.Join(s.dir, "root_ca.key")); err != nil {
		t.Fatal(err)
	}
	a, err = s.open()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if !a.Intermediate().Equal(crt) {
		t.Fatal("the CA opened on the old issuing CA certificate")
	}
	iss, err := a.Sign(context.Background(), testpki.CSR(t, testpki.RSAKey(t, 2048, 0), nil), leafTemplate(time.Now()))
	if err != nil || iss.Chain[0].CheckSignatureFrom(crt) != nil {
		t.Fatalf("issue under the re-issued CA: %v", err)
	}
	// Without the root key there is no ceremony.
	if _, err := ca.ReissueIntermediate(s.dir, s.keys, time.Hour, time.Now()); err == nil {
		t.Error("re-issued without the root key")
	}
}
