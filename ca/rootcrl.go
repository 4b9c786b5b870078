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
)

// The root's CRL (an ARL: it can only list the issuing CA) is signed for
// rootCRLValidity and re-signed when less than rootCRLRenewBefore of it is
// left, on start-up and on the read that finds it so. smimeca never revokes
// its own issuing CA, so the list is empty; it exists because the issuing
// CA's certificate must point at a CRL for its status (S/MIME BR 7.1.2.2,
// RFC 5280 4.2.1.13) and relying parties that check the whole chain fetch it.
const (
	rootCRLFile        = "root_ca.crl"
	rootCRLValidity    = 365 * 24 * time.Hour
	rootCRLRenewBefore = 180 * 24 * time.Hour
)

// rootCRL is the root's signed CRL and the key to re-sign it.
type rootCRL struct {
	path string
	root *x509.Certificate
	key  crypto.Signer
	der  []byte
	next time.Time
}

// loadRootCRL reads the root's CRL from dir, or signs a new one when it is
// missing, not the root's, or due.
func loadRootCRL(dir string, root *x509.Certificate, key crypto.Signer, now time.Time) (*rootCRL, error) {
	r := &rootCRL{path: filepath.Join(dir, rootCRLFile), root: root, key: key}
	der, err := os.ReadFile(r.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ca: read %s: %w", r.path, err)
	}
	if err == nil {
		if crl, perr := x509.ParseRevocationList(der); perr == nil && crl.CheckSignatureFrom(root) == nil {
			r.der, r.next = der, crl.NextUpdate
		}
	}
	return r, r.refresh(now)
}

// refresh re-signs the CRL when it is missing or due. Its CRL number is
// the signing time in seconds, which only grows.
func (r *rootCRL) refresh(now time.Time) error {
	if r.der != nil && now.Before(r.next.Add(-rootCRLRenewBefore)) {
		return nil
	}
	number := big.NewInt(now.Unix())
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: number, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(rootCRLValidity),
	}, r.root, r.key)
	if err != nil {
		return fmt.Errorf("ca: sign the root CRL: %w", err)
	}
	if err := writeFileAtomic(r.path, der, 0o644); err != nil {
		return err
	}
	r.der, r.next = der, now.Add(rootCRLValidity)
	return nil
}
