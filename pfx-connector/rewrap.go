package pfxconnector

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
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
// password.
func Rewrap(key crypto.PrivateKey, cert *x509.Certificate, chain []*x509.Certificate, enc Encoding) (Rewrapped, error) {
	raw := make([]byte, passwordBytes)
	if _, err := rand.Read(raw); err != nil {
		return Rewrapped{}, fmt.Errorf("pfx: password randomness: %w", err)
	}
	password := base64.RawURLEncoding.EncodeToString(raw)
	encoder := pkcs12.LegacyDES
	if enc == Modern {
		encoder = pkcs12.Modern2023
	}
	pfx, err := encoder.Encode(key, cert, chain, password)
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
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return Rewrapped{}, fmt.Errorf("pfx: the certificate is unreadable: %w", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(keyPKCS8)
	if err != nil {
		return Rewrapped{}, errors.New("pfx: the private key is unreadable")
	}
	var chain []*x509.Certificate
	for _, d := range chainDER {
		if c, err := x509.ParseCertificate(d); err == nil {
			chain = append(chain, c)
		}
	}
	return Rewrap(key, cert, chain, enc)
}

// DERKey is one key as escrow stores it, for RewrapAll.
type DERKey struct {
	CertDER, KeyPKCS8 []byte
	ChainDER          [][]byte
}

// RewrapAll re-wraps every key (RewrapDER) with the encoding, spread over
// the cores: the PBKDF and the cipher of each file dominate a bundle's CPU,
// so one caller's latency drops with them. out[i] and errs[i] are key i's.
func RewrapAll(keys []DERKey, enc Encoding) (out []Rewrapped, errs []error) {
	out, errs = make([]Rewrapped, len(keys)), make([]error, len(keys))
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(keys)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(keys) {
					return
				}
				out[i], errs[i] = RewrapDER(keys[i].CertDER, keys[i].KeyPKCS8, keys[i].ChainDER, enc)
			}
		}()
	}
	wg.Wait()
	return out, errs
}
