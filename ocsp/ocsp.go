// Package ocsp is smimeca's OCSP responder: the public HTTP edge that
// answers RFC 6960 requests about the issuing CA's certificates.
package ocsp

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
)

// Bounds of a Responder's response validity (thisUpdate to nextUpdate):
// S/MIME BR 4.9.10 wants at least 8 hours and at most 10 days.
const (
	MinValidity     = 8 * time.Hour
	MaxValidity     = 10 * 24 * time.Hour
	DefaultValidity = 24 * time.Hour
)

const (
	// The delegated OCSP signing certificate is short-lived, as RFC 6960
	// 4.2.2.2.1 asks of one that carries id-pkix-ocsp-nocheck, and renewed
	// in-process a month before it expires.
	signerLifetime    = 90 * 24 * time.Hour
	signerRenewBefore = 30 * 24 * time.Hour
	// SignerCertFile is the signing certificate's file in the CA directory.
	SignerCertFile = "ocsp_signer.crt"
	// MaxRequestBytes bounds a request's DER (a single-certificate request
	// with a nonce is about 120 bytes).
	MaxRequestBytes = 4 << 10
	// ocspCacheEntries bounds the signed responses kept; beyond it one
	// entry is dropped at random per new one.
	ocspCacheEntries = 1 << 16
	// ocspUnknownEntries bounds, within ocspCacheEntries, the answers kept
	// for serials this CA never issued: a relying party polling a foreign
	// serial costs one signature per half validity, and whoever sends
	// random serials (bounded per address by the public listener's
	// limiter) can evict only these.
	ocspUnknownEntries = 1 << 12
)

var (
	oidOCSPNoCheck = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 5}
	asn1Null       = []byte{0x05, 0x00}
)

// Issuer is the CA a Responder answers for: its issuing certificate, what
// its database says of a serial, and the delegated signing certificate it
// issues and renews (*ca.Authority).
type Issuer interface {
	Intermediate() *x509.Certificate
	Name() string
	Known(serial string) (bool, error)
	Revocation(serial string) (*ca.Revocation, error)
	Delegated(d ca.Delegate, now time.Time) (*x509.Certificate, crypto.Signer, error)
}

// Responder answers OCSP requests (RFC 6960, in RFC 5019's lightweight
// profile: one certificate per request, no nonce) for the certificates of
// this CA's issuing intermediate: "good" or "revoked" (with time and
// reason) for a serial this CA issued, "unknown" for any other serial, and
// "unauthorized" for another issuer. Responses are signed by a delegated
// OCSP signing certificate (id-kp-OCSPSigning, id-pkix-ocsp-nocheck) issued
// by the intermediate, whose key is kept with the other CA keys, and are
// cached per serial until half their validity has passed: a cached answer
// costs one revocation lookup and no signature, and a revocation is seen
// by the next request whichever path (or node) revoked it.
//
// It is an http.Handler for GET (/ocsp/<base64 request>) and POST
// (application/ocsp-request).
type Responder struct {
	ca       Issuer
	validity time.Duration
	now      func() time.Time
	// issuerHashes are the intermediate's name and key hashes per hash
	// algorithm a request may use.
	issuerHashes map[crypto.Hash][2][]byte

	mu      sync.Mutex
	signer  *x509.Certificate
	key     crypto.Signer
	cache   map[ocspKey]*ocspEntry
	unknown map[ocspKey]*ocspEntry
}

type ocspKey struct {
	serial string
	hash   crypto.Hash
}

type ocspEntry struct {
	der        []byte
	revoked    bool
	thisUpdate time.Time
	nextUpdate time.Time
}

// New returns the responder of the issuer's intermediate whose responses
// are valid for validity (0: DefaultValidity), creating or renewing the
// delegated signing certificate.
func New(issuer Issuer, validity time.Duration) (*Responder, error) {
	if validity == 0 {
		validity = DefaultValidity
	}
	if validity < MinValidity || validity > MaxValidity {
		return nil, fmt.Errorf("ocsp: response validity %s must be between %s and %s (S/MIME BR 4.9.10)", validity, MinValidity, MaxValidity)
	}
	inter := issuer.Intermediate()
	r := &Responder{ca: issuer, validity: validity, now: time.Now, cache: map[ocspKey]*ocspEntry{}, unknown: map[ocspKey]*ocspEntry{},
		issuerHashes: map[crypto.Hash][2][]byte{}}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(inter.RawSubjectPublicKeyInfo, &spki); err != nil {
		return nil, fmt.Errorf("ocsp: intermediate public key: %w", err)
	}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		name, key := h.New(), h.New()
		name.Write(inter.RawSubject)
		key.Write(spki.PublicKey.RightAlign())
		r.issuerHashes[h] = [2][]byte{name.Sum(nil), key.Sum(nil)}
	}
	if err := r.loadOrRenewSigner(); err != nil {
		return nil, err
	}
	return r, nil
}

// Signer returns the delegated OCSP signing certificate in use.
func (r *Responder) Signer() *x509.Certificate {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.signer
}

// loadOrRenewSigner reads the signing certificate and key, or issues new
// ones when they are missing, not the intermediate's, or due. r.mu is held
// or r is not shared yet.
func (r *Responder) loadOrRenewSigner() error {
	now := r.now()
	if r.signer != nil && now.Before(r.signer.NotAfter.Add(-signerRenewBefore)) {
		return nil
	}
	crt, key, err := r.ca.Delegated(signerDelegate(r.ca.Name()), now)
	if err != nil {
		return err
	}
	r.signer, r.key = crt, key
	return nil
}

// signerDelegate is the delegated OCSP signing certificate: EKU
// OCSPSigning with id-pkix-ocsp-nocheck, an ECDSA P-256 key.
func signerDelegate(caName string) ca.Delegate {
	return ca.Delegate{
		Key: keystore.OCSP, Spec: keystore.Spec{Type: ca.KeyTypeEC, Bits: 256},
		CertFile: SignerCertFile, What: "OCSP signing certificate",
		Template: x509.Certificate{
			Subject:         pkix.Name{CommonName: caName + " OCSP Responder", Organization: []string{caName}},
			KeyUsage:        x509.KeyUsageDigitalSignature,
			ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning},
			ExtraExtensions: []pkix.Extension{{Id: oidOCSPNoCheck, Value: asn1Null}},
		},
		Lifetime: signerLifetime, RenewBefore: signerRenewBefore,
	}
}

// Respond answers one DER OCSP request with a DER OCSP response: a
// signed one for this CA's intermediate, an error response (malformed,
// unauthorized, internal error) otherwise. thisUpdate and nextUpdate are
// zero for an error response.
func (r *Responder) Respond(reqDER []byte) (der []byte, thisUpdate, nextUpdate time.Time) {
	if len(reqDER) > MaxRequestBytes {
		return ocsp.MalformedRequestErrorResponse, time.Time{}, time.Time{}
	}
	req, err := ocsp.ParseRequest(reqDER)
	if err != nil || req.SerialNumber == nil || req.SerialNumber.Sign() <= 0 {
		return ocsp.MalformedRequestErrorResponse, time.Time{}, time.Time{}
	}
	hashes, ok := r.issuerHashes[req.HashAlgorithm]
	if !ok || !bytes.Equal(hashes[0], req.IssuerNameHash) || !bytes.Equal(hashes[1], req.IssuerKeyHash) {
		return ocsp.UnauthorizedErrorResponse, time.Time{}, time.Time{}
	}
	k := ocspKey{serial: req.SerialNumber.String(), hash: req.HashAlgorithm}
	now := r.now()
	r.mu.Lock()
	e, u := r.cache[k], r.unknown[k]
	r.mu.Unlock()
	if u != nil && now.Before(u.thisUpdate.Add(r.validity/2)) {
		// Still unknown (a serial issued since is answered afresh).
		if known, err := r.ca.Known(k.serial); err == nil && !known {
			return u.der, u.thisUpdate, u.nextUpdate
		}
	}
	if e != nil && now.Before(e.thisUpdate.Add(r.validity/2)) {
		if e.revoked {
			return e.der, e.thisUpdate, e.nextUpdate
		}
		// A revocation since is seen at once.
		if rev, err := r.ca.Revocation(k.serial); err == nil && rev == nil {
			return e.der, e.thisUpdate, e.nextUpdate
		}
	}
	e, err = r.sign(req, k.serial, now)
	if err != nil {
		return ocsp.InternalErrorErrorResponse, time.Time{}, time.Time{}
	}
	return e.der, e.thisUpdate, e.nextUpdate
}

// sign builds and signs the response for serial and caches it (an unknown
// serial's in the smaller table of its own).
func (r *Responder) sign(req *ocsp.Request, serial string, now time.Time) (*ocspEntry, error) {
	tmpl := ocsp.Response{
		SerialNumber: req.SerialNumber, IssuerHash: req.HashAlgorithm,
		ThisUpdate: now.Add(-time.Minute).Truncate(time.Second), Status: ocsp.Good,
	}
	tmpl.NextUpdate = tmpl.ThisUpdate.Add(r.validity)
	known, err := r.ca.Known(serial)
	if err != nil {
		return nil, err
	}
	if !known {
		tmpl.Status = ocsp.Unknown
	} else {
		rev, err := r.ca.Revocation(serial)
		if err != nil {
			return nil, err
		}
		if rev != nil {
			tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = ocsp.Revoked, rev.At.Truncate(time.Second), rev.Reason
		}
	}
	r.mu.Lock()
	if err := r.loadOrRenewSigner(); err != nil {
		r.mu.Unlock()
		return nil, err
	}
	signer, key := r.signer, r.key
	r.mu.Unlock()
	tmpl.Certificate = signer // embedded: relying parties verify with it
	der, err := ocsp.CreateResponse(r.ca.Intermediate(), signer, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("ocsp: sign response: %w", err)
	}
	e := &ocspEntry{der: der, revoked: tmpl.Status == ocsp.Revoked, thisUpdate: tmpl.ThisUpdate, nextUpdate: tmpl.NextUpdate}
	table, bound := r.cache, ocspCacheEntries
	if !known {
		table, bound = r.unknown, ocspUnknownEntries
	}
	r.mu.Lock()
	if len(table) >= bound {
		for old := range table {
			delete(table, old)
			break
		}
	}
	table[ocspKey{serial: serial, hash: req.HashAlgorithm}] = e
	r.mu.Unlock()
	return e, nil
}

// ServeHTTP answers GET /ocsp/<base64 DER request> and POST /ocsp with an
// application/ocsp-request body; GET answers carry RFC 5019's caching
// headers.
func (r *Responder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var body []byte
	switch req.Method {
	case http.MethodPost:
		b, err := io.ReadAll(io.LimitReader(req.Body, MaxRequestBytes+1))
		if err != nil {
			http.Error(w, "reading the request failed", http.StatusBadRequest)
			return
		}
		body = b
	case http.MethodGet:
		// The request is the rest of the path, base64 (RFC 6960 A.1),
		// possibly URL-encoded; it may contain "/".
		enc := strings.TrimPrefix(req.URL.EscapedPath(), ca.OCSPPath)
		enc = strings.TrimPrefix(enc, "/")
		if len(enc) > 2*MaxRequestBytes {
			http.Error(w, "OCSP request too long", http.StatusRequestURITooLong)
			return
		}
		if u, err := url.PathUnescape(enc); err == nil {
			enc = u
		}
		b, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			b = nil // answered as malformed below
		}
		body = b
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "use GET or POST", http.StatusMethodNotAllowed)
		return
	}
	der, thisUpdate, nextUpdate := r.Respond(body)
	h := w.Header()
	h.Set("Content-Type", "application/ocsp-response")
	h.Set("Content-Length", strconv.Itoa(len(der)))
	if req.Method == http.MethodGet && !nextUpdate.IsZero() {
		now := r.now()
		maxAge := int(nextUpdate.Sub(now).Seconds())
		if maxAge > 0 {
			sum := sha256.Sum256(der)
			h.Set("Cache-Control", "max-age="+strconv.Itoa(maxAge)+", public, no-transform, must-revalidate")
			h.Set("Last-Modified", thisUpdate.UTC().Format(http.TimeFormat))
			h.Set("Expires", nextUpdate.UTC().Format(http.TimeFormat))
			h.Set("ETag", `"`+hex.EncodeToString(sum[:16])+`"`)
		}
	}
	w.Write(der)
}
