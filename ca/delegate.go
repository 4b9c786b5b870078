package ca

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/db"
	"go.step.sm/crypto/pemutil"

	"github.com/smimeca/smimeca/ca/keystore"
)

// Delegate describes a certificate the issuing intermediate certifies for
// one of smimeca's own services — the OCSP responder, the profile signer —
// with a key of its own in the CA's key store. The service that uses it
// says what it is; the CA issues, keeps and renews it.
type Delegate struct {
	// Key names the key in the CA's key store; the CA replaces it on renewal.
	Key keystore.Name
	// Spec is the kind of key to make.
	Spec keystore.Spec
	// CertFile is the certificate's file under the CA directory.
	CertFile string
	// What names the certificate in errors ("OCSP signing certificate").
	What string
	// Template is what the certificate says; the CA sets its validity.
	Template x509.Certificate
	// Lifetime is the validity of a new certificate; RenewBefore is how long
	// before its end a certificate is replaced.
	Lifetime, RenewBefore time.Duration
}

// Name returns the CA's name, as its certificates' Organization carries it.
func (a *Authority) Name() string { return a.name }

// Delegated returns d's certificate and key: the kept ones when they match,
// were issued by the intermediate and are valid until RenewBefore past now;
// otherwise a new pair, issued by the intermediate and kept (a new key
// replaces the old one in the key store).
func (a *Authority) Delegated(d Delegate, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(a.dir, d.CertFile)
	crt, key, err := loadPair(a.keys, certPath, d.Key, true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	if err == nil && !now.Before(crt.NotBefore) && now.Before(crt.NotAfter.Add(-d.RenewBefore)) && crt.CheckSignatureFrom(a.intermediate) == nil {
		return crt, key, nil
	}
	tmpl := d.Template
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Minute), now.Add(d.Lifetime)
	tmpl.BasicConstraintsValid, tmpl.IsCA = true, false
	return issuePair(a.keys, d.Key, d.Spec, true, d.What, certPath, &tmpl, a.intermediate, a.interKey)
}

// ReadDelegated reads, from a CA directory and its key store, without a
// running CA, the delegated certificate kept in certFile with its key (a
// key file readable by others is refused, like every key the CA reads) and
// the issuing CA that chains it to the root.
func ReadDelegated(dir string, keys keystore.Store, key keystore.Name, certFile string) (crt *x509.Certificate, signer crypto.Signer, issuer *x509.Certificate, err error) {
	crt, signer, err = loadPair(keys, filepath.Join(dir, certFile), key, false)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ca: %s in %s: %w", certFile, dir, err)
	}
	issuer, err = pemutil.ReadCertificate(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ca: issuing CA in %s: %w", dir, err)
	}
	return crt, signer, issuer, nil
}

// Revocation is what the CA's database says of a revoked certificate.
type Revocation struct {
	// At is when it was revoked; zero when the database does not say.
	At time.Time
	// Reason is the RFC 5280 reason code.
	Reason int
}

// Known reports whether the CA issued the certificate with the decimal
// serial.
func (a *Authority) Known(serial string) (bool, error) {
	if _, err := a.db.GetCertificate(serial); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("ca: read certificate %s: %w", serial, err)
	}
	return true, nil
}

// Revocation returns the revocation of the certificate with the decimal
// serial, nil when it is not revoked. It reads the database every time, so a
// revocation by any path or node is seen at once.
func (a *Authority) Revocation(serial string) (*Revocation, error) {
	if a.deferring == nil {
		revoked, err := a.IsRevoked(serial)
		if err != nil || !revoked {
			return nil, err
		}
		return &Revocation{}, nil
	}
	b, err := a.deferring.DB.Get(revokedCertsTable, []byte(serial))
	if err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("ca: revocation status of %s: %w", serial, err)
	}
	var rci db.RevokedCertificateInfo
	if err := json.Unmarshal(b, &rci); err != nil {
		return nil, fmt.Errorf("ca: revocation record of %s: %w", serial, err)
	}
	return &Revocation{At: rci.RevokedAt, Reason: rci.ReasonCode}, nil
}
