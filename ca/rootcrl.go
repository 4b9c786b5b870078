package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/smimeca/smimeca/ca/keystore"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"
)

// The root's CRL (an ARL: it can only list the issuing CA) is signed with
// the offline root key: when the hierarchy is created and at each root
// ceremony (SignRootCRL, `smimeca root crl`), for a validity of months. The
// serving process only reads it (again when the file changes). smimeca
// never revokes its own issuing CA, so the list is empty; it exists because
// the issuing CA's certificate must point at a CRL for its status (S/MIME
// BR 7.1.2.2, RFC 5280 4.2.1.13) and relying parties that check the whole
// chain fetch it.
const (
	rootCRLFile = "root_ca.crl"
	// DefaultRootCRLValidity is how long a root CRL signed at a ceremony
	// is valid.
	DefaultRootCRLValidity = 365 * 24 * time.Hour
	// MaxRootCRLValidity bounds it (S/MIME BR 4.9.7: at most 12 months
	// for a CRL of subordinate CA certificates).
	MaxRootCRLValidity = 366 * 24 * time.Hour
)

// rootCRL is the root's signed CRL as the serving process reads it.
type rootCRL struct {
	path    string
	root    *x509.Certificate
	der     []byte
	next    time.Time
	modTime time.Time
}

// loadRootCRL reads the root's CRL from dir. With key (the hierarchy is
// being created, or a ceremony runs) it signs one when it is missing or not
// the root's; without, a missing CRL is an error that says how to sign it.
func loadRootCRL(dir string, root *x509.Certificate, key crypto.Signer, now time.Time) (*rootCRL, error) {
	r := &rootCRL{path: filepath.Join(dir, rootCRLFile), root: root}
	if err := r.reload(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if r.der == nil && key != nil {
		if err := SignRootCRL(dir, root, key, DefaultRootCRLValidity, now); err != nil {
			return nil, err
		}
		if err := r.reload(); err != nil {
			return nil, err
		}
	}
	if r.der == nil {
		return nil, fmt.Errorf("ca: no valid root CRL in %s: sign one with the root key (smimeca root crl)", r.path)
	}
	return r, nil
}

// reload reads the CRL file again when it changed.
func (r *rootCRL) reload() error {
	st, err := os.Stat(r.path)
	if err != nil {
		return err
	}
	if r.der != nil && st.ModTime().Equal(r.modTime) {
		return nil
	}
	der, err := os.ReadFile(r.path)
	if err != nil {
		return fmt.Errorf("ca: read %s: %w", r.path, err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil || crl.CheckSignatureFrom(r.root) != nil {
		return fmt.Errorf("ca: %s is not a CRL signed by the root; sign a new one (smimeca root crl)", r.path)
	}
	r.der, r.next, r.modTime = der, crl.NextUpdate, st.ModTime()
	return nil
}

// SignRootCRL signs the root's (empty) CRL with the root key for validity
// and writes it into dir, where serving nodes read it. Its CRL number is
// the signing time in seconds, which only grows.
func SignRootCRL(dir string, root *x509.Certificate, key crypto.Signer, validity time.Duration, now time.Time) error {
	if validity <= 0 || validity > MaxRootCRLValidity {
		return fmt.Errorf("ca: root CRL validity %s must be between 0 and %s", validity, MaxRootCRLValidity)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(now.Unix()), ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(validity),
	}, root, key)
	if err != nil {
		return fmt.Errorf("ca: sign the root CRL: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, rootCRLFile), der, 0o644)
}

// ReissueIntermediate is the root ceremony that renews the issuing CA's
// certificate: the same key, subject and profile (key usage, EKU, name
// constraints, policies, CRL and issuer URLs) under a new serial, valid from
// now for lifetime (at most to the root's end), signed with the root key
// from keys. It writes the new certificate into dir; serving nodes use it
// from their next start. The issuing key is not touched.
func ReissueIntermediate(dir string, keys keystore.Store, lifetime time.Duration, now time.Time) (*x509.Certificate, error) {
	root, rootKey, err := LoadRoot(dir, keys)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, IntermediateCertFile)
	old, err := pemutil.ReadCertificate(path)
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", path, err)
	}
	if old.CheckSignatureFrom(root) != nil {
		return nil, fmt.Errorf("ca: %s was not issued by this root", path)
	}
	notAfter := now.Add(lifetime)
	if notAfter.After(root.NotAfter) {
		notAfter = root.NotAfter
	}
	if lifetime <= 0 || !notAfter.After(now) {
		return nil, fmt.Errorf("ca: the issuing CA's new lifetime %s must be positive and end before the root (%s)", lifetime, root.NotAfter.Format(time.DateOnly))
	}
	tmpl := &x509.Certificate{
		Subject: old.Subject, NotBefore: now.Add(-time.Minute), NotAfter: notAfter,
		KeyUsage: old.KeyUsage, ExtKeyUsage: old.ExtKeyUsage, UnknownExtKeyUsage: old.UnknownExtKeyUsage,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: old.MaxPathLen, MaxPathLenZero: old.MaxPathLenZero,
		SubjectKeyId:                old.SubjectKeyId,
		PermittedDNSDomainsCritical: old.PermittedDNSDomainsCritical,
		PermittedDNSDomains:         old.PermittedDNSDomains, ExcludedDNSDomains: old.ExcludedDNSDomains,
		PermittedIPRanges: old.PermittedIPRanges, ExcludedIPRanges: old.ExcludedIPRanges,
		PermittedEmailAddresses: old.PermittedEmailAddresses, ExcludedEmailAddresses: old.ExcludedEmailAddresses,
		PermittedURIDomains: old.PermittedURIDomains, ExcludedURIDomains: old.ExcludedURIDomains,
		Policies: old.Policies, CRLDistributionPoints: old.CRLDistributionPoints,
		IssuingCertificateURL: old.IssuingCertificateURL, OCSPServer: old.OCSPServer,
	}
	crt, err := x509util.CreateCertificate(tmpl, root, old.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("ca: re-issue the issuing CA: %w", err)
	}
	return crt, writeCertificates(path, crt)
}

// ReissueRA is the root ceremony that renews the SCEP RA certificate where
// the root signs it (an ECDSA issuing CA; see SCEPCACerts): a new RSA key
// in keys, under the RA's subject (from the root's organisation, which is
// the CA's name), valid from now for the RA's
// lifetime (at most to the root's end), signed with the root key from
// keys. It writes the certificate into dir; serving nodes use it from
// their next start. Where the issuing CA signs the RA, each start renews
// it and this is refused.
func ReissueRA(dir string, keys keystore.Store, now time.Time) (*x509.Certificate, error) {
	root, rootKey, err := LoadRoot(dir, keys)
	if err != nil {
		return nil, err
	}
	interPath := filepath.Join(dir, IntermediateCertFile)
	inter, err := pemutil.ReadCertificate(interPath)
	if err != nil {
		return nil, fmt.Errorf("ca: read %s: %w", interPath, err)
	}
	if !raUnderRoot(root, inter) {
		return nil, errors.New("ca: in this hierarchy the issuing CA signs the SCEP RA certificate and every start renews it when due; there is nothing for the root to do")
	}
	path := filepath.Join(dir, RACertFile)
	name := "smimeca" // Config.Name's default, which the root names
	if org := root.Subject.Organization; len(org) > 0 {
		name = org[0]
	}
	tmpl := raTemplate(name, now)
	if tmpl.NotAfter.After(root.NotAfter) {
		tmpl.NotAfter = root.NotAfter
	}
	crt, _, err := issuePair(keys, keystore.RA, keystore.Spec{Type: KeyTypeRSA, Bits: raKeyBits}, true, "SCEP RA certificate", path, tmpl, root, rootKey)
	return crt, err
}
