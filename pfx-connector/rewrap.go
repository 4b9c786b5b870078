package pfxconnector

import (
	"bytes"
	"crypto"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"
)

// Encoding selects the PKCS#12 algorithms of a re-wrapped file.
type Encoding int

// Encodings.
const (
	// Legacy is 3DES + SHA-1 MAC (go-pkcs12 LegacyDES), the default: iOS's
	// importer is reported to reject AES/PBES2 files.
	Legacy Encoding = iota
	// Modern is PBES2/AES-256 + SHA-256 MAC (go-pkcs12 Modern2023).
	Modern
)

// passwordBytes is the entropy of a delivery password (144 bits).
const passwordBytes = 18

// Rewrapped is one key and certificate packed for one delivery.
type Rewrapped struct {
	// PFX is the new PKCS#12.
	PFX []byte
	// Password opens PFX. It is fresh for every delivery.
	Password string
}

// Rewrap packs key, cert and chain into a new PKCS#12 with a fresh random
// password, with the encoding's own iteration counts (go-pkcs12's: 2 048
// for the encryption): for a file that rests outside smimeca's envelopes,
// as in Intune's imported-PFX store. A delivery to a device uses RewrapAll.
func Rewrap(key crypto.PrivateKey, cert *x509.Certificate, chain []*x509.Certificate, enc Encoding) (Rewrapped, error) {
	return rewrap(key, cert, chain, enc, 0)
}

// deliveryIterations is the PBKDF iteration count of a PKCS#12 made for
// one delivery to one device (RewrapAll): 1. Iterations slow down guessing
// a chosen password; this password is 144 random bits (2^144 guesses
// whatever the count) and travels in the same envelope to the device's
// key as the file, so a count protects nothing, and at 2 048 it was 90 %
// of a re-wrap's CPU. iOS's importer reads any count from 1 (Apple's
// Security sources, p12import.c and p12pbegen.c: no lower bound, and a
// MAC without a count is one iteration), as OpenSSL and Android's
// KeyStore do; go-pkcs12's LegacyDES already derives its MAC key with one.
const deliveryIterations = 1

func rewrap(key crypto.PrivateKey, cert *x509.Certificate, chain []*x509.Certificate, enc Encoding, iterations int) (Rewrapped, error) {
	return rewrapFrom(rand.Reader, key, cert, chain, enc, iterations)
}

// rewrapFrom is rewrap with the password, salts and IVs read from r.
func rewrapFrom(r io.Reader, key crypto.PrivateKey, cert *x509.Certificate, chain []*x509.Certificate, enc Encoding, iterations int) (Rewrapped, error) {
	raw := make([]byte, passwordBytes)
	if _, err := io.ReadFull(r, raw); err != nil {
		return Rewrapped{}, fmt.Errorf("pfx: password randomness: %w", err)
	}
	password := base64.RawURLEncoding.EncodeToString(raw)
	encoder := pkcs12.LegacyDES
	if enc == Modern {
		encoder = pkcs12.Modern2023
	}
	if iterations > 0 {
		encoder = encoder.WithIterations(iterations)
	}
	pfx, err := encoder.WithRand(r).Encode(key, cert, chain, password)
	if err != nil {
		return Rewrapped{}, fmt.Errorf("pfx: encode: %w", err)
	}
	return Rewrapped{PFX: pfx, Password: password}, nil
}

// ErrBadRecipient means the device certificate cannot receive CMS
// EnvelopedData.
var ErrBadRecipient = errors.New("pfx: the device certificate cannot receive encrypted data")

// CheckRecipient reports whether a device certificate can be the recipient
// of an envelope at time now: RSA key (key transport), valid now, and key
// usage (when present) allowing keyEncipherment.
func CheckRecipient(c *x509.Certificate, now time.Time) error {
	if _, ok := c.PublicKey.(*rsa.PublicKey); !ok {
		return fmt.Errorf("%w: its key is %s, RSA is needed", ErrBadRecipient, c.PublicKeyAlgorithm)
	}
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return fmt.Errorf("%w: it is not valid now (%s to %s)", ErrBadRecipient, c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		return fmt.Errorf("%w: its key usage lacks keyEncipherment", ErrBadRecipient)
	}
	return nil
}

// RewrapDER is Rewrap for a key as escrow stores it: the DER certificate,
// its PKCS#8 private key and the DER chain (certificates that do not parse
// are left out of it). The errors name no key material.
func RewrapDER(certDER, keyPKCS8 []byte, chainDER [][]byte, enc Encoding) (Rewrapped, error) {
	return rewrapDER(DERKey{CertDER: certDER, KeyPKCS8: keyPKCS8, ChainDER: chainDER}, enc, 0)
}

func rewrapDER(k DERKey, enc Encoding, iterations int) (Rewrapped, error) {
	return rewrapDERFrom(rand.Reader, k, enc, iterations)
}

// seededBytes is how much of a seed's HKDF stream one seeded re-wrap may
// read: the password and go-pkcs12's salts and IVs take under 100 bytes.
const seededBytes = 512

// RewrapSeeded re-wraps one key for a delivery whose bytes must come out
// the same each time they are made — a Declarative Device Management
// asset, whose declaration carries the file's SHA-256 before the device
// fetches it: the password and every salt and IV are read from
// HKDF-SHA-256 of seed, with one PBKDF iteration as RewrapAll. seed must
// be secret (it stands for the password) and bound to the key and to the
// device the file is for. The errors name no key material.
func RewrapSeeded(k DERKey, enc Encoding, seed []byte) (Rewrapped, error) {
	if len(seed) < 32 {
		return Rewrapped{}, errors.New("pfx: a seeded re-wrap needs a seed of at least 256 bits")
	}
	stream, err := hkdf.Key(sha256.New, seed, nil, "smimeca pkcs12 rewrap v1", seededBytes)
	if err != nil {
		return Rewrapped{}, fmt.Errorf("pfx: seed: %w", err)
	}
	defer clear(stream)
	return rewrapDERFrom(bytes.NewReader(stream), k, enc, deliveryIterations)
}

func rewrapDERFrom(r io.Reader, k DERKey, enc Encoding, iterations int) (Rewrapped, error) {
	cert, err := x509.ParseCertificate(k.CertDER)
	if err != nil {
		return Rewrapped{}, fmt.Errorf("pfx: the certificate is unreadable: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(k.KeyPKCS8)
	if err != nil {
		return Rewrapped{}, errors.New("pfx: the private key is unreadable")
	}
	var chain []*x509.Certificate
	for _, d := range k.ChainDER {
		if c, err := x509.ParseCertificate(d); err == nil {
			chain = append(chain, c)
		}
	}
	return rewrapFrom(r, key, cert, chain, enc, iterations)
}

// DERKey is one key as escrow stores it, for RewrapAll.
type DERKey struct {
	CertDER, KeyPKCS8 []byte
	ChainDER          [][]byte
}

// RewrapAll re-wraps every key for one delivery to one device, whose
// envelope will carry each file with its password: RewrapDER with one
// PBKDF iteration (deliveryIterations), spread over the cores (the
// key parse and the cipher of each file are a bundle's CPU, so one
// caller's latency drops with them). out[i] and errs[i] are key i's.
func RewrapAll(keys []DERKey, enc Encoding) (out []Rewrapped, errs []error) {
	out, errs = make([]Rewrapped, len(keys)), make([]error, len(keys))
	parallel(len(keys), func(i int) { out[i], errs[i] = rewrapDER(keys[i], enc, deliveryIterations) })
	return out, errs
}

// RewrapSeededAll is RewrapSeeded of keys[i] with seeds[i], spread over
// the cores as RewrapAll.
func RewrapSeededAll(keys []DERKey, seeds [][]byte, enc Encoding) (out []Rewrapped, errs []error) {
	out, errs = make([]Rewrapped, len(keys)), make([]error, len(keys))
	if len(seeds) != len(keys) {
		for i := range errs {
			errs[i] = errors.New("pfx: one seed per key")
		}
		return out, errs
	}
	parallel(len(keys), func(i int) { out[i], errs[i] = RewrapSeeded(keys[i], enc, seeds[i]) })
	return out, errs
}

// parallel runs f(0) … f(n-1) on up to GOMAXPROCS goroutines.
func parallel(n int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}
