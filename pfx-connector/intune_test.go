package pfxconnector_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Records as Intune's PFXImport module builds them decode to the PFX and
// its password with every padding scheme, also a password with Latin-1
// characters (the module sends one byte per character).
func TestIntuneRecordsAsTheModuleBuildsThem(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	connector := testpki.RSAKey(t, 2048, 1)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	for _, pw := range []string{"Secret-1", "pässwörd"} {
		pfx := is.PFX(t, pkcs12.Modern, key, cert, pw)
		for _, padding := range []string{"None", "OaepSha1", "OaepSha256", "OaepSha384", "OaepSha512"} {
			rec := testpki.IntuneRecord(t, &connector.PublicKey, cert, pfx, pw, "Alice@Example.com", "SmimeEncryption", padding)
			recs, err := pfxconnector.ParseIntune(testpki.IntuneJSON(t, rec))
			if err != nil || len(recs) != 1 {
				t.Fatalf("%s: %v", padding, err)
			}
			r := recs[0]
			if r.IntendedPurpose != "smimeEncryption" || r.UserPrincipalName != "Alice@Example.com" || r.Thumbprint != rec["thumbprint"] {
				t.Errorf("%s: %+v", padding, r)
			}
			got, err := r.Password(connector)
			if err != nil || got != pw {
				t.Fatalf("%s: password %q, %v; want %q", padding, got, err, pw)
			}
			if _, err := pfxconnector.Decode(r.PFX, got); err != nil {
				t.Errorf("%s: the record's PFX does not open with its password: %v", padding, err)
			}
			// Another key cannot decrypt it.
			if _, err := r.Password(testpki.RSAKey(t, 2048, 2)); !errors.Is(err, pfxconnector.ErrPasswordDecryption) {
				t.Errorf("%s: wrong key: %v", padding, err)
			}
		}
	}
}

// PKCS#1 v1.5 is refused before any decryption: it would be a padding
// oracle on the connector key.
func TestIntunePKCS1Refused(t *testing.T) {
	is := testpki.NewIssuer(t)
	key, connector := testpki.RSAKey(t, 2048, 0), testpki.RSAKey(t, 2048, 1)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	recs, err := pfxconnector.ParseIntune(testpki.IntuneJSON(t, testpki.IntuneRecord(t, &connector.PublicKey, cert, []byte("pfx"), "pw", "a@example.com", "SmimeEncryption", "Pkcs1")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := recs[0].Password(connector); !errors.Is(err, pfxconnector.ErrPKCS1Refused) || !strings.Contains(err.Error(), "OaepSha512") {
		t.Errorf("pkcs1: %v, want a refusal that says what to use", err)
	}
}

// The file shapes: one object, an array, Graph's {"value": [...]}, with a
// BOM, PascalCase names and numeric enums (PowerShell's ConvertTo-Json),
// and the PFX as a JSON array of bytes.
func TestIntuneFileShapes(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	connector := testpki.RSAKey(t, 2048, 1)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	pfx := is.PFX(t, pkcs12.Modern, key, cert, "pw")
	rec := testpki.IntuneRecord(t, &connector.PublicKey, cert, pfx, "pw", "alice@example.com", "Unassigned", "OaepSha256")
	one := testpki.IntuneJSON(t, rec)
	two := testpki.IntuneJSON(t, rec, rec)
	value, _ := json.Marshal(map[string]any{"@odata.context": "x", "value": []any{rec, rec, rec}})

	ps := map[string]any{}
	for k, v := range rec {
		ps[strings.ToUpper(k[:1])+k[1:]] = v
	}
	ps["IntendedPurpose"], ps["PaddingScheme"] = 1, 3
	nums := make([]int, len(pfx))
	for i, b := range pfx {
		nums[i] = int(b)
	}
	ps["EncryptedPfxBlob"] = nums
	psJSON, _ := json.Marshal(ps)

	for name, tc := range map[string]struct {
		data []byte
		n    int
	}{
		"object": {one, 1}, "array": {two, 2}, "graph list": {value, 3},
		"BOM": {append([]byte("\xef\xbb\xbf"), one...), 1}, "PowerShell ConvertTo-Json": {psJSON, 1},
	} {
		recs, err := pfxconnector.ParseIntune(tc.data)
		if err != nil || len(recs) != tc.n {
			t.Errorf("%s: %d records, %v; want %d", name, len(recs), err, tc.n)
			continue
		}
		if string(recs[0].PFX) != string(pfx) {
			t.Errorf("%s: PFX differs", name)
		}
		if pw, err := recs[0].Password(connector); err != nil || pw != "pw" {
			t.Errorf("%s: password %q %v", name, pw, err)
		}
	}
	if r, _ := pfxconnector.ParseIntune(psJSON); r[0].IntendedPurpose != "smimeEncryption" || r[0].PaddingScheme != "oaepSha256" {
		t.Errorf("numeric enums: %+v", r[0])
	}
}

// A record Intune would not accept is refused naming the record and field.
func TestIntuneRecordErrors(t *testing.T) {
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	base := testpki.IntuneRecord(t, &testpki.RSAKey(t, 2048, 1).PublicKey, cert, []byte("pfx"), "pw", "alice@example.com", "SmimeEncryption", "OaepSha512")
	for field, bad := range map[string]any{
		"userPrincipalName":    "",
		"thumbprint":           "abc",
		"intendedPurpose":      "Email",
		"paddingScheme":        "OaepSha3",
		"encryptedPfxBlob":     "%%%",
		"encryptedPfxPassword": "",
	} {
		rec := map[string]any{}
		for k, v := range base {
			rec[k] = v
		}
		rec[field] = bad
		_, err := pfxconnector.ParseIntune(testpki.IntuneJSON(t, base, rec))
		if !errors.Is(err, pfxconnector.ErrIntuneFormat) || !strings.Contains(err.Error(), "record 2") || !strings.Contains(err.Error(), field) {
			t.Errorf("%s=%v: %v, want an error naming record 2 and %s", field, bad, err, field)
		}
	}
	for _, junk := range []string{"", "42", "[]", `{"value": []}`, "not json"} {
		if _, err := pfxconnector.ParseIntune([]byte(junk)); !errors.Is(err, pfxconnector.ErrIntuneFormat) {
			t.Errorf("%q: %v", junk, err)
		}
	}
}
