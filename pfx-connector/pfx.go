// Package pfxconnector is smimeca's PKCS#12 (PFX) connector: it decodes the
// PFX files admins import (legacy RC2/3DES + SHA-1 MAC and AES/PBES2 +
// SHA-256 MAC alike, with go-pkcs12), decrypts PFX passwords sent encrypted
// to the connector key with RSA-OAEP (as Microsoft Graph's
// userPFXCertificate import does), and re-wraps a key and certificate into a
// new PKCS#12 for one delivery.
//
// It does no storage, no network and no key caching: decoded keys live only
// as long as the caller keeps them.
package pfxconnector

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// Reasons a PFX cannot be decoded.
var (
	// ErrWrongPassword means the password does not open the PFX.
	ErrWrongPassword = errors.New("pfx: the password does not open this PFX")
	// ErrMalformed means the data is not a readable PKCS#12 file.
	ErrMalformed = errors.New("pfx: not a readable PKCS#12 (PFX) file")
	// ErrNoKey means the PFX holds no private key (a certificate-only export).
	ErrNoKey = errors.New("pfx: the PFX holds no private key; export it with its private key")
	// ErrNoCertificate means the PFX holds no certificate.
	ErrNoCertificate = errors.New("pfx: the PFX holds no certificate")
)

// maxPFXBytes bounds an imported PFX; real ones are a few KiB.
const maxPFXBytes = 256 << 10 // the gRPC message limit (api.DefaultLimits) leaves room for it

// Decoded is what one PFX carried.
type Decoded struct {
	// Key is the private key.
	Key crypto.PrivateKey
	// Cert is the certificate whose public key matches Key, or, when none
	// matches, the first certificate of the file.
	Cert *x509.Certificate
	// Chain holds the other certificates of the file.
	Chain []*x509.Certificate
	// KeyMatches reports whether Cert's public key is Key's.
	KeyMatches bool
}

// Decode opens a PFX with its password.
func Decode(pfx []byte, password string) (d *Decoded, err error) {
	if len(pfx) == 0 {
		return nil, fmt.Errorf("%w: the file is empty", ErrMalformed)
	}
	if len(pfx) > maxPFXBytes {
		return nil, fmt.Errorf("%w: larger than %d KiB", ErrMalformed, maxPFXBytes>>10)
	}
	defer func() {
		// The ASN.1 decoders below parse untrusted input; a panic there must
		// become a refusal, not a crash.
		if r := recover(); r != nil {
			d, err = nil, fmt.Errorf("%w: parser failure", ErrMalformed)
		}
	}()
	if err := checkCost(pfx); err != nil {
		return nil, err
	}
	key, cert, chain, err := pkcs12.DecodeChain(pfx, password)
	if err != nil {
		return nil, classify(err)
	}
	d = &Decoded{Key: key, Cert: cert, Chain: chain}
	// Exports put the chain in any order: pick the certificate of the key.
	all := append([]*x509.Certificate{cert}, chain...)
	for i, c := range all {
		if PublicKeyMatches(key, c) {
			d.Cert, d.KeyMatches = c, true
			d.Chain = append(append([]*x509.Certificate{}, all[:i]...), all[i+1:]...)
			break
		}
	}
	return d, nil
}

func classify(err error) error {
	switch {
	case errors.Is(err, pkcs12.ErrIncorrectPassword), errors.Is(err, pkcs12.ErrDecryption):
		return ErrWrongPassword
	case strings.Contains(err.Error(), "private key missing"):
		return ErrNoKey
	case strings.Contains(err.Error(), "certificate missing"):
		return ErrNoCertificate
	}
	var ni pkcs12.NotImplementedError
	if errors.As(err, &ni) {
		return fmt.Errorf("%w: unsupported algorithm (%s)", ErrMalformed, ni.Error())
	}
	return fmt.Errorf("%w: %s", ErrMalformed, strings.TrimPrefix(err.Error(), "pkcs12: "))
}

// PublicKeyMatches reports whether cert carries key's public key.
func PublicKeyMatches(key crypto.PrivateKey, cert *x509.Certificate) bool {
	type publicKeyer interface{ Public() crypto.PublicKey }
	pk, ok := key.(publicKeyer)
	if !ok {
		return false
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	switch p := pk.Public().(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		return p.(equaler).Equal(cert.PublicKey)
	}
	return false
}

// PasswordHash names the OAEP hash of an encrypted password.
type PasswordHash string

// OAEP hashes accepted for encrypted passwords.
const (
	SHA256 PasswordHash = "SHA256"
	SHA384 PasswordHash = "SHA384"
	SHA512 PasswordHash = "SHA512"
	// SHA1 is still sound in OAEP (whose security does not rest on the
	// hash's collision resistance); it is accepted because some tokens
	// (SoftHSM2 2.6) decrypt RSA-OAEP with SHA-1 only, and Intune's
	// PFXImport module offers it.
	SHA1 PasswordHash = "SHA1"
)

// PasswordHashes lists the OAEP hashes in the order a client should prefer
// them.
var PasswordHashes = []PasswordHash{SHA256, SHA384, SHA512, SHA1}

var oaepHashes = map[PasswordHash]crypto.Hash{SHA256: crypto.SHA256, SHA384: crypto.SHA384, SHA512: crypto.SHA512, SHA1: crypto.SHA1}

// ParsePasswordHash reads a hash name (SHA256, sha-256, …; "" is SHA256).
func ParsePasswordHash(name string) (PasswordHash, error) {
	h := PasswordHash(strings.ToUpper(strings.ReplaceAll(name, "-", "")))
	if h == "" {
		return SHA256, nil
	}
	if _, ok := oaepHashes[h]; !ok {
		return "", fmt.Errorf("pfx: unsupported OAEP hash %q (SHA256, SHA384, SHA512, SHA1)", name)
	}
	return h, nil
}

// ErrPasswordDecryption means an encrypted password could not be decrypted
// with the connector key.
var ErrPasswordDecryption = errors.New("pfx: the encrypted password does not decrypt with the connector key (wrong key, hash or padding)")

// DecryptPassword decrypts a PFX password encrypted with RSA-OAEP to the
// connector's public key; the connector key may be a token's.
func DecryptPassword(connector crypto.Decrypter, ciphertext []byte, h PasswordHash) (string, error) {
	h, err := ParsePasswordHash(string(h))
	if err != nil {
		return "", err
	}
	pt, err := connector.Decrypt(rand.Reader, ciphertext, &rsa.OAEPOptions{Hash: oaepHashes[h]})
	if err != nil {
		return "", ErrPasswordDecryption
	}
	return string(pt), nil
}

// DecryptableHashes returns, in PasswordHashes' order, the OAEP hashes the
// connector key decrypts with: all of them for a key in memory, fewer for a
// token that lacks some (SoftHSM2 2.6: SHA-1 only). It decrypts one
// encrypted random value per hash.
func DecryptableHashes(connector crypto.Decrypter) []PasswordHash {
	pub, ok := connector.Public().(*rsa.PublicKey)
	if !ok {
		return nil
	}
	var out []PasswordHash
	for _, h := range PasswordHashes {
		probe := make([]byte, 16)
		rand.Read(probe)
		ct, err := rsa.EncryptOAEP(oaepHashes[h].New(), rand.Reader, pub, probe, nil)
		if err != nil {
			continue
		}
		if pt, err := connector.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: oaepHashes[h]}); err == nil && bytes.Equal(pt, probe) {
			out = append(out, h)
		}
	}
	return out
}
