package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/smimeca/smimeca/policy"
)

// identityCRLs implements policy.IdentityRevocations with the MDM CA's CRL
// files (--device-identity-crl, PEM or DER): each is re-read when it
// changes, must be signed by one of the device identity CAs, and is used
// only while it is current (an expired CRL makes every identity of its CA
// unknown, so nothing is released). An identity whose CA has no CRL among
// the files is not revoked.
type identityCRLs struct {
	paths []string
	cas   []*x509.Certificate
	now   func() time.Time

	mu   sync.Mutex
	crls map[string]loadedCRL
}

type loadedCRL struct {
	mod  time.Time
	size int64
	crl  *x509.RevocationList
}

var _ policy.IdentityRevocations = (*identityCRLs)(nil)

// newIdentityCRLs reads the CRL files (comma-separated) and checks each
// against the CAs in caFile, so that a bad file stops the start.
func newIdentityCRLs(files, caFile string) (*identityCRLs, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--device-identity-crl needs --device-identity-ca: %w", err)
	}
	r := &identityCRLs{now: time.Now, crls: map[string]loadedCRL{}}
	for block, rest := pem.Decode(b); block != nil; block, rest = pem.Decode(rest) {
		if c, err := x509.ParseCertificate(block.Bytes); err == nil && block.Type == "CERTIFICATE" {
			r.cas = append(r.cas, c)
		}
	}
	for _, p := range strings.Split(files, ",") {
		if p = strings.TrimSpace(p); p != "" {
			r.paths = append(r.paths, p)
			if _, err := r.load(p); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// load returns the CRL at p, read again when the file changed.
func (r *identityCRLs) load(p string) (*x509.RevocationList, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// The same file (time and size), still current: no read.
	if l, ok := r.crls[p]; ok && l.mod.Equal(st.ModTime()) && l.size == st.Size() && !r.now().After(l.crl.NextUpdate) {
		return l.crl, nil
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	if block, _ := pem.Decode(b); block != nil {
		b = block.Bytes
	}
	crl, err := x509.ParseRevocationList(b)
	if err != nil {
		return nil, fmt.Errorf("%s is not a CRL (PEM or DER): %w", p, err)
	}
	signed := false
	for _, ca := range r.cas {
		if crl.CheckSignatureFrom(ca) == nil {
			signed = true
			break
		}
	}
	if !signed {
		return nil, fmt.Errorf("%s is not signed by a CA of --device-identity-ca", p)
	}
	r.crls[p] = loadedCRL{mod: st.ModTime(), size: st.Size(), crl: crl}
	return crl, nil
}

// Revoked implements policy.IdentityRevocations.
func (r *identityCRLs) Revoked(c *x509.Certificate) (bool, error) {
	now := r.now()
	for _, p := range r.paths {
		crl, err := r.load(p)
		if err != nil {
			return false, err
		}
		if string(crl.RawIssuer) != string(c.RawIssuer) {
			continue
		}
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
			return false, errors.New(p + " expired at " + crl.NextUpdate.UTC().Format(time.RFC3339) + "; publish the MDM CA's current CRL there")
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(c.SerialNumber) == 0 {
				return true, nil
			}
		}
	}
	return false, nil
}
