package libcrypto_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"

	"github.com/smimeca/smimeca/ca/keystore/libcrypto"
	"github.com/smimeca/smimeca/internal/testing/testpki"
)

// wrap wraps key and checks that, in a libcrypto build, an RSA key is
// taken over (a build without the tag returns the key itself).
func wrap(t testing.TB, key crypto.Signer) crypto.Signer {
	t.Helper()
	w, err := libcrypto.Wrap(key)
	if err != nil {
		t.Fatal(err)
	}
	if _, goKey := w.(*rsa.PrivateKey); goKey == libcrypto.Enabled {
		t.Fatalf("Wrap returned %T in a build with Enabled=%v", w, libcrypto.Enabled)
	}
	return w
}

// Every result is Go's: PKCS#1 v1.5 signatures byte for byte (they are
// deterministic), PSS signatures verify, decryptions give the plaintext,
// for both key sizes a CA uses and every hash a signature may name.
func TestSameResultsAsGo(t *testing.T) {
	for i, bits := range []int{2048, 3072} {
		goKey := testpki.RSAKey(t, bits, i)
		k := wrap(t, goKey)
		if !goKey.PublicKey.Equal(k.Public()) {
			t.Fatal("the public key changed")
		}
		for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			hh := h.New()
			hh.Write([]byte("the to-be-signed bytes"))
			digest := hh.Sum(nil)
			sig, err := k.Sign(rand.Reader, digest, h)
			if err != nil {
				t.Fatalf("%d %s: %v", bits, h, err)
			}
			want, _ := rsa.SignPKCS1v15(nil, goKey, h, digest)
			if !bytes.Equal(sig, want) {
				t.Errorf("%d %s: the signature differs from Go's", bits, h)
			}
		}
		digest := sha256.Sum256([]byte("pss"))
		pss, err := k.Sign(rand.Reader, digest[:], &rsa.PSSOptions{Hash: crypto.SHA256, SaltLength: rsa.PSSSaltLengthEqualsHash})
		if err != nil || rsa.VerifyPSS(&goKey.PublicKey, crypto.SHA256, digest[:], pss, nil) != nil {
			t.Errorf("%d PSS: %v", bits, err)
		}
		if _, err := k.Sign(rand.Reader, digest[:20], crypto.SHA256); err == nil {
			t.Errorf("%d: a digest of the wrong length was signed", bits)
		}
		dec := k.(crypto.Decrypter)
		for _, n := range []int{1, 16, 32, goKey.Size() - 11} {
			msg := make([]byte, n)
			rand.Read(msg)
			//lint:ignore SA1019 SCEP's pkcsPKIEnvelope uses rsaEncryption: what the RA key decrypts
			ct, _ := rsa.EncryptPKCS1v15(rand.Reader, &goKey.PublicKey, msg)
			//lint:ignore SA1019 as smallstep/pkcs7 may ask the key for it
			for _, opts := range []crypto.DecrypterOpts{nil, &rsa.PKCS1v15DecryptOptions{}} {
				got, err := dec.Decrypt(rand.Reader, ct, opts)
				if err != nil || !bytes.Equal(got, msg) {
					t.Errorf("%d: PKCS#1 v1.5 decryption of %d bytes (%T): %v", bits, n, opts, err)
				}
			}
			oaep, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, &goKey.PublicKey, msg[:min(n, 32)], nil)
			if got, err := dec.Decrypt(rand.Reader, oaep, &rsa.OAEPOptions{Hash: crypto.SHA256}); err != nil || !bytes.Equal(got, msg[:min(n, 32)]) {
				t.Errorf("%d: OAEP decryption: %v", bits, err)
			}
		}
		junk := make([]byte, goKey.Size())
		rand.Read(junk)
		junk[0] = 0
		if _, err := dec.Decrypt(rand.Reader, junk, nil); !errors.Is(err, rsa.ErrDecryption) {
			t.Errorf("%d: junk decrypted: %v", bits, err)
		}
		if _, err := dec.Decrypt(rand.Reader, junk[:10], nil); err == nil {
			t.Errorf("%d: a short ciphertext decrypted", bits)
		}
	}
}

// One key signs from many goroutines at once.
func TestConcurrentUse(t *testing.T) {
	goKey := testpki.RSAKey(t, 2048, 0)
	k := wrap(t, goKey)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				d := sha256.Sum256([]byte{byte(g), byte(i)})
				sig, err := k.Sign(nil, d[:], crypto.SHA256)
				if err != nil || rsa.VerifyPKCS1v15(&goKey.PublicKey, crypto.SHA256, d[:], sig) != nil {
					t.Errorf("goroutine %d signature %d: %v", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Keys that are not RSA are returned as they are.
func TestOtherKeysUnchanged(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	w, err := libcrypto.Wrap(ec)
	if err != nil || w != crypto.Signer(ec) {
		t.Errorf("Wrap(ECDSA) = %T, %v", w, err)
	}
}

// BenchmarkSign compares one RSA-2048 PKCS#1 v1.5 signature by Go's key
// and through Wrap (OpenSSL in a libcrypto build): the ratio is the speed-up
// of every enrolment's RA and issuing signatures.
func BenchmarkSign(b *testing.B) {
	goKey := testpki.RSAKey(b, 2048, 0)
	d := sha256.Sum256([]byte("x"))
	for name, k := range map[string]crypto.Signer{"go": goKey, "wrapped": wrap(b, goKey)} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if _, err := k.Sign(nil, d[:], crypto.SHA256); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
