package pfxconnector

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// IntuneRecord is one record of Intune's PFX import: Microsoft Graph's
// userPFXCertificate as the PFXImport PowerShell module builds it
// (New-IntuneUserPfxCertificate): the PFX itself in encryptedPfxBlob
// (base64; the name notwithstanding, only its password protects it), its
// password encrypted to the connector key with paddingScheme in
// encryptedPfxPassword (base64), the user's UPN, the certificate's SHA-1
// thumbprint and the intended purpose. Enumerations are read in any case
// and as their numbers; encryptedPfxBlob also as PowerShell's
// ConvertTo-Json writes a byte array (a JSON array of numbers).
type IntuneRecord struct {
	UserPrincipalName string
	// Thumbprint is the certificate's SHA-1, lower-case hex.
	Thumbprint string
	// IntendedPurpose is unassigned, smimeEncryption, smimeSigning, vpn or wifi.
	IntendedPurpose string
	// PaddingScheme is none (the module then uses oaepSha512), pkcs1
	// (read, but Password refuses it), oaepSha1, oaepSha256, oaepSha384 or
	// oaepSha512.
	PaddingScheme     string
	PFX               []byte
	EncryptedPassword []byte
	// ProviderName and KeyName name the key storage provider and the key
	// the password was encrypted to; kept for the audit, not used.
	ProviderName string
	KeyName      string
}

// Intune's enumerations (Graph's userPfxIntendedPurpose and
// userPfxPaddingScheme), in Graph's spelling, by their numbers.
var (
	intunePurposes = map[int]string{0: "unassigned", 1: "smimeEncryption", 2: "smimeSigning", 4: "vpn", 8: "wifi"}
	intunePaddings = map[int]string{0: "none", 1: "pkcs1", 2: "oaepSha1", 3: "oaepSha256", 4: "oaepSha384", 5: "oaepSha512"}
)

// ErrIntuneFormat means a file or record is not Intune's PFX import format.
var ErrIntuneFormat = errors.New("pfx: not an Intune userPFXCertificate record")

// ErrPKCS1Refused refuses a record whose password is encrypted with
// PKCS#1 v1.5.
var ErrPKCS1Refused = errors.New("pfx: paddingScheme pkcs1 is refused (a PKCS#1 v1.5 decryption would be an oracle on the connector key; Intune has dropped it too): rebuild the record with -PaddingScheme OaepSha512")

// maxIntuneRecords bounds the records of one file.
const maxIntuneRecords = 100000

// ParseIntune reads Intune userPFXCertificate records: one JSON object,
// an array of them, or Graph's list answer ({"value": [...]}). A record
// that lacks a field or holds a value Intune would not is refused with
// its number and the field to fix.
func ParseIntune(data []byte) ([]IntuneRecord, error) {
	raws, err := IntuneRecords(data)
	if err != nil {
		return nil, err
	}
	out := make([]IntuneRecord, len(raws))
	for i, raw := range raws {
		r, err := parseIntuneRecord(raw)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i+1, err)
		}
		out[i] = r
	}
	return out, nil
}

// IntuneRecords splits a file of Intune records (one object, an array,
// or {"value": [...]}) into each record's JSON, unparsed.
func IntuneRecords(data []byte) ([]json.RawMessage, error) {
	data = bytes.TrimSpace(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))) // PowerShell writes a UTF-8 BOM
	var raws []json.RawMessage
	switch {
	case len(data) > 0 && data[0] == '[':
		if err := json.Unmarshal(data, &raws); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrIntuneFormat, err)
		}
	case len(data) > 0 && data[0] == '{':
		var list struct {
			Value []json.RawMessage `json:"value"`
		}
		if err := json.Unmarshal(data, &list); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrIntuneFormat, err)
		}
		if list.Value != nil {
			raws = list.Value
		} else {
			raws = []json.RawMessage{data}
		}
	default:
		return nil, fmt.Errorf("%w: expected a JSON object or array", ErrIntuneFormat)
	}
	if len(raws) == 0 || len(raws) > maxIntuneRecords {
		return nil, fmt.Errorf("%w: %d records (1 to %d per file)", ErrIntuneFormat, len(raws), maxIntuneRecords)
	}
	return raws, nil
}

// parseIntuneRecord reads one record. encoding/json matches the field
// names in any case (the module writes camelCase, PowerShell PascalCase).
func parseIntuneRecord(raw json.RawMessage) (IntuneRecord, error) {
	var j struct {
		UserPrincipalName    string          `json:"userPrincipalName"`
		Thumbprint           string          `json:"thumbprint"`
		IntendedPurpose      json.RawMessage `json:"intendedPurpose"`
		PaddingScheme        json.RawMessage `json:"paddingScheme"`
		EncryptedPfxBlob     json.RawMessage `json:"encryptedPfxBlob"`
		EncryptedPfxPassword string          `json:"encryptedPfxPassword"`
		ProviderName         string          `json:"providerName"`
		KeyName              string          `json:"keyName"`
	}
	if err := json.Unmarshal(raw, &j); err != nil {
		return IntuneRecord{}, fmt.Errorf("%w: %v", ErrIntuneFormat, err)
	}
	r := IntuneRecord{UserPrincipalName: strings.TrimSpace(j.UserPrincipalName), ProviderName: j.ProviderName, KeyName: j.KeyName}
	if r.UserPrincipalName == "" {
		return r, fmt.Errorf("%w: userPrincipalName is empty", ErrIntuneFormat)
	}
	if b, err := hex.DecodeString(j.Thumbprint); err != nil || len(b) != 20 {
		return r, fmt.Errorf("%w: thumbprint %q is not a SHA-1 in hex", ErrIntuneFormat, j.Thumbprint)
	}
	r.Thumbprint = strings.ToLower(j.Thumbprint)
	var err error
	if r.IntendedPurpose, err = intuneEnum("intendedPurpose", j.IntendedPurpose, intunePurposes, "unassigned"); err != nil {
		return r, err
	}
	if r.PaddingScheme, err = intuneEnum("paddingScheme", j.PaddingScheme, intunePaddings, "none"); err != nil {
		return r, err
	}
	if r.PFX, err = intuneBytes(j.EncryptedPfxBlob); err != nil || len(r.PFX) == 0 {
		return r, fmt.Errorf("%w: encryptedPfxBlob is not the PFX in base64 (or a byte array)", ErrIntuneFormat)
	}
	if r.EncryptedPassword, err = base64.StdEncoding.DecodeString(j.EncryptedPfxPassword); err != nil || len(r.EncryptedPassword) == 0 {
		return r, fmt.Errorf("%w: encryptedPfxPassword is not base64 ciphertext", ErrIntuneFormat)
	}
	return r, nil
}

// intuneEnum reads an enumeration given as its name (any case) or its
// number; absent or null is def.
func intuneEnum(field string, raw json.RawMessage, names map[int]string, def string) (string, error) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return def, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if v, ok := names[n]; ok {
			return v, nil
		}
		return "", fmt.Errorf("%w: %s %d is not one of Intune's values", ErrIntuneFormat, field, n)
	}
	var name string
	if err := json.Unmarshal(raw, &name); err == nil {
		for _, v := range names {
			if strings.EqualFold(v, name) {
				return v, nil
			}
		}
	}
	var all []string
	for _, v := range names {
		all = append(all, v)
	}
	slices.Sort(all)
	return "", fmt.Errorf("%w: %s %s is not one of %s", ErrIntuneFormat, field, s, strings.Join(all, ", "))
}

// intuneBytes reads a byte array given as base64 or as a JSON array of
// numbers.
func intuneBytes(raw json.RawMessage) ([]byte, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return base64.StdEncoding.DecodeString(s)
	}
	var nums []int
	if err := json.Unmarshal(raw, &nums); err != nil {
		return nil, err
	}
	b := make([]byte, len(nums))
	for i, n := range nums {
		if n < 0 || n > 255 {
			return nil, errors.New("not a byte")
		}
		b[i] = byte(n)
	}
	return b, nil
}

// intuneSchemes maps the module's OAEP padding schemes to their hash
// ("none" is what the module writes for its default, OAEP SHA-512).
var intuneSchemes = map[string]PasswordHash{"oaepSha1": SHA1, "oaepSha256": SHA256, "oaepSha384": SHA384, "oaepSha512": SHA512, "none": SHA512}

// PasswordHash returns the OAEP hash of the record's padding scheme, false
// for a scheme that is not OAEP.
func (r IntuneRecord) PasswordHash() (PasswordHash, bool) {
	h, ok := intuneSchemes[r.PaddingScheme]
	return h, ok
}

// Password decrypts the record's PFX password with the connector key and
// the record's padding scheme. The module encrypts one byte per UTF-16
// character of the password (its low byte), so the bytes are read back as
// Latin-1 characters.
func (r IntuneRecord) Password(connector crypto.Decrypter) (string, error) {
	if r.PaddingScheme == "pkcs1" {
		// Refused: a PKCS#1 v1.5 decryption that says whether it
		// succeeded is a Bleichenbacher oracle on the connector key, and
		// Intune itself no longer accepts this scheme.
		return "", ErrPKCS1Refused
	}
	h, ok := r.PasswordHash()
	if !ok {
		return "", fmt.Errorf("%w: paddingScheme %q", ErrIntuneFormat, r.PaddingScheme)
	}
	pt, err := connector.Decrypt(rand.Reader, r.EncryptedPassword, &rsa.OAEPOptions{Hash: oaepHashes[h]})
	if err != nil {
		return "", ErrPasswordDecryption
	}
	runes := make([]rune, len(pt))
	for i, b := range pt {
		runes[i] = rune(b)
	}
	clear(pt)
	return string(runes), nil
}
