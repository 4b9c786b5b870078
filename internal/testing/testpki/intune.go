package testpki

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"hash"
	"testing"
	"time"
)

// IntuneRecord builds one userPFXCertificate record exactly as Intune's
// PFXImport PowerShell module does (New-IntuneUserPfxCertificate, then its
// Newtonsoft serialisation): camelCase properties, enumerations as their
// C# names (StringEnumConverter: "SmimeEncryption", "OaepSha512"), the
// lower-case SHA-1 thumbprint, the PFX bytes in encryptedPfxBlob as base64,
// and the password — one byte per UTF-16 character, its low byte —
// encrypted to connector with padding ("OaepSha1" … "OaepSha512"; "None"
// becomes "OaepSha512" as in the module; "Pkcs1" gives a placeholder, as
// smimeca refuses that scheme unread) in base64.
func IntuneRecord(t testing.TB, connector *rsa.PublicKey, cert *x509.Certificate, pfx []byte, password, upn, purpose, padding string) map[string]any {
	t.Helper()
	pw := make([]byte, 0, len(password))
	for _, r := range password {
		pw = append(pw, byte(r)) // (byte)char, as the module's ConvertSecureStringToByteArray
	}
	if padding == "None" {
		padding = "OaepSha512"
	}
	var ct []byte
	var err error
	oaep := func(h hash.Hash) { ct, err = rsa.EncryptOAEP(h, rand.Reader, connector, pw, nil) }
	switch padding {
	case "Pkcs1":
		ct = []byte("PKCS#1 v1.5 ciphertext (smimeca refuses the scheme before decrypting)")
	case "OaepSha1":
		oaep(sha1.New())
	case "OaepSha256":
		oaep(sha256.New())
	case "OaepSha384":
		oaep(sha512.New384())
	case "OaepSha512":
		oaep(sha512.New())
	default:
		t.Fatalf("IntuneRecord: padding %q", padding)
	}
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum(cert.Raw)
	now := time.Now().Format("2006-01-02T15:04:05.9999999-07:00")
	return map[string]any{
		"thumbprint":           hex.EncodeToString(sum[:]),
		"intendedPurpose":      purpose,
		"userPrincipalName":    upn,
		"startDateTime":        cert.NotBefore.Format("2006-01-02T15:04:05-07:00"),
		"expirationDateTime":   cert.NotAfter.Format("2006-01-02T15:04:05-07:00"),
		"providerName":         "Microsoft Software Key Storage Provider",
		"keyName":              "PFXEncryptionKey",
		"paddingScheme":        padding,
		"encryptedPfxBlob":     base64.StdEncoding.EncodeToString(pfx),
		"encryptedPfxPassword": base64.StdEncoding.EncodeToString(ct),
		"createdDateTime":      now,
		"lastModifiedDateTime": now,
	}
}

// IntuneJSON serialises records as the module does (indented), one object
// for one record, an array for more.
func IntuneJSON(t testing.TB, records ...map[string]any) []byte {
	t.Helper()
	var v any = records
	if len(records) == 1 {
		v = records[0]
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}
