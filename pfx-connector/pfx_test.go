package pfxconnector_test

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

func TestDecodePicksTheKeysCertificate(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	// Chain first, leaf last: some exports order it so.
	pfx, err := pkcs12.Modern.Encode(key, is.Cert, []*x509.Certificate{cert}, "pw")
	if err != nil {
		t.Fatal(err)
	}
	d, err := pfxconnector.Decode(pfx, "pw")
	if err != nil {
		t.Fatal(err)
	}
	if !d.KeyMatches || !d.Cert.Equal(cert) || len(d.Chain) != 1 || !d.Chain[0].Equal(is.Cert) {
		t.Errorf("decoded %+v", d)
	}
	if _, err := pfxconnector.Decode(pfx, "wrong"); !errors.Is(err, pfxconnector.ErrWrongPassword) {
		t.Errorf("wrong password: %v", err)
	}
	if _, err := pfxconnector.Decode(make([]byte, 300<<10), "pw"); !errors.Is(err, pfxconnector.ErrMalformed) {
		t.Errorf("oversized: %v", err)
	}
}

func TestRewrapAndEnvelope(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	seen := map[string]bool{}
	for _, enc := range []pfxconnector.Encoding{pfxconnector.Legacy, pfxconnector.Modern} {
		w, err := pfxconnector.Rewrap(key, cert, []*x509.Certificate{is.Cert}, enc)
		if err != nil {
			t.Fatal(err)
		}
		if len(w.Password) < 24 || seen[w.Password] {
			t.Errorf("password %q is short or repeated", w.Password)
		}
		seen[w.Password] = true
		k, c, chain, err := pkcs12.DecodeChain(w.PFX, w.Password)
		if err != nil || !c.Equal(cert) || len(chain) != 1 || !k.(*rsa.PrivateKey).Equal(key) {
			t.Fatalf("re-wrapped file does not round-trip: %v", err)
		}
	}
	// Envelope recipients: RSA, valid now, keyEncipherment.
	dev := testpki.RSAKey(t, 2048, 1)
	devCert := is.UserCert(t, dev, testpki.CertOptions{Emails: []string{"d@example.com"}})
	if err := pfxconnector.CheckRecipient(devCert, time.Now()); err != nil {
		t.Fatal(err)
	}
	expired := is.UserCert(t, dev, testpki.CertOptions{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err := pfxconnector.CheckRecipient(expired, time.Now()); !errors.Is(err, pfxconnector.ErrBadRecipient) {
		t.Errorf("expired recipient: %v", err)
	}
	// OAEP-encrypted passwords with each hash, by any spelling of its name.
	for _, c := range []struct {
		h    pfxconnector.PasswordHash
		hash crypto.Hash
	}{{pfxconnector.SHA256, crypto.SHA256}, {"sha-256", crypto.SHA256}, {"", crypto.SHA256}, {"SHA384", crypto.SHA384}, {pfxconnector.SHA512, crypto.SHA512}, {"sha1", crypto.SHA1}} {
		ct, _ := rsa.EncryptOAEP(c.hash.New(), rand.Reader, &dev.PublicKey, []byte("pässword"), nil)
		if p, err := pfxconnector.DecryptPassword(dev, ct, c.h); err != nil || p != "pässword" {
			t.Errorf("%s: %q %v", c.h, p, err)
		}
	}
	if _, err := pfxconnector.DecryptPassword(dev, []byte("x"), "MD5"); err == nil || !strings.Contains(err.Error(), "SHA1") {
		t.Errorf("MD5: %v", err)
	}
	// A key in memory decrypts with every hash, in the preferred order.
	if got := pfxconnector.DecryptableHashes(dev); !slices.Equal(got, pfxconnector.PasswordHashes) {
		t.Errorf("DecryptableHashes = %v", got)
	}
	if _, err := pfxconnector.DecryptPassword(dev, []byte("junk"), pfxconnector.SHA512); !errors.Is(err, pfxconnector.ErrPasswordDecryption) {
		t.Errorf("junk ciphertext: %v", err)
	}
}

// BenchmarkRewrap measures one per-delivery re-wrap (the unit of a
// bundle's cost) for each encoding.
func BenchmarkRewrap(b *testing.B) {
	is := testpki.NewIssuer(b)
	key := testpki.RSAKey(b, 2048, 0)
	cert := is.UserCert(b, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	for _, c := range []struct {
		name string
		enc  pfxconnector.Encoding
	}{{"legacy-3des", pfxconnector.Legacy}, {"modern-aes", pfxconnector.Modern}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := pfxconnector.Rewrap(key, cert, nil, c.enc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecode measures opening one imported PFX (the unit of an
// import's CPU cost) in both encodings.
func BenchmarkDecode(b *testing.B) {
	is := testpki.NewIssuer(b)
	key := testpki.RSAKey(b, 2048, 0)
	cert := is.UserCert(b, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	for _, c := range []struct {
		name string
		enc  *pkcs12.Encoder
	}{{"legacy-des", pkcs12.LegacyDES}, {"modern2023", pkcs12.Modern2023}} {
		pfx, err := c.enc.Encode(key, cert, nil, "pw")
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := pfxconnector.Decode(pfx, "pw"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// RewrapAll keeps each key in its place whichever worker took it, and a key
// that does not parse fails alone, named by no key material.
func TestRewrapAllKeepsOrderAndFailsAlone(t *testing.T) {
	is := testpki.NewIssuer(t)
	var keys []pfxconnector.DERKey
	var certs []*x509.Certificate
	for i := range 5 {
		key := testpki.RSAKey(t, 2048, i)
		cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{fmt.Sprintf("u%d@example.com", i)}})
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		if i == 2 {
			der = []byte("not a key")
		}
		keys, certs = append(keys, pfxconnector.DERKey{CertDER: cert.Raw, KeyPKCS8: der, ChainDER: [][]byte{is.Cert.Raw}}), append(certs, cert)
	}
	out, errs := pfxconnector.RewrapAll(keys, pfxconnector.Modern)
	for i := range keys {
		if i == 2 {
			if errs[i] == nil || strings.Contains(errs[i].Error(), "not a key") {
				t.Errorf("broken key: %v", errs[i])
			}
			continue
		}
		if errs[i] != nil {
			t.Fatalf("key %d: %v", i, errs[i])
		}
		if _, c, _, err := pkcs12.DecodeChain(out[i].PFX, out[i].Password); err != nil || !c.Equal(certs[i]) {
			t.Errorf("entry %d holds another certificate: %v", i, err)
		}
	}
}

// A delivery's files (RewrapAll) are made with one PBKDF iteration and
// open in OpenSSL with their password, in both encodings; Rewrap, for
// files that rest outside an envelope, keeps the encoding's 2 048.
func TestDeliveryFilesUseOneIteration(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	info := func(name string, w pfxconnector.Rewrapped) string {
		t.Helper()
		in := filepath.Join(dir, name)
		if err := os.WriteFile(in, w.PFX, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("openssl", "pkcs12", "-info", "-noout", "-in", in, "-passin", "pass:"+w.Password).CombinedOutput()
		if err != nil {
			t.Fatalf("openssl pkcs12 -info %s: %s %v", name, out, err)
		}
		return string(out)
	}
	for _, enc := range []pfxconnector.Encoding{pfxconnector.Legacy, pfxconnector.Modern} {
		out, errs := pfxconnector.RewrapAll([]pfxconnector.DERKey{{CertDER: cert.Raw, KeyPKCS8: der}}, enc)
		if errs[0] != nil {
			t.Fatal(errs[0])
		}
		got := info(fmt.Sprintf("delivery-%d.p12", enc), out[0])
		if n := strings.Count(got, "Iteration 1\n") + strings.Count(got, "Iteration 1,"); n < 3 {
			t.Errorf("encoding %d: %d of the MAC, certificate and key derivations use one iteration:\n%s", enc, n, got)
		}
		if strings.Contains(got, "Iteration 2048") {
			t.Errorf("encoding %d: a delivery file derives with 2048 iterations:\n%s", enc, got)
		}
		rest, err := pfxconnector.Rewrap(key, cert, nil, enc)
		if err != nil {
			t.Fatal(err)
		}
		if got := info(fmt.Sprintf("rest-%d.p12", enc), rest); !strings.Contains(got, "Iteration 2048") {
			t.Errorf("encoding %d: Rewrap's file lost the encoding's iterations:\n%s", enc, got)
		}
	}
}

// A seeded re-wrap (a DDM asset) is the same file with the same password
// every time for one seed, opens with OpenSSL in both encodings, and a
// different seed gives a different password and file; short seeds are
// refused.
func TestRewrapSeededIsStable(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	k := pfxconnector.DERKey{CertDER: cert.Raw, KeyPKCS8: der, ChainDER: [][]byte{is.Cert.Raw}}
	seed := bytes.Repeat([]byte{7}, 32)
	other := bytes.Repeat([]byte{8}, 32)
	dir := t.TempDir()
	for _, enc := range []pfxconnector.Encoding{pfxconnector.Legacy, pfxconnector.Modern} {
		a, err := pfxconnector.RewrapSeeded(k, enc, seed)
		if err != nil {
			t.Fatal(err)
		}
		b, err := pfxconnector.RewrapSeeded(k, enc, seed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.PFX, b.PFX) || a.Password != b.Password {
			t.Errorf("encoding %d: two seeded re-wraps with one seed differ", enc)
		}
		c, err := pfxconnector.RewrapSeeded(k, enc, other)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.PFX, c.PFX) || a.Password == c.Password {
			t.Errorf("encoding %d: another seed gave the same file or password", enc)
		}
		in := filepath.Join(dir, fmt.Sprintf("seeded-%d.p12", enc))
		if err := os.WriteFile(in, a.PFX, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("openssl", "pkcs12", "-in", in, "-passin", "pass:"+a.Password, "-nodes", "-nocerts").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PRIVATE KEY") {
			t.Fatalf("openssl pkcs12 on the seeded file: %s %v", out, err)
		}
	}
	if _, err := pfxconnector.RewrapSeeded(k, pfxconnector.Legacy, seed[:16]); err == nil {
		t.Error("a 128-bit seed was accepted")
	}
}
