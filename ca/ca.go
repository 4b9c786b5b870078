// Package ca is smimeca's issuing certificate authority: from the root and
// the issuing intermediate it signs the leaves, the SCEP RA and its own
// services' delegated certificates, keeps their records and revocations,
// and publishes the CRLs. Callers decide what a certificate says (Template,
// Delegate); ca knows nothing of users, devices, roles or escrow.
package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/db"
	"github.com/smallstep/nosql/database"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"

	"github.com/smimeca/smimeca/ca/keystore"
)

// Key types accepted for the issuing intermediate.
const (
	KeyTypeEC  = "EC"  // ECDSA P-256 (the default)
	KeyTypeRSA = "RSA" // RSA 3072
)

// Lifetimes of the certificates the CA creates for itself.
const (
	rootLifetime         = 20 * 365 * 24 * time.Hour
	intermediateLifetime = 10 * 365 * 24 * time.Hour
	raLifetime           = 5 * 365 * 24 * time.Hour
	// raRenewBefore is how long before its expiry the RA certificate is
	// replaced at start-up.
	raRenewBefore = 60 * 24 * time.Hour
	// raKeyBits is the size of the SCEP decrypter key.
	raKeyBits = 2048
)

// Paths under Config.BaseURL that certificates point to; the server
// serves them on its public port.
const (
	CRLPath    = "/crl"
	OCSPPath   = "/ocsp"
	IssuerPath = "/ca/issuing.crt"
	// RootPath and RootCRLPath serve the root certificate and the root's
	// CRL, which the issuing CA's certificate points to.
	RootPath    = "/ca/root.crt"
	RootCRLPath = "/ca/root.crl"
)

// OIDMailboxStrict is the CA/Browser Forum's reserved policy for
// mailbox-validated S/MIME certificates, strict profile (S/MIME BR 7.1.6.1),
// which every leaf carries.
var OIDMailboxStrict = asn1.ObjectIdentifier{2, 23, 140, 1, 5, 1, 3}

// oidAnyPolicy is RFC 5280's anyPolicy (4.2.1.4).
var oidAnyPolicy = func() x509.OID {
	o, err := x509.OIDFromASN1OID(asn1.ObjectIdentifier{2, 5, 29, 32, 0})
	if err != nil {
		panic(err)
	}
	return o
}()

// Files under Config.Dir.
const (
	RootCertFile         = "root_ca.crt"
	rootKeyFile          = "root_ca.key"
	IntermediateCertFile = "intermediate_ca.crt"
	intermediateKeyFile  = "intermediate_ca.key"
	RACertFile           = "scep_ra.crt"
	raKeyFile            = "scep_ra.key"
)

// ErrNotFound is returned when a certificate serial is unknown to the CA.
var ErrNotFound = errors.New("ca: certificate not found")

// ErrAlreadyRevoked is returned by Revoke for a serial that is already revoked.
var ErrAlreadyRevoked = errors.New("ca: certificate already revoked")

// Config says where the CA keeps its files and how it initialises them.
type Config struct {
	// Dir holds the CA certificates and keys (created on first start).
	Dir string
	// Name is the organisation name put into the CA subjects.
	Name string
	// IssuerKeyType is KeyTypeEC (default) or KeyTypeRSA. It is only used
	// when the intermediate is created. Either way GetCACert serves only
	// RSA certificates (see SCEPCACerts), so SCEP clients that encrypt
	// to every certificate it returns work.
	IssuerKeyType string
	// SCEPOmitRoot leaves the root out of GetCACert where the RA is
	// signed by the issuing CA (an RSA issuing CA); where the root signs
	// the RA, GetCACert always serves it.
	SCEPOmitRoot bool
	// BaseURL is the public plain http:// base URL of this CA's server; the
	// URLs certificates carry are under it: the CRL distribution point
	// (CRLPath, also the CRL's issuing distribution point), the OCSP
	// responder (OCSPPath) and the issuing CA's certificate (IssuerPath)
	// for authorityInformationAccess.
	BaseURL string
	// PolicyOIDs are private certificate policies (dotted OIDs) added to
	// every leaf beside the S/MIME BR mailbox-validated strict policy.
	PolicyOIDs []string
	// CRLValidity is how long a generated CRL is valid (default 24 h); the CRL
	// is regenerated well before and on every revocation.
	CRLValidity time.Duration
	// Keys holds the CA's private keys (default: FileKeys(Dir)). The CA
	// creates in it the keys it does not find there on first start.
	Keys keystore.Store
}

// Validate reports whether the configuration is usable.
func (c *Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("ca: config: Dir is required")
	case !strings.HasPrefix(c.BaseURL, "http://"):
		// RFC 5280 4.2.1.13 and the S/MIME BR (7.1.2.3) want plain http:
		// a CRL or OCSP fetch must not depend on validating TLS.
		return fmt.Errorf("ca: config: BaseURL %q is not a plain http:// URL (certificates' CRL, OCSP and issuer URLs must be http)", c.BaseURL)
	case c.IssuerKeyType != "" && c.IssuerKeyType != KeyTypeEC && c.IssuerKeyType != KeyTypeRSA:
		return fmt.Errorf("ca: config: IssuerKeyType %q is not EC or RSA", c.IssuerKeyType)
	}
	for _, o := range c.PolicyOIDs {
		if _, err := x509.ParseOID(o); err != nil || o == OIDMailboxStrict.String() {
			return fmt.Errorf("ca: config: policy OID %q is not a dotted OID of a private policy", o)
		}
	}
	return nil
}

// Authority is the issuing CA.
type Authority struct {
	auth         *authority.Authority
	db           db.AuthDB
	deferring    *deferringDB // nil when database is not a *db.DB
	root         *x509.Certificate
	intermediate *x509.Certificate
	ra           *x509.Certificate
	raKey        RAKey
	raUnderRoot  bool // the root signed ra (see raUnderRoot)
	omitRoot     bool // Config.SCEPOmitRoot
	crlURL       string
	ocspURL      string
	issuerURL    string
	policies     []string // dotted OIDs of every leaf's certificatePolicies
	roots        *x509.CertPool
	inters       *x509.CertPool
	closeOnce    sync.Once
	rootCRL      *rootCRL
	// dir, keys, name and interKey issue the OCSP responder's certificate.
	dir      string
	keys     keystore.Store
	name     string
	interKey crypto.Signer
	// crlMu serialises this process's CRL generations (generateCRL) and
	// the root CRL's reloads.
	crlMu sync.Mutex
}

// Open loads the CA from cfg.Dir, creating the root, the intermediate and the
// RA certificate on first start, and starts the embedded authority on
// database (normally the bbolt database under the data directory). The RA
// certificate is replaced when it is close to expiry.
func Open(cfg Config, database db.AuthDB) (*Authority, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		cfg.Name = "smimeca"
	}
	if cfg.CRLValidity <= 0 {
		cfg.CRLValidity = 24 * time.Hour
	}
	if cfg.Keys == nil {
		cfg.Keys = keystore.Files(cfg.Dir)
	}
	base := strings.TrimRight(cfg.BaseURL, "/")
	policies := []string{OIDMailboxStrict.String()}
	policies = append(policies, cfg.PolicyOIDs...)
	// The root key is offline: it is used only to create the hierarchy
	// (the first start, or init) and never loaded once the issuing CA
	// exists; the root's CRL is signed then and by `smimeca root crl`.
	root, rootKey, err := rootForOpen(cfg)
	if err != nil {
		return nil, err
	}
	inter, interKey, err := loadOrCreateIntermediate(cfg, base, root, rootKey)
	if err != nil {
		return nil, err
	}
	rcrl, err := loadRootCRL(cfg.Dir, root, rootKey, time.Now())
	if err != nil {
		return nil, err
	}
	ra, raKey, err := loadOrCreateRA(cfg, root, rootKey, inter, interKey)
	if err != nil {
		return nil, err
	}
	rootKey = nil

	conf := &config.Config{
		Root:             []string{filepath.Join(cfg.Dir, RootCertFile)},
		IntermediateCert: filepath.Join(cfg.Dir, IntermediateCertFile),
		CRL: &config.CRLConfig{
			Enabled:          true,
			GenerateOnRevoke: true,
			CacheDuration:    &provisioner.Duration{Duration: cfg.CRLValidity},
			IDPurl:           base + CRLPath,
		},
		AuthorityConfig: &config.AuthConfig{DisableIssuedAtCheck: true},
	}
	// On step-ca's own database type, leaf records are deferred to Sign's
	// caller (see Record); any other AuthDB stores them as step-ca does.
	var deferring *deferringDB
	if d, ok := database.(*db.DB); ok {
		deferring = &deferringDB{DB: d}
		database = deferring
		if err := d.DB.CreateTable(crlStateTable); err != nil {
			return nil, fmt.Errorf("ca: create %s: %w", crlStateTable, err)
		}
	}
	auth, err := authority.NewEmbedded(
		authority.WithConfig(conf),
		authority.WithDatabase(database),
		authority.WithX509RootCerts(root),
		authority.WithX509SignerChain([]*x509.Certificate{inter}, interKey),
		authority.WithQuietInit(),
	)
	if err != nil {
		return nil, fmt.Errorf("ca: start embedded authority: %w", err)
	}
	a := &Authority{
		auth: auth, db: database, deferring: deferring,
		root: root, intermediate: inter, ra: ra, raKey: raKey,
		raUnderRoot: raUnderRoot(root, inter), omitRoot: cfg.SCEPOmitRoot,
		crlURL: base + CRLPath, ocspURL: base + OCSPPath, issuerURL: base + IssuerPath,
		policies: policies, rootCRL: rcrl,
		dir: cfg.Dir, keys: cfg.Keys, name: cfg.Name, interKey: interKey,
		roots: x509.NewCertPool(), inters: x509.NewCertPool(),
	}
	a.roots.AddCert(root)
	a.inters.AddCert(inter)
	return a, nil
}

// Close stops the CRL generator. The database is closed by its owner.
// It is safe to call more than once.
func (a *Authority) Close() error {
	a.closeOnce.Do(a.auth.CloseForReload)
	return nil
}

// Root returns the root CA certificate.
func (a *Authority) Root() *x509.Certificate { return a.root }

// Intermediate returns the issuing intermediate certificate.
func (a *Authority) Intermediate() *x509.Certificate { return a.intermediate }

// RAKey is the SCEP RA's RSA private key: it decrypts requests'
// envelopes and signs CertRep messages. An *rsa.PrivateKey read from the CA
// directory, or a token's key through PKCS#11 (see KeyStore).
type RAKey interface {
	crypto.Signer
	crypto.Decrypter
}

// RA returns the SCEP RA/decrypter certificate and its RSA key.
func (a *Authority) RA() (*x509.Certificate, RAKey) { return a.ra, a.raKey }

// SCEPCACerts returns what SCEP's GetCACert serves after the RA
// certificate: the chain from the RA's issuer up, every certificate RSA.
// With an RSA issuing CA (which signs the RA) that is the issuing CA and
// the root (unless Config.SCEPOmitRoot); with an ECDSA issuing CA the
// root signs the RA and GetCACert serves the root alone: clients that
// encrypt their request to every certificate it returns (Debian's
// scepclient) can, and certmonger verifies the CertRep's signer up to
// it. The issuing CA then reaches devices with their profile and by the
// caIssuers URL every leaf carries.
func (a *Authority) SCEPCACerts() []*x509.Certificate {
	if a.raUnderRoot {
		return []*x509.Certificate{a.root}
	}
	if a.omitRoot {
		return []*x509.Certificate{a.intermediate}
	}
	return []*x509.Certificate{a.intermediate, a.root}
}

// SCEPAnchor returns the certificate GetCACert's chain ends in: the one a
// SCEP payload's CAFingerprint names. Apple's client builds the chain of
// each GetCACert certificate from the others and requires its top to match
// the fingerprint (Security's SecSCEPValidateCACertMessage), so it is the
// root whenever GetCACert serves the root.
func (a *Authority) SCEPAnchor() *x509.Certificate {
	c := a.SCEPCACerts()
	return c[len(c)-1]
}

// RARenewalDue reports whether the RA certificate is within its renewal
// window while the offline root, which signs it (ECDSA issuing CA),
// cannot renew it at start-up: a root ceremony must (ReissueRA).
func (a *Authority) RARenewalDue() bool {
	return a.raUnderRoot && time.Until(a.ra.NotAfter) <= raRenewBefore
}

// CRLURL returns the CRL distribution point URL.
func (a *Authority) CRLURL() string { return a.crlURL }

// OCSPURL returns the OCSP responder URL certificates carry.
func (a *Authority) OCSPURL() string { return a.ocspURL }

// IssuerURL returns the URL of the issuing CA's certificate (DER) that
// certificates carry as caIssuers.
func (a *Authority) IssuerURL() string { return a.issuerURL }

// Fingerprint returns the SHA-256 fingerprint of the root certificate.
func (a *Authority) Fingerprint() [32]byte { return sha256.Sum256(a.root.Raw) }

// Template says what a leaf certificate carries. The public key always comes
// from the CSR; every name comes from the template, never from the CSR.
type Template struct {
	CommonName  string
	Emails      []string
	KeyUsage    []string // x509util names: digitalSignature, contentCommitment, …
	ExtKeyUsage []string // x509util names: emailProtection, …
	NotBefore   time.Time
	NotAfter    time.Time
}

// leafTemplate is the x509util certificate template of every leaf, in the
// JSON form x509util.NewCertificate reads. It is built with encoding/json
// rather than text/template: its values come from policy, not from an
// editable template text, and parsing a sprig template costs about 0.15 ms
// per certificate (a tenth of the enrolment's crypto).
type leafTemplate struct {
	SerialNumber string `json:"serialNumber,omitempty"` // decimal
	Subject      struct {
		CommonName string `json:"commonName"`
	} `json:"subject"`
	EmailAddresses        []string  `json:"emailAddresses"`
	KeyUsage              []string  `json:"keyUsage"`
	ExtKeyUsage           []string  `json:"extKeyUsage"`
	NotBefore             time.Time `json:"notBefore"`
	NotAfter              time.Time `json:"notAfter"`
	CRLDistributionPoints []string  `json:"crlDistributionPoints"`
	OCSPServer            []string  `json:"ocspServer"`
	IssuingCertificateURL []string  `json:"issuingCertificateURL"`
	PolicyIdentifiers     []string  `json:"policyIdentifiers"`
	BasicConstraints      struct {
		IsCA bool `json:"isCA"`
	} `json:"basicConstraints"`
}

// withLeafTemplate is an x509util.Option that supplies t as the template.
func withLeafTemplate(t leafTemplate) x509util.Option {
	return func(_ *x509.CertificateRequest, o *x509util.Options) error {
		b, err := json.Marshal(t)
		if err != nil {
			return err
		}
		o.CertBuffer = bytes.NewBuffer(b)
		return nil
	}
}

type templateOptions []x509util.Option

func (o templateOptions) Options(provisioner.SignOptions) []x509util.Option { return o }

// Issue signs a certificate for the public key in csr, shaped by t, stores
// its record in the CA database and returns the leaf followed by the issuing
// chain. The CSR signature is checked.
func (a *Authority) Issue(ctx context.Context, csr *x509.CertificateRequest, t Template) ([]*x509.Certificate, error) {
	iss, err := a.Sign(ctx, csr, t)
	if err != nil {
		return nil, err
	}
	if ops := iss.Record.Ops(); len(ops) > 0 {
		if err := a.deferring.DB.Update(&database.Tx{Operations: ops}); err != nil {
			return nil, fmt.Errorf("ca: store certificate %s: %w", iss.Chain[0].SerialNumber, err)
		}
	}
	return iss.Chain, nil
}

// Sign signs a certificate for the public key in csr, shaped by t, like
// Issue, but leaves the CA database's record of it to the caller: it is in
// the returned Issuance and must be committed (Record.Ops, on the database
// given to Open) before the certificate leaves the process. A certificate
// whose record is never committed was never issued as far as the CA knows
// (no inventory, no revocation). On a database that is not step-ca's
// *db.DB the record is stored here and Record is empty.
func (a *Authority) Sign(ctx context.Context, csr *x509.CertificateRequest, t Template) (Issuance, error) {
	if t.NotAfter.IsZero() || !t.NotAfter.After(t.NotBefore) {
		return Issuance{}, errors.New("ca: template validity is empty")
	}
	var lt leafTemplate
	lt.Subject.CommonName = t.CommonName
	lt.EmailAddresses = t.Emails
	lt.KeyUsage = t.KeyUsage
	lt.ExtKeyUsage = t.ExtKeyUsage
	lt.NotBefore = t.NotBefore.UTC().Truncate(time.Second)
	lt.NotAfter = t.NotAfter.UTC().Truncate(time.Second)
	lt.CRLDistributionPoints = []string{a.crlURL}
	lt.OCSPServer = []string{a.ocspURL}
	lt.IssuingCertificateURL = []string{a.issuerURL}
	lt.PolicyIdentifiers = a.policies
	rec := &Record{}
	if a.deferring != nil {
		// The serial is chosen here so that the database can tell this
		// certificate's write from any other.
		sn, err := newSerial()
		if err != nil {
			return Issuance{}, err
		}
		lt.SerialNumber = sn.String()
		a.deferring.pending.Store(lt.SerialNumber, rec)
		defer a.deferring.pending.Delete(lt.SerialNumber)
	}
	chain, err := a.auth.SignWithContext(ctx, csr, provisioner.SignOptions{},
		templateOptions{withLeafTemplate(lt)})
	if err != nil {
		return Issuance{}, fmt.Errorf("ca: issue: %w", err)
	}
	if a.deferring != nil && (chain[0].SerialNumber.String() != lt.SerialNumber || len(rec.ops) == 0) {
		return Issuance{}, fmt.Errorf("ca: issue: certificate %s was not recorded", chain[0].SerialNumber)
	}
	return Issuance{Chain: chain, Record: *rec}, nil
}

// Certificate returns the issued certificate with the given decimal serial,
// or ErrNotFound.
func (a *Authority) Certificate(serial string) (*x509.Certificate, error) {
	crt, err := a.db.GetCertificate(serial)
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("%w: serial %s", ErrNotFound, serial)
		}
		return nil, fmt.Errorf("ca: read certificate %s: %w", serial, err)
	}
	return crt, nil
}

// Issued returns the issued certificate with the decimal serial followed by
// the issuing intermediate, as Sign returned it; ErrNotFound for a serial
// the CA never issued.
func (a *Authority) Issued(serial string) ([]*x509.Certificate, error) {
	crt, err := a.Certificate(serial)
	if err != nil {
		return nil, err
	}
	return []*x509.Certificate{crt, a.intermediate}, nil
}

// IsRevoked reports whether the certificate with the decimal serial is revoked.
func (a *Authority) IsRevoked(serial string) (bool, error) {
	ok, err := a.db.IsRevoked(serial)
	if err != nil {
		return false, fmt.Errorf("ca: revocation status of %s: %w", serial, err)
	}
	return ok, nil
}

// VerifyIssued reports (nil) whether crt was issued by this CA, is in the
// inventory with the same bytes, chains to the root at time now, and is not
// revoked.
func (a *Authority) VerifyIssued(crt *x509.Certificate, now time.Time) error {
	if _, err := crt.Verify(x509.VerifyOptions{
		Roots: a.roots, Intermediates: a.inters, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("ca: certificate does not chain to this CA: %w", err)
	}
	stored, err := a.Certificate(crt.SerialNumber.String())
	if err != nil {
		return err
	}
	if !stored.Equal(crt) {
		return fmt.Errorf("ca: certificate %s differs from the one issued", crt.SerialNumber)
	}
	revoked, err := a.IsRevoked(crt.SerialNumber.String())
	if err != nil {
		return err
	}
	if revoked {
		return fmt.Errorf("ca: certificate %s is revoked", crt.SerialNumber)
	}
	return nil
}

// Revocation reason codes (RFC 5280 5.3.1) accepted by Revoke.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
)

func validReason(code int) bool {
	switch code {
	case ReasonUnspecified, ReasonKeyCompromise, ReasonAffiliationChanged, ReasonSuperseded, ReasonCessationOfOperation:
		return true
	}
	return false
}

// Revoke revokes the certificate with the given decimal serial and
// regenerates the CRL. It returns ErrNotFound for a serial the CA never issued
// and ErrAlreadyRevoked for one already revoked.
func (a *Authority) Revoke(ctx context.Context, serial string, reasonCode int, reason string) error {
	if !validReason(reasonCode) {
		return fmt.Errorf("ca: revocation reason code %d is not one of 0,1,3,4,5", reasonCode)
	}
	if revoked, err := a.IsRevoked(serial); err != nil {
		return err
	} else if revoked {
		return fmt.Errorf("%w: serial %s", ErrAlreadyRevoked, serial)
	}
	if a.deferring == nil {
		crt, err := a.Certificate(serial)
		if err != nil {
			return err
		}
		ctx = provisioner.NewContextWithMethod(ctx, provisioner.RevokeMethod)
		if err := a.auth.Revoke(ctx, &authority.RevokeOptions{
			Serial: serial, ReasonCode: reasonCode, Reason: reason, MTLS: true, Crt: crt,
		}); err != nil {
			if errors.Is(err, db.ErrAlreadyExists) {
				return fmt.Errorf("%w: serial %s", ErrAlreadyRevoked, serial)
			}
			return fmt.Errorf("ca: revoke %s: %w", serial, err)
		}
		return nil
	}
	// On step-ca's database the revocation and the CRL's pending token
	// are one transaction, as for every revocation smimeca commits itself
	// (RevocationRecord): a CRL read on another node between the two could
	// otherwise take the token and publish a list without this revocation.
	rec, err := a.RevocationRecord(serial, reasonCode, reason, time.Now())
	if err != nil {
		return err
	}
	if err := a.deferring.DB.DB.Update(&database.Tx{Operations: rec.ops}); err != nil {
		return fmt.Errorf("ca: revoke %s: %w", serial, err)
	}
	if !rec.Applied() {
		return fmt.Errorf("%w: serial %s", ErrAlreadyRevoked, serial)
	}
	return a.publishRevocations()
}

// CRL returns the current DER-encoded CRL, regenerating it when it has
// expired or was invalidated.
func (a *Authority) CRL() ([]byte, error) {
	if err := a.publishRevocations(); err != nil {
		return nil, err
	}
	info, err := a.auth.GetCertificateRevocationList()
	if err == nil && time.Now().Before(info.ExpiresAt) {
		return info.Data, nil
	}
	a.crlMu.Lock()
	_, err = a.generateCRL()
	a.crlMu.Unlock()
	if err != nil {
		return nil, err
	}
	info, err = a.auth.GetCertificateRevocationList()
	if err != nil {
		return nil, fmt.Errorf("ca: read CRL: %w", err)
	}
	return info.Data, nil
}

// publishRevocations regenerates the CRL when revocations were committed
// since it was last generated, through this node or any node sharing the
// database: their transactions wrote the pending token (crlPendingOp), so a
// burst of revocations or renewals costs one regeneration instead of one
// each (a regeneration lists every revoked certificate).
//
// The token is cleared only when this regeneration's CRL is the one stored
// and no newer revocation replaced the token meanwhile. Nodes regenerate
// at the same time, each numbering its CRL from the one it read; of two
// CRLs of one number only the first stored is kept (StoreCRL), and it may
// be the one read from the older list. The node whose CRL was dropped
// leaves the token, so the next read of any node generates a newer CRL from
// a list that has every revocation the token stands for.
func (a *Authority) publishRevocations() error {
	token, err := a.crlPending()
	if err != nil {
		return err
	}
	if token == nil {
		return nil
	}
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	if token, err = a.crlPending(); err != nil || token == nil {
		return err // nil: published while this call waited
	}
	stored, err := a.generateCRL()
	if err != nil || !stored {
		return err
	}
	if _, _, err := a.deferring.DB.DB.CmpAndSwap(crlStateTable, crlPendingKey, token, []byte{}); err != nil {
		return fmt.Errorf("ca: clear the CRL's pending revocations: %w", err)
	}
	return nil
}

// generateCRL regenerates the CRL from the revocations committed so far and
// reports whether it is the CRL now stored (false when another node's
// CRL of the same number was stored first, or on a database that is not
// step-ca's). The caller holds crlMu: every other generation of this
// process but step-ca's periodic one goes through here (see crlStored).
func (a *Authority) generateCRL() (bool, error) {
	if a.deferring != nil {
		a.deferring.crlStored.Store(false)
	}
	if err := a.auth.GenerateCertificateRevocationList(); err != nil {
		return false, fmt.Errorf("ca: generate CRL: %w", err)
	}
	return a.deferring != nil && a.deferring.crlStored.Load(), nil
}

// crlPending returns the pending-revocations token, nil when there is none
// (or the database is not step-ca's).
func (a *Authority) crlPending() ([]byte, error) {
	if a.deferring == nil {
		return nil, nil
	}
	token, err := a.deferring.DB.DB.Get(crlStateTable, crlPendingKey)
	if err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("ca: read the CRL's pending revocations: %w", err)
	}
	if len(token) == 0 {
		return nil, nil
	}
	return token, nil
}

// RootCRL returns the root's DER CRL (which lists nothing: smimeca never
// revokes its issuing CA), as last signed with the offline root key (at
// the hierarchy's creation or by `smimeca root crl`; a newer file is picked
// up without a restart).
func (a *Authority) RootCRL() ([]byte, error) {
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	if err := a.rootCRL.reload(); err != nil {
		return nil, err
	}
	return a.rootCRL.der, nil
}

// RootCRLNextUpdate returns when the served root CRL expires: before then a
// root ceremony must sign the next (`smimeca root crl`).
func (a *Authority) RootCRLNextUpdate() time.Time {
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	a.rootCRL.reload()
	return a.rootCRL.next
}

// rootForOpen returns the root certificate, and its key only when the
// issuing CA does not exist yet (nil otherwise): a new root is created with
// its key on the first start.
func rootForOpen(cfg Config) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(cfg.Dir, RootCertFile)
	if _, err := os.Stat(certPath); errors.Is(err, fs.ErrNotExist) {
		return loadOrCreateRoot(cfg)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, IntermediateCertFile)); errors.Is(err, fs.ErrNotExist) {
		return loadOrCreateRoot(cfg)
	}
	crt, err := pemutil.ReadCertificate(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: read %s: %w", certPath, err)
	}
	return crt, nil, nil
}

// LoadRoot returns the root certificate and its key from keys: for root
// ceremonies only (RootCRL signing, re-issuing the issuing CA).
func LoadRoot(dir string, keys keystore.Store) (*x509.Certificate, crypto.Signer, error) {
	return loadPair(keys, filepath.Join(dir, RootCertFile), keystore.Root, false)
}

func isNotFound(err error) bool {
	return database.IsErrNotFound(err) || errors.Is(err, database.ErrNotFound)
}

func loadOrCreateRoot(cfg Config) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(cfg.Dir, RootCertFile)
	crt, key, err := loadPair(cfg.Keys, certPath, keystore.Root, false)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return crt, key, err
	}
	// The root is RSA 4096 whatever the issuing CA's key: GetCACert serves
	// it, and SCEP clients encrypt to every certificate there (see
	// SCEPCACerts). Its key signs only in ceremonies, so RSA costs nothing
	// per enrolment.
	spec := keystore.Spec{Type: KeyTypeRSA, Bits: 4096}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cfg.Name + " Root CA", Organization: []string{cfg.Name}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(rootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 1,
		// The root is the trust anchor every managed device installs:
		// constrained like the issuing CA, it can vouch for no TLS server
		// name or address, whatever is ever signed below it.
		ExcludedDNSDomains:          []string{""},
		ExcludedIPRanges:            []*net.IPNet{{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, {IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
		PermittedDNSDomainsCritical: true,
	}
	return issuePair(cfg.Keys, keystore.Root, spec, false, "root", certPath, tmpl, nil, nil)
}

func loadOrCreateIntermediate(cfg Config, base string, root *x509.Certificate, rootKey crypto.Signer) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(cfg.Dir, IntermediateCertFile)
	crt, key, err := loadPair(cfg.Keys, certPath, keystore.Issuing, false)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return crt, key, err
	}
	spec := keystore.Spec{Type: KeyTypeEC, Bits: 256}
	if cfg.IssuerKeyType == KeyTypeRSA {
		spec = keystore.Spec{Type: KeyTypeRSA, Bits: 3072}
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cfg.Name + " S/MIME Issuing CA", Organization: []string{cfg.Name}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(intermediateLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
		// Installed on every device as a trust anchor's child: it may vouch
		// for S/MIME only, never for a TLS server name or address.
		ExtKeyUsage:                 []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		ExcludedDNSDomains:          []string{""},
		ExcludedIPRanges:            []*net.IPNet{{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, {IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
		PermittedDNSDomainsCritical: true, // marks the name constraints critical (RFC 5280 4.2.1.10)
		// S/MIME BR 7.1.2.2: its policies (anyPolicy: the root and the
		// issuing CA are one operator's, affiliated; the leaves name the
		// mailbox-validated strict policy), where its status and its
		// issuer are published.
		Policies:              []x509.OID{oidAnyPolicy},
		CRLDistributionPoints: []string{base + RootCRLPath},
		IssuingCertificateURL: []string{base + RootPath},
	}
	return issuePair(cfg.Keys, keystore.Issuing, spec, false, "intermediate", certPath, tmpl, root, rootKey)
}

// raUnderRoot reports whether the root, not the issuing CA, signs the
// SCEP RA certificate: when the issuing CA is not RSA and the root is.
// GetCACert must serve only RSA certificates (clients encrypt to each) and
// the RA's issuer (certmonger verifies CertRep up to a certificate it got
// there); an ECDSA issuing CA is neither, so the RA goes under the RSA
// root as an infrastructure certificate (S/MIME BR 6.1.7 lets a root key
// sign those). A hierarchy whose root is ECDSA (made before smimeca
// switched to RSA roots) keeps its RA under the issuing CA.
func raUnderRoot(root, inter *x509.Certificate) bool {
	_, rsaInter := inter.PublicKey.(*rsa.PublicKey)
	_, rsaRoot := root.PublicKey.(*rsa.PublicKey)
	return !rsaInter && rsaRoot
}

// raTemplate is the SCEP RA certificate's profile for the CA named name
// (Config.Name), valid from now.
func raTemplate(name string, now time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:   pkix.Name{CommonName: name + " SCEP RA", Organization: []string{name}},
		NotBefore: now.Add(-time.Minute),
		NotAfter:  now.Add(raLifetime),
		// Signs CertRep messages and decrypts pkcsPKIEnvelopes.
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
	}
}

// loadOrCreateRA returns the RA certificate and key, creating them on the
// first start and replacing them (new key) when the certificate is close to
// its end or not signed by its parent (raUnderRoot). Under the root, whose
// key is loaded only while the hierarchy is created, a certificate in its
// renewal window is kept (the app warns: RARenewalDue) and a missing or
// expired one is an error naming the ceremony that makes it (ReissueRA).
func loadOrCreateRA(cfg Config, root *x509.Certificate, rootKey crypto.Signer, inter *x509.Certificate, interKey crypto.Signer) (*x509.Certificate, RAKey, error) {
	parent, parentKey := inter, interKey
	if raUnderRoot(root, inter) {
		parent, parentKey = root, rootKey
	}
	certPath := filepath.Join(cfg.Dir, RACertFile)
	crt, key, err := loadPair(cfg.Keys, certPath, keystore.RA, true)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	if err == nil {
		rk, ok := key.(RAKey)
		if _, rsaKey := key.Public().(*rsa.PublicKey); !ok || !rsaKey {
			return nil, nil, fmt.Errorf("ca: %s is not an RSA key; SCEP content encryption needs RSA", cfg.Keys.Location(keystore.RA))
		}
		left := time.Until(crt.NotAfter)
		if crt.CheckSignatureFrom(parent) == nil && (left > raRenewBefore || (parentKey == nil && left > 0)) {
			return crt, rk, nil
		}
	}
	if parentKey == nil {
		return nil, nil, fmt.Errorf("ca: the SCEP RA certificate %s is missing, expired or not signed by the root, which signs it in this hierarchy and is offline: make it in a root ceremony (smimeca root reissue-ra)", certPath)
	}
	tmpl := raTemplate(cfg.Name, time.Now())
	crt, key, err = issuePair(cfg.Keys, keystore.RA, keystore.Spec{Type: KeyTypeRSA, Bits: raKeyBits}, true, "SCEP RA certificate", certPath, tmpl, parent, parentKey)
	if err != nil {
		return nil, nil, err
	}
	rk, ok := key.(RAKey)
	if !ok {
		return nil, nil, fmt.Errorf("ca: %s cannot decrypt; SCEP needs an RSA key that does", cfg.Keys.Location(keystore.RA))
	}
	return crt, rk, nil
}

// loadPair reads the certificate at certPath and its key (keystore.LoadPair).
func loadPair(keys keystore.Store, certPath string, name keystore.Name, renewable bool) (*x509.Certificate, crypto.Signer, error) {
	return keystore.LoadPair(keys, certPath, name, renewable)
}

// issuePair creates the named key in keys, signs tmpl for it with parentKey
// (x509util picks a random serial; a nil parent self-signs) and writes the
// certificate to certPath. Only a renewed certificate's key (the RA's and
// the delegates') replaces a key of that name (replace); the root's, the
// issuing CA's and the API CA's never do (KeyStore.Create refuses).
func issuePair(keys keystore.Store, name keystore.Name, spec keystore.Spec, replace bool, what, certPath string, tmpl, parent *x509.Certificate, parentKey crypto.Signer) (*x509.Certificate, crypto.Signer, error) {
	if replace {
		if err := keys.Delete(name); err != nil {
			return nil, nil, err
		}
	}
	key, err := keys.Create(name, spec)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: %s: %w", what, err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	crt, err := x509util.CreateCertificate(tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: create %s: %w", what, err)
	}
	return crt, key, writeCertificates(certPath, crt)
}
