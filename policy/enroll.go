// Package policy decides who gets what: smimeca's rules, as separate
// services — Enrollment (which user and device a one-time challenge binds,
// what a CSR may ask for, what the S/MIME signing certificate carries, who
// may renew), Registry (devices and their identities), Revocations, Escrow
// (what may be imported), Bundles (what is released, to whom) and
// Credentials (API callers) — each audited. It decides; ca signs,
// pfx-connector wraps, the stores keep.
//
// It knows nothing of HTTP, gRPC or Vault. Its stores are the small
// interfaces in stores.go; implementations live in subpackages named after
// their backend.
package policy

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base32"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/smimeca/smimeca/ca"
)

// Defaults of Config.
const (
	DefaultValidity     = 365 * 24 * time.Hour
	DefaultChallengeTTL = 24 * time.Hour
	MaxChallengeTTL     = 30 * 24 * time.Hour
	DefaultMinRSABits   = 2048
	// MaxValidity is the longest validity of a mailbox-validated strict
	// certificate (S/MIME BR 6.3.2: 825 days).
	MaxValidity = 825 * 24 * time.Hour
	// StaticDevice prefixes the device id recorded for enrolments that
	// used the static lab challenge: such a device is anonymous, so each
	// enrolment is its own unregistered device ("static-challenge/<serial>")
	// and renews on it.
	StaticDevice = "static-challenge"
)

// Config holds the issuance rules.
type Config struct {
	// Domains limits the users that may get challenges (nil: any).
	Domains *Domains
	// Validity of issued signing certificates (default 1 year, at most
	// MaxValidity).
	Validity time.Duration
	// ContentCommitment adds the contentCommitment (nonRepudiation) key usage.
	ContentCommitment bool
	// MinRSABits is the smallest device RSA key accepted (default 2048).
	MinRSABits int
	// ChallengeTTL is the default challenge lifetime (default 24 h).
	ChallengeTTL time.Duration
	// StaticChallenge, when not empty, is a shared lab secret accepted instead
	// of a one-time challenge: the device then names its own address, which
	// must be in Domains. Off by default; never for production.
	StaticChallenge string
	// DeviceIdentityCAs are the CAs that issue devices' identity
	// certificates (the MDM's device identity CA). Without them no device
	// can be registered with an identity, so no key can be released.
	DeviceIdentityCAs *x509.CertPool
	// IdentityFields are where a device identity certificate must name the
	// device id (default DefaultIdentityFields: subject CN or a SAN).
	IdentityFields []IdentityField
	// RekeyHold is how long key releases to a device wait after its
	// identity was replaced, unless an administrator confirms it (default
	// DefaultRekeyHold; at most 30 days).
	RekeyHold time.Duration
	// IdentityRevocations, when set, says whether the MDM revoked a device
	// identity (its CA's CRL): a revoked identity is neither registered
	// nor released to.
	IdentityRevocations IdentityRevocations
}

// IdentityRevocations says whether a device identity certificate was
// revoked by the CA that issued it.
type IdentityRevocations interface {
	// Revoked reports whether c is revoked; an error means the answer is
	// unknown (a CRL that cannot be read or has expired), and the caller
	// refuses.
	Revoked(c *x509.Certificate) (bool, error)
}

// Validate fills defaults and checks the values.
func (c *Config) Validate() error {
	if c.Validity == 0 {
		c.Validity = DefaultValidity
	}
	if c.MinRSABits == 0 {
		c.MinRSABits = DefaultMinRSABits
	}
	if c.ChallengeTTL == 0 {
		c.ChallengeTTL = DefaultChallengeTTL
	}
	if len(c.IdentityFields) == 0 {
		c.IdentityFields = DefaultIdentityFields
	}
	if c.RekeyHold == 0 {
		c.RekeyHold = DefaultRekeyHold
	}
	switch {
	case c.Validity < time.Hour || c.Validity > MaxValidity:
		return fmt.Errorf("policy: config: certificate validity %s must be between 1h and %s (825 days, the S/MIME BR limit)", c.Validity, MaxValidity)
	case c.MinRSABits < 2048:
		return errors.New("policy: config: minimum RSA key size must be at least 2048")
	case c.ChallengeTTL < time.Minute || c.ChallengeTTL > MaxChallengeTTL:
		return fmt.Errorf("policy: config: challenge TTL must be between 1m and %s", MaxChallengeTTL)
	case c.RekeyHold < 0 || c.RekeyHold > MaxChallengeTTL:
		return fmt.Errorf("policy: config: the rekey hold %s must be between 0 and %s", c.RekeyHold, MaxChallengeTTL)
	case c.StaticChallenge != "" && len(c.StaticChallenge) < 16:
		return errors.New("policy: config: the static challenge must be at least 16 characters")
	}
	return nil
}

// rules is what the enrolment, registry and revocation services share: the
// configuration, the issuer, the store, where audit events go, the clock
// and the randomness.
type rules struct {
	cfg    Config
	issuer Issuer
	store  Store
	audit  Auditor
	now    func() time.Time
	rand   io.Reader
}

// Enrollment applies the enrolment rules: one-time challenges and the
// certificate requests of devices. It is safe for concurrent use.
type Enrollment struct {
	*rules
	devices *Registry
	// inUse holds the hashes of challenges an enrolment in this process is
	// using right now, so that a concurrent second use is refused before
	// anything is signed (the store's transaction is the final arbiter).
	inUse sync.Map
}

// Registry is the device registry: devices, their identity certificates
// (registration, rekey, confirmation) and retirement. It is safe for
// concurrent use.
type Registry struct {
	*rules
	revocations *Revocations
}

// Revocations lists and revokes issued certificates. It is safe for
// concurrent use.
type Revocations struct {
	*rules
}

// Services are the enrolment, device-registry and revocation services on
// one issuer and store. Callers hand each consumer the one it needs; the
// embedding lets a test or a tool that drives all three call them as one.
type Services struct {
	*Enrollment
	*Registry
	*Revocations
}

// Option configures the services.
type Option func(*rules)

// WithAuditor sets where audit events go (default: nowhere).
func WithAuditor(a Auditor) Option { return func(r *rules) { r.audit = a } }

// WithClock sets the clock (default time.Now).
func WithClock(now func() time.Time) Option { return func(r *rules) { r.now = now } }

// WithRand sets the randomness for challenges (default crypto/rand).
func WithRand(rd io.Reader) Option { return func(r *rules) { r.rand = rd } }

type nopAuditor struct{}

func (nopAuditor) Audit(context.Context, Event) {}

func (nopAuditor) Record(context.Context, Event) error { return nil }

// New returns the enrolment, registry and revocation services on the given
// issuer and store.
func New(issuer Issuer, store Store, cfg Config, opts ...Option) (*Services, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &rules{cfg: cfg, issuer: issuer, store: store, audit: nopAuditor{}, now: time.Now, rand: rand.Reader}
	for _, o := range opts {
		o(r)
	}
	rv := &Revocations{rules: r}
	reg := &Registry{rules: r, revocations: rv}
	return &Services{Enrollment: &Enrollment{rules: r, devices: reg}, Registry: reg, Revocations: rv}, nil
}

// NewChallenge is a freshly created challenge.
type NewChallenge struct {
	// Secret is the one-time challenge password to give to the device. It is
	// returned once and stored only as a hash.
	Secret    string
	User      string
	Device    string
	ExpiresAt time.Time
}

// challengeBytes is the entropy of a challenge (256 bits).
const challengeBytes = 32

// CreateChallenge creates a one-time challenge that lets one registered,
// active device enrol one signing certificate for user; it replaces the
// device's previous challenge. ttl 0 means the configured default.
func (e *Enrollment) CreateChallenge(ctx context.Context, user, device string, ttl time.Duration) (NewChallenge, error) {
	raw := make([]byte, challengeBytes)
	if _, err := io.ReadFull(e.rand, raw); err != nil {
		return NewChallenge{}, fmt.Errorf("policy: challenge randomness: %w", err)
	}
	return e.putChallenge(ctx, user, device, raw, ttl, "")
}

// ArmChallenge makes secret (at least 256 bits, which the caller derived
// for this device and keeps to itself) the device's one-time challenge,
// as CreateChallenge makes a random one: a Declarative Device Management
// SCEP asset carries a challenge whose hash its declaration published
// before the device fetched it. A challenge already used is not armed
// again (ReasonChallengeUsed). how goes into the audit event.
func (e *Enrollment) ArmChallenge(ctx context.Context, user, device string, secret []byte, how string) (NewChallenge, error) {
	if len(secret) < challengeBytes {
		return NewChallenge{}, fmt.Errorf("policy: a challenge needs %d bytes of secret", challengeBytes)
	}
	raw := secret[:challengeBytes]
	// One-time still: a challenge that paid for a certificate is not armed
	// again (ReasonChallengeUsed).
	if c, err := e.store.Challenge(ctx, hashChallenge(encodeChallenge(raw))); err == nil && !c.ConsumedAt.IsZero() {
		return NewChallenge{}, reject(ReasonChallengeUsed, "this challenge paid for certificate "+c.Serial+"; a new one needs a new signing revision")
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return NewChallenge{}, fmt.Errorf("policy: look the challenge up: %w", err)
	}
	return e.putChallenge(ctx, user, device, raw, 0, how)
}

func (e *Enrollment) putChallenge(ctx context.Context, user, device string, raw []byte, ttl time.Duration, how string) (NewChallenge, error) {
	d, err := e.devices.activeDevice(ctx, user, device)
	if err != nil {
		return NewChallenge{}, err
	}
	u := d.User
	if ttl == 0 {
		ttl = e.cfg.ChallengeTTL
	}
	if ttl < time.Minute || ttl > MaxChallengeTTL {
		return NewChallenge{}, reject(ReasonBadTTL, fmt.Sprintf("ttl %s is outside 1m..%s", ttl, MaxChallengeTTL))
	}
	secret := encodeChallenge(raw)
	now := e.now().UTC()
	c := Challenge{User: u, Device: device, CreatedAt: now, ExpiresAt: now.Add(ttl), CreatedBy: ActorFrom(ctx).Name}
	if err := e.store.PutChallenge(ctx, hashChallenge(secret), c); errors.Is(err, ErrInactiveDevice) {
		return NewChallenge{}, errRetiredNow(u, device)
	} else if err != nil {
		return NewChallenge{}, fmt.Errorf("policy: store challenge: %w", err)
	}
	detail := "expires " + c.ExpiresAt.Format(time.RFC3339)
	if how != "" {
		detail += "; " + how
	}
	e.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: ActionChallengeCreate,
		User: u, Device: device, Result: "ok", Detail: detail})
	return NewChallenge{Secret: secret, User: u, Device: device, ExpiresAt: c.ExpiresAt}, nil
}

// encodeChallenge is how a challenge's secret bytes are written: base32
// (A–Z, 2–7), every character of which is allowed in a PrintableString,
// which clients such as certmonger encode the CSR's challengePassword as
// (base64's "_" or "/" would make the CSR unparsable).
func encodeChallenge(raw []byte) string {
	return base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw)
}

func hashChallenge(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// RequestKind says how a device asks for a certificate.
type RequestKind int

// Request kinds.
const (
	// Initial is a first enrolment (SCEP PKCSReq) authorised by a challenge.
	Initial RequestKind = iota + 1
	// Renewal is a renewal (SCEP RenewalReq) authorised by the certificate
	// that signed the request.
	Renewal
)

// Request is a device's certificate request as the transport decoded it.
type Request struct {
	Kind RequestKind
	CSR  *x509.CertificateRequest
	// Challenge is the CSR's challengePassword (Initial).
	Challenge string
	// Signer is the certificate that signed the SCEP message (Renewal).
	Signer *x509.Certificate
	// TransactionID is the SCEP transaction's identifier: a request
	// repeated with the same one and the same key gets the certificate
	// already issued (RFC 8894 section 3.3.1).
	TransactionID string
}

// Enroll decides a device's request and, when it is allowed, issues the
// certificate. It returns leaf followed by the issuing chain. A refused
// request gets a *RejectError; a malformed request never burns a challenge.
func (e *Enrollment) Enroll(ctx context.Context, req Request) ([]*x509.Certificate, error) {
	switch req.Kind {
	case Initial:
		return e.enrollInitial(ctx, req)
	case Renewal:
		return e.renew(ctx, req)
	default:
		return nil, reject(ReasonBadCSR, "unsupported request kind")
	}
}

func (e *Enrollment) enrollInitial(ctx context.Context, req Request) ([]*x509.Certificate, error) {
	if err := e.checkCSR(req.CSR); err != nil {
		return nil, e.refused(ctx, ActionEnroll, "", "", err)
	}
	if req.Challenge == "" {
		return nil, e.refused(ctx, ActionEnroll, "", "", reject(ReasonChallengeMissing, "the CSR carries no challengePassword"))
	}
	if e.cfg.StaticChallenge != "" && subtle.ConstantTimeCompare([]byte(req.Challenge), []byte(e.cfg.StaticChallenge)) == 1 {
		return e.enrollStatic(ctx, req)
	}
	now := e.now().UTC()
	hash := hashChallenge(req.Challenge)
	c, err := e.store.Challenge(ctx, hash)
	if errors.Is(err, ErrNotFound) {
		return nil, e.refused(ctx, ActionEnroll, "", "", reject(ReasonChallengeUnknown, "the challenge is unknown"))
	} else if err != nil {
		return nil, fmt.Errorf("policy: read challenge: %w", err)
	}
	if !c.ConsumedAt.IsZero() {
		if chain := e.repeated(ctx, c, req); chain != nil {
			return chain, nil
		}
		return nil, e.refused(ctx, ActionEnroll, c.User, c.Device, reject(ReasonChallengeUsed, "the challenge was already used"))
	}
	if !now.Before(c.ExpiresAt) {
		return nil, e.refused(ctx, ActionEnroll, c.User, c.Device, reject(ReasonChallengeExpired, "the challenge expired at "+c.ExpiresAt.Format(time.RFC3339)))
	}
	if err := checkNamesBound(req.CSR, c.User); err != nil {
		return nil, e.refused(ctx, ActionEnroll, c.User, c.Device, err)
	}
	// Only a well-formed request for the bound user uses the challenge up,
	// in the transaction that records the certificate.
	key := string(hash)
	if _, busy := e.inUse.LoadOrStore(key, struct{}{}); busy {
		return nil, e.refused(ctx, ActionEnroll, c.User, c.Device, reject(ReasonChallengeUsed, "the challenge is being used by another request"))
	}
	defer e.inUse.Delete(key)
	return e.issue(ctx, ActionEnroll, req.CSR, c.User, c.Device, Commit{Challenge: hash, ChallengeRecord: &c, At: now,
		TransactionID: req.TransactionID, KeySHA256: keyHash(req.CSR)})
}

// keyHash is the SHA-256 of a CSR's SubjectPublicKeyInfo (hex).
func keyHash(csr *x509.CertificateRequest) string {
	s := sha256.Sum256(csr.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(s[:])
}

// repeated returns the certificate a used challenge paid for when req is
// the same request again (same transaction, same key: a device that lost
// the answer, RFC 8894 3.3.1), provided that certificate is still valid;
// nil otherwise. The request is signed with the device's key, so only the
// device that holds it gets the certificate again.
func (e *Enrollment) repeated(ctx context.Context, c Challenge, req Request) []*x509.Certificate {
	if c.Serial == "" || req.TransactionID == "" || c.TransactionID != req.TransactionID || c.KeySHA256 != keyHash(req.CSR) {
		return nil
	}
	chain, err := e.issuer.Issued(c.Serial)
	if err != nil || e.issuer.VerifyIssued(chain[0], e.now()) != nil {
		return nil
	}
	e.audit.Audit(ctx, Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: ActionEnroll, User: c.User, Device: c.Device,
		Serials: []string{c.Serial}, Result: "repeat", Detail: "the same request again: answered with the certificate already issued"})
	return chain
}

func (e *Enrollment) enrollStatic(ctx context.Context, req Request) ([]*x509.Certificate, error) {
	if len(req.CSR.EmailAddresses) != 1 {
		return nil, e.refused(ctx, ActionEnroll, "", StaticDevice,
			reject(ReasonNameNotBound, "with the static challenge the CSR must request exactly one rfc822Name"))
	}
	u, err := NormalizeEmail(req.CSR.EmailAddresses[0])
	if err != nil {
		return nil, e.refused(ctx, ActionEnroll, "", StaticDevice, err)
	}
	if err := e.cfg.Domains.Check(u); err != nil {
		return nil, e.refused(ctx, ActionEnroll, u, StaticDevice, err)
	}
	if err := checkNamesBound(req.CSR, u); err != nil {
		return nil, e.refused(ctx, ActionEnroll, u, StaticDevice, err)
	}
	return e.issue(ctx, ActionEnroll, req.CSR, u, StaticDevice, Commit{Unregistered: true})
}

func (e *Enrollment) renew(ctx context.Context, req Request) ([]*x509.Certificate, error) {
	if err := e.checkCSR(req.CSR); err != nil {
		return nil, e.refused(ctx, ActionRenew, "", "", err)
	}
	if req.Signer == nil {
		return nil, e.refused(ctx, ActionRenew, "", "", reject(ReasonRenewalNotAuthorized, "a renewal must be signed with the certificate being renewed"))
	}
	now := e.now()
	if err := e.issuer.VerifyIssued(req.Signer, now); err != nil {
		return nil, e.refused(ctx, ActionRenew, "", "",
			reject(ReasonRenewalNotAuthorized, "the signing certificate is not a valid, unrevoked certificate of this CA; enrol again with a new challenge"))
	}
	prev, err := e.store.IssuedBySerial(ctx, req.Signer.SerialNumber.String())
	if errors.Is(err, ErrNotFound) {
		return nil, e.refused(ctx, ActionRenew, "", "",
			reject(ReasonRenewalNotAuthorized, "the signing certificate was not issued to a device"))
	} else if err != nil {
		return nil, fmt.Errorf("policy: read inventory: %w", err)
	}
	// A renewal is a new issuance: today's rules apply, not those of the
	// day the predecessor was issued.
	static := isUnregisteredDevice(prev.Device)
	if !static {
		if _, err := e.devices.activeDevice(ctx, prev.User, prev.Device); err != nil {
			return nil, e.refused(ctx, ActionRenew, prev.User, prev.Device,
				reject(ReasonRenewalNotAuthorized, "the device is not registered and active: "+err.Error()))
		}
	} else if err := e.cfg.Domains.Check(prev.User); err != nil {
		return nil, e.refused(ctx, ActionRenew, prev.User, prev.Device, err)
	}
	if err := checkNamesBound(req.CSR, prev.User); err != nil {
		return nil, e.refused(ctx, ActionRenew, prev.User, prev.Device, err)
	}
	rev, err := e.issuer.RevocationRecord(prev.Serial, ca.ReasonSuperseded, "superseded by renewal", now)
	if err != nil {
		return nil, fmt.Errorf("policy: supersede %s: %w", prev.Serial, err)
	}
	chain, err := e.issue(ctx, ActionRenew, req.CSR, prev.User, prev.Device,
		Commit{Supersedes: prev.Serial, Revocation: rev, Unregistered: static})
	// A superseded certificate is not a compromised one: the CRL shows it
	// from its next read on (the revocation's record marks the CRL stale),
	// and renewals do not each pay for a new CRL.
	return chain, err
}

// issue signs a certificate and records it together with c (the challenge
// it uses up, the predecessor it supersedes) in one transaction.
func (e *Enrollment) issue(ctx context.Context, action string, csr *x509.CertificateRequest, user, device string, c Commit) ([]*x509.Certificate, error) {
	return e.issueThen(ctx, action, csr, user, device, c, nil)
}

// issueThen is issue with a last word: before, when not nil, is given the
// signed chain before it is recorded, and an error from it drops the
// certificate (never recorded, never answered) and is returned.
func (e *Enrollment) issueThen(ctx context.Context, action string, csr *x509.CertificateRequest, user, device string, c Commit, before func([]*x509.Certificate) error) ([]*x509.Certificate, error) {
	now := e.now().UTC()
	ku := []string{"digitalSignature"}
	if e.cfg.ContentCommitment {
		ku = append(ku, "contentCommitment")
	}
	iss, err := e.issuer.Sign(ctx, csr, ca.Template{
		CommonName:  user,
		Emails:      []string{user},
		KeyUsage:    ku,
		ExtKeyUsage: []string{"emailProtection"},
		NotBefore:   now.Add(-5 * time.Minute), // tolerate device clock skew
		NotAfter:    now.Add(e.cfg.Validity),
	})
	if err != nil {
		e.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: action, User: user, Device: device, Result: "error", Detail: "signing failed"})
		return nil, fmt.Errorf("policy: issue: %w", err)
	}
	leaf := iss.Chain[0]
	if c.Unregistered && device == StaticDevice {
		// Anonymous static enrolments do not queue behind one device
		// record (and its lock and commit) but each get their own.
		device = StaticDevice + "/" + leaf.SerialNumber.String()
	}
	sum := sha256.Sum256(leaf.Raw)
	rec := Issued{
		Serial: leaf.SerialNumber.String(), User: user, Device: device,
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, IssuedAt: now,
		RenewedFrom: c.Supersedes, SHA256: hex.EncodeToString(sum[:]),
	}
	if before != nil {
		if err := before(iss.Chain); err != nil {
			e.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: action, User: user, Device: device, Serials: []string{rec.Serial},
				Result: "refused", Detail: "signed but not recorded or delivered: " + err.Error()})
			return nil, err
		}
	}
	c.CA = iss.Record
	if err := e.store.RecordIssued(ctx, rec, c); err != nil {
		if errors.Is(err, ErrInactiveDevice) {
			err = errRetiredNow(user, device)
		}
		if _, ok := IsReject(err); ok {
			return nil, e.refused(ctx, action, user, device, err)
		}
		e.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: action, User: user, Device: device, Result: "error", Detail: "storing the certificate failed"})
		return nil, fmt.Errorf("policy: record issued certificate %s: %w", rec.Serial, err)
	}
	ev := Event{Time: now, Actor: ActorFrom(ctx), Action: action, User: user, Device: device,
		Serials: []string{rec.Serial}, SHA256: []string{rec.SHA256}, Result: "ok"}
	if c.Supersedes != "" {
		ev.Detail = "supersedes and revokes " + c.Supersedes
	}
	e.audit.Audit(ctx, ev)
	return iss.Chain, nil
}

func (e *Enrollment) refused(ctx context.Context, action, user, device string, err error) error {
	re, _ := IsReject(err)
	detail := err.Error()
	if re != nil {
		detail = re.Reason.String()
		if re.Reason == ReasonChallengeRefused || re.Reason == ReasonChallengeUnverified || re.Reason == ReasonIssueFailed {
			// The authority's own code (ChallengeExpired, …) says why.
			detail += ": " + re.Detail
		}
	}
	e.audit.Audit(ctx, Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: action, User: user, Device: device, Result: "refused", Detail: detail})
	return err
}

// checkCSR checks what does not depend on the binding: signature and key.
func (e *Enrollment) checkCSR(csr *x509.CertificateRequest) error {
	if csr == nil {
		return reject(ReasonBadCSR, "no certificate request")
	}
	// The key's bounds before its signature: verifying costs what the key
	// makes it cost.
	pub, ok := csr.PublicKey.(*rsa.PublicKey)
	if !ok {
		return reject(ReasonWeakKey, fmt.Sprintf("device keys must be RSA (got %s)", csr.PublicKeyAlgorithm))
	}
	if bits := pub.N.BitLen(); bits < e.cfg.MinRSABits {
		return reject(ReasonWeakKey, fmt.Sprintf("RSA key of %d bits; at least %d required", bits, e.cfg.MinRSABits))
	}
	if err := CheckPublicKey(pub); err != nil {
		return reject(ReasonWeakKey, err.Error())
	}
	if err := csr.CheckSignature(); err != nil {
		return reject(ReasonBadCSR, "the CSR signature does not verify")
	}
	return nil
}

// MaxRSABits is the largest RSA key smimeca uses for anything a peer sends.
const MaxRSABits = 4096

// CheckPublicKey refuses public keys that are expensive to use: RSA over
// MaxRSABits bits or with an exponent other than 65537 (verification time
// grows with both). EC keys come only on the curves crypto/x509 parses, whose
// cost is bounded.
func CheckPublicKey(pub any) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if b := k.N.BitLen(); b > MaxRSABits {
			return fmt.Errorf("RSA key of %d bits (at most %d)", b, MaxRSABits)
		}
		if k.E != 65537 {
			return fmt.Errorf("RSA exponent %d (only 65537)", k.E)
		}
	case *ecdsa.PublicKey:
	default:
		return fmt.Errorf("unsupported key type %T", pub)
	}
	return nil
}

// oidEmailAddress is PKCS#9 emailAddress, sometimes put in CSR subjects.
var oidEmailAddress = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 1}

// checkNamesBound refuses a CSR that asks for any name but user's address.
// The issued certificate is built from the binding; this check only makes
// sure a device that asks for something else is told so instead of silently
// getting a different certificate.
func checkNamesBound(csr *x509.CertificateRequest, user string) error {
	if len(csr.DNSNames) > 0 || len(csr.URIs) > 0 || len(csr.IPAddresses) > 0 {
		return reject(ReasonNameNotBound, "the CSR requests DNS, URI or IP names; only the bound user's e-mail address may be requested")
	}
	for _, a := range csr.EmailAddresses {
		if !strings.EqualFold(strings.TrimSpace(a), user) {
			return reject(ReasonNameNotBound, fmt.Sprintf("the CSR requests %q but the challenge is bound to another user", a))
		}
	}
	for _, atv := range csr.Subject.Names {
		if atv.Type.Equal(oidEmailAddress) {
			if s, ok := atv.Value.(string); !ok || !strings.EqualFold(s, user) {
				return reject(ReasonNameNotBound, "the CSR subject emailAddress differs from the bound user")
			}
		}
	}
	if cn := csr.Subject.CommonName; strings.Contains(cn, "@") && !strings.EqualFold(strings.TrimSpace(cn), user) {
		return reject(ReasonNameNotBound, fmt.Sprintf("the CSR subject CN %q is an address other than the bound user's", cn))
	}
	return nil
}

// isStaticDevice reports whether id names a static-challenge enrolment's
// device (or the one device of version 1 databases).
func isStaticDevice(id string) bool {
	return id == StaticDevice || strings.HasPrefix(id, StaticDevice+"/")
}

// isUnregisteredDevice reports whether id names a device outside the
// registry: a static-challenge enrolment or one an external challenge
// authority vouched for.
func isUnregisteredDevice(id string) bool {
	return isStaticDevice(id) || strings.HasPrefix(id, ExternalDevicePrefix)
}
