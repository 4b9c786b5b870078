package pfxconnector_test

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"strings"
	"testing"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// withMACIterations re-encodes a PFX with another MAC iteration count
// (its MAC then no longer verifies: what counts is whether the count is
// refused before any key derivation).
func withMACIterations(t testing.TB, pfx []byte, n int) []byte {
	t.Helper()
	var outer struct {
		Version  int
		AuthSafe asn1.RawValue
		MacData  struct {
			Mac struct {
				Algorithm pkix.AlgorithmIdentifier
				Digest    []byte
			}
			MacSalt    []byte
			Iterations int `asn1:"optional,default:1"`
		} `asn1:"optional"`
	}
	if _, err := asn1.Unmarshal(pfx, &outer); err != nil {
		t.Fatal(err)
	}
	outer.MacData.Iterations = n
	b, err := asn1.Marshal(outer)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A PFX whose MAC asks for more than MaxIterations is refused, with any
// password, before any key derivation (which is where the cost is: 2 000 000
// iterations took ~2 s on the wrong-password path); usual counts decode.
func TestIterationCountIsBounded(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"a@example.com"}})
	for _, enc := range []*pkcs12.Encoder{pkcs12.LegacyDES, pkcs12.Modern2023} {
		pfx := is.PFX(t, enc, key, cert, "pw")
		if _, err := pfxconnector.Decode(pfx, "pw"); err != nil {
			t.Fatalf("a usual PFX: %v", err)
		}
		high := withMACIterations(t, pfx, pfxconnector.MaxIterations)
		if _, err := pfxconnector.Decode(high, "pw"); !errors.Is(err, pfxconnector.ErrWrongPassword) {
			t.Errorf("%d MAC iterations (the bound) were not tried: %v", pfxconnector.MaxIterations, err)
		}
		for _, n := range []int{pfxconnector.MaxIterations + 1, 1<<31 - 1} {
			_, err := pfxconnector.Decode(withMACIterations(t, pfx, n), "any password")
			if !errors.Is(err, pfxconnector.ErrTooCostly) || !strings.Contains(err.Error(), "at most") {
				t.Errorf("%d MAC iterations: %v, want ErrTooCostly", n, err)
			}
		}
	}
}

// BenchmarkHostilePFX is the cost of refusing a PFX whose MAC asks for
// 2^31-1 iterations, against BenchmarkDecode's one real decode.
func BenchmarkHostilePFX(b *testing.B) {
	is := testpki.NewIssuer(b)
	key := testpki.RSAKey(b, 2048, 0)
	pfx := withMACIterations(b, is.PFX(b, pkcs12.LegacyDES, key, is.UserCert(b, key, testpki.CertOptions{}), "pw"), 1<<31-1)
	for i := 0; i < b.N; i++ {
		if _, err := pfxconnector.Decode(pfx, "wrong"); !errors.Is(err, pfxconnector.ErrTooCostly) {
			b.Fatal(err)
		}
	}
}
