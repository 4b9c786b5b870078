package pfxconnector_test

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// FuzzDecode feeds arbitrary PFX bytes and passwords to Decode, which
// reads files admins upload. It must never panic; every refusal must be one
// of the package's errors and must not repeat the password; every success
// must carry a key and a certificate, and KeyMatches must be true only for
// the key's certificate. The seeds are real PFX files (legacy 3DES/SHA-1 MAC,
// AES/PBES2 with SHA-256 MAC, no password, with a chain) built at set-up
// from a fixed test key (testdata/fuzz-key.pem: generating keys under the
// fuzzer's instrumentation would take its whole budget); what the fuzzer
// finds is kept in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	b, err := os.ReadFile("testdata/fuzz-key.pem")
	if err != nil {
		f.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		f.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "fuzz@example.com"},
		EmailAddresses: []string{"fuzz@example.com"}, NotBefore: time.Unix(1.7e9, 0), NotAfter: time.Unix(2e9, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.(crypto.Signer).Public(), key)
	if err != nil {
		f.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	for _, seed := range []struct {
		enc   *pkcs12.Encoder
		pw    string
		chain []*x509.Certificate
	}{
		{pkcs12.LegacyDES, "legacy-password", nil},
		{pkcs12.Modern2023, "modern-password", []*x509.Certificate{cert}},
		{pkcs12.Passwordless, "", nil},
	} {
		pfx, err := seed.enc.Encode(key, cert, seed.chain, seed.pw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pfx, seed.pw)
		f.Add(pfx, "wrong-password")
	}
	certOnly, err := pkcs12.Modern2023.EncodeTrustStore([]*x509.Certificate{cert}, "truststore")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(certOnly, "truststore")
	f.Add([]byte{0x30, 0x80, 0x02, 0x01, 0x03}, "x")

	f.Fuzz(func(t *testing.T, pfx []byte, password string) {
		d, err := pfxconnector.Decode(pfx, password)
		if err != nil {
			if !errors.Is(err, pfxconnector.ErrMalformed) && !errors.Is(err, pfxconnector.ErrWrongPassword) &&
				!errors.Is(err, pfxconnector.ErrNoKey) && !errors.Is(err, pfxconnector.ErrNoCertificate) &&
				!errors.Is(err, pfxconnector.ErrTooCostly) {
				t.Fatalf("unclassified error: %v", err)
			}
			// The password may be a word of the message ("password"); it
			// leaks if the message follows it: with every byte of the
			// password changed, the message must still contain it.
			if len(password) >= 4 && strings.Contains(err.Error(), password) {
				other := []byte(password)
				for i := range other {
					other[i] ^= 1
				}
				if _, err2 := pfxconnector.Decode(pfx, string(other)); err2 != nil && !strings.Contains(err2.Error(), password) {
					t.Fatalf("the error repeats the password: %v", err)
				}
			}
			return
		}
		if d.Key == nil || d.Cert == nil {
			t.Fatalf("success without key or certificate: %+v", d)
		}
		if d.KeyMatches != pfxconnector.PublicKeyMatches(d.Key, d.Cert) {
			t.Fatalf("KeyMatches %v for a certificate that does not carry the key", d.KeyMatches)
		}
	})
}

// FuzzParseIntune feeds arbitrary JSON to ParseIntune, which reads the
// Intune record files admins upload and the ImportIntunePfx requests. It
// must never panic; every refusal is ErrIntuneFormat; every record it
// returns is complete: a user, a 40-hex-digit thumbprint, one of Intune's
// purposes and paddings, a PFX and an encrypted password.
func FuzzParseIntune(f *testing.F) {
	f.Add([]byte(`{"thumbprint":"00112233445566778899aabbccddeeff00112233","intendedPurpose":"SmimeEncryption","userPrincipalName":"a@example.com","paddingScheme":"OaepSha512","encryptedPfxBlob":"MAA=","encryptedPfxPassword":"AAEC","providerName":"p","keyName":"k"}`))
	f.Add([]byte(`[{"Thumbprint":"00112233445566778899AABBCCDDEEFF00112233","IntendedPurpose":1,"UserPrincipalName":"a@example.com","PaddingScheme":3,"EncryptedPfxBlob":[48,0],"EncryptedPfxPassword":"AAEC"}]`))
	f.Add([]byte(`{"value":[{"thumbprint":"00112233445566778899aabbccddeeff00112233","userPrincipalName":"b@example.com","encryptedPfxBlob":"MAA=","encryptedPfxPassword":"AAEC"}]}`))
	purposes := map[string]bool{"unassigned": true, "smimeEncryption": true, "smimeSigning": true, "vpn": true, "wifi": true}
	paddings := map[string]bool{"none": true, "pkcs1": true, "oaepSha1": true, "oaepSha256": true, "oaepSha384": true, "oaepSha512": true}
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := pfxconnector.ParseIntune(data)
		if err != nil {
			if !errors.Is(err, pfxconnector.ErrIntuneFormat) {
				t.Fatalf("refusal is not ErrIntuneFormat: %v", err)
			}
			return
		}
		for _, r := range recs {
			if r.UserPrincipalName == "" || len(r.Thumbprint) != 40 || strings.ToLower(r.Thumbprint) != r.Thumbprint ||
				!purposes[r.IntendedPurpose] || !paddings[r.PaddingScheme] || len(r.PFX) == 0 || len(r.EncryptedPassword) == 0 {
				t.Fatalf("incomplete record accepted: %+v", r)
			}
		}
	})
}
