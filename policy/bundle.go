package policy

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"time"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Audit actions of key releases.
const (
	// ActionKeyRelease is a bundle that released keys encrypted to the
	// device's registered identity.
	ActionKeyRelease = "key.release"
	// ActionKeyBreakGlass is an administrator's explicit release of plain
	// PKCS#12 files with their passwords.
	ActionKeyBreakGlass = "key.release.break-glass"
)

// KeyEscrowNotice tells the subscriber that the private keys of their
// encryption certificates are escrowed (S/MIME BR 4.12.1): every bundle
// and profile that carries escrowed keys carries it, and every key
// release's audit event records that it was given.
const KeyEscrowNotice = "The private keys of your S/MIME encryption certificates are held in escrow by your organisation's certificate authority (smimeca), so that mail encrypted to them stays readable on each of your devices. They are released only encrypted to a device registered to you, or by an administrator in an audited emergency release."

// Delivery says how escrowed keys leave in a bundle.
type Delivery int

// Deliveries.
const (
	// DeliverCMS re-wraps each key in a new PKCS#12 and returns its fresh
	// password only as CMS EnvelopedData to the device's registered
	// identity certificate: the caller never holds a usable key. The
	// default, and the only delivery of the profile service.
	DeliverCMS Delivery = iota + 1
	// DeliverPKCS12 returns each new PKCS#12 with its password in the
	// clear. Only as a break-glass release (BundleRequest.BreakGlass).
	DeliverPKCS12
)

// KeyStore is what bundles need from the escrow; *escrow.Store implements
// it.
type KeyStore interface {
	Load(ctx context.Context, user string) ([]EscrowedKey, error)
	// LoadKey decrypts one certificate's key, named by its SHA-256, and
	// no other (ErrNotFound when it is not escrowed).
	LoadKey(ctx context.Context, user, sha256 string) (EscrowedKey, error)
}

// CAInfo is the CA's public side that bundles carry.
type CAInfo interface {
	Root() *x509.Certificate
	Intermediate() *x509.Certificate
	// SCEPAnchor is the certificate SCEP's GetCACert chain ends in, the
	// one SCEP clients pin (CAFingerprint).
	SCEPAnchor() *x509.Certificate
}

// BundleRules is what bundles need of the device registry and the
// enrolment rules; *Enrollment implements it.
type BundleRules interface {
	// ActiveDevice returns the registered, active device (user, id)
	// (ReasonUnknownDevice, ReasonDeviceRetired otherwise).
	ActiveDevice(ctx context.Context, user, id string) (Device, error)
	// ReleasableIdentity returns the device's identity certificate when
	// keys may be encrypted to it now (ReasonNoIdentity,
	// ReasonIdentityOnHold otherwise).
	ReleasableIdentity(d Device) (*x509.Certificate, error)
	// CreateChallenge creates the device's one-time challenge (ttl 0: the
	// default).
	CreateChallenge(ctx context.Context, user, device string, ttl time.Duration) (NewChallenge, error)
	// ListCertificates lists the certificates issued to a user's device.
	ListCertificates(ctx context.Context, f Filter) ([]CertificateStatus, error)
	// MinRSABits is the smallest device key accepted.
	MinRSABits() int
	// ArmChallenge makes a secret the caller derived the device's
	// one-time challenge (a DDM SCEP asset's).
	ArmChallenge(ctx context.Context, user, device string, secret []byte, how string) (NewChallenge, error)
	// SigningValidity is how long issued signing certificates are valid.
	SigningValidity() time.Duration
}

// Bundles assembles what one device of one user needs.
type Bundles struct {
	enroll  BundleRules
	keys    KeyStore
	ca      CAInfo
	scepURL string
	audit   Recorder
	now     func() time.Time
	// breakGlass: plain releases are allowed (AllowBreakGlass), unless
	// recoveryOn says key recovery is configured (RefuseBreakGlassWith).
	breakGlass bool
	recoveryOn func(context.Context) (bool, error)
	// assetSecret derives the secrets of a device's DDM assets (WithAssetSecret).
	assetSecret []byte
}

// BundlesOption configures Bundles.
type BundlesOption func(*Bundles)

// AllowBreakGlass lets an administrator take a user's keys in the clear
// (DeliverPKCS12 with BreakGlass and a reason, audited). Without it every
// such request is refused (ReasonBreakGlassOff) and audited as refused: an
// escrowed key then leaves only encrypted to a device.
func AllowBreakGlass() BundlesOption { return func(b *Bundles) { b.breakGlass = true } }

// RefuseBreakGlassWith refuses plain releases, even where they are
// allowed, whenever configured reports that key recovery under dual
// control is set up (Recoveries): one person's break-glass would bypass it.
func RefuseBreakGlassWith(configured func(context.Context) (bool, error)) BundlesOption {
	return func(b *Bundles) { b.recoveryOn = configured }
}

// NewBundles returns the bundle rules. keys may be nil when no escrow is
// configured: bundles then carry the signing reference only. Every release
// is recorded by audit before it is returned (nil: nowhere, for tests).
func NewBundles(enroll BundleRules, keys KeyStore, ca CAInfo, scepURL string, audit Recorder, opts ...BundlesOption) *Bundles {
	if audit == nil {
		audit = nopAuditor{}
	}
	b := &Bundles{enroll: enroll, keys: keys, ca: ca, scepURL: scepURL, audit: audit, now: time.Now}
	for _, o := range opts {
		o(b)
	}
	return b
}

// PKCS12Encoding selects the algorithms of the re-wrapped PKCS#12 files.
type PKCS12Encoding = pfxconnector.Encoding

// PKCS#12 encodings.
const (
	// EncodingLegacy is 3DES + SHA-1 MAC, which iOS imports (default).
	EncodingLegacy = pfxconnector.Legacy
	// EncodingModern is PBES2/AES-256 + SHA-256 MAC.
	EncodingModern = pfxconnector.Modern
)

// KeyTransport is how an envelope's content key is encrypted to the
// device's RSA identity key.
type KeyTransport = pfxconnector.KeyTransport

// Key transports.
const (
	// TransportPKCS1v15 is RSA PKCS#1 v1.5, what iOS and openssl accept
	// (default).
	TransportPKCS1v15 = pfxconnector.PKCS1v15
	// TransportOAEPSHA256 is RSAES-OAEP with SHA-256.
	TransportOAEPSHA256 = pfxconnector.OAEPSHA256
)

// BundleRequest names the user, the device and the delivery. There is no
// recipient to choose: envelopes go to the device's registered identity.
type BundleRequest struct {
	User     string
	Device   string
	Delivery Delivery
	// Encoding of the re-wrapped PKCS#12 files (default Legacy).
	Encoding PKCS12Encoding
	// KeyTransport of the envelopes (default PKCS#1 v1.5).
	KeyTransport KeyTransport
	// BreakGlass must be set for DeliverPKCS12, with the reason recorded.
	BreakGlass       bool
	BreakGlassReason string
	// NoSigning leaves the SCEP reference out, and no challenge is made:
	// for a channel that delivers escrowed keys only (Windows).
	NoSigning bool
}

// SigningReference is what the device needs to enrol its own signing
// certificate over SCEP. Its one-time challenge is a signing credential in
// the user's name, so it reaches the device only: in a bundle it is
// EnvelopedChallenge (CMS EnvelopedData to the device's registered
// identity); in the clear only inside a sealed profile or an
// administrator's break-glass release.
type SigningReference struct {
	SCEPURL string
	// Challenge is the one-time challenge in the clear: empty in a CMS
	// bundle.
	Challenge string
	// EnvelopedChallenge is the challenge as CMS EnvelopedData to the
	// device's registered identity certificate (DeliverCMS only).
	EnvelopedChallenge []byte
	ExpiresAt          time.Time
	// Subject is the subject the certificate will carry ("CN=<user>").
	Subject    string
	RFC822Name string
	// KeySize and KeyType are what the device's key must be: the
	// configured minimum RSA size (Config.MinRSABits), RSA.
	KeySize       int
	KeyType       string
	KeyUsage      x509.KeyUsage
	CAFingerprint struct {
		SHA256, SHA1, MD5 []byte
	}
	// IssuedSerials are the decimal serials of the device's certificates
	// that are still valid and unrevoked.
	IssuedSerials []string
}

// EncryptionEntry is one escrowed certificate re-wrapped for this delivery.
type EncryptionEntry struct {
	Metadata Escrowed
	PFX      []byte
	// Password opens PFX (DeliverPKCS12 only).
	Password string
	// EnvelopedPassword is Password as CMS EnvelopedData to the device's
	// identity certificate (DeliverCMS only).
	EnvelopedPassword []byte
	// Current marks the certificate to use for new mail.
	Current bool
	Expired bool
}

// Bundle is the answer for one user and one device.
type Bundle struct {
	User       string
	Device     string
	Signing    SigningReference
	Encryption []EncryptionEntry
	// Chain is root first, then the issuing CA.
	Chain []*x509.Certificate
	// Recipient is the device identity certificate the envelopes are
	// encrypted to (DeliverCMS).
	Recipient *x509.Certificate
	// EscrowNotice is KeyEscrowNotice when Encryption is not empty.
	EscrowNotice string
}

// Bundle creates a fresh one-time challenge for a registered, active
// device, re-wraps every escrowed certificate of the user for this delivery
// and records the release. With DeliverCMS the device must have a
// registered identity (ReasonNoIdentity otherwise), and the challenge and
// each password are encrypted to it, never to one the caller names, so the
// caller can neither enrol in the user's name nor open a key;
// DeliverPKCS12 is a break-glass release. Keys are decrypted
// for this call only and dropped after it. If the release cannot be
// audited, nothing is released.
func (b *Bundles) Bundle(ctx context.Context, req BundleRequest) (*Bundle, error) {
	switch req.Delivery {
	case DeliverCMS, DeliverPKCS12:
	default:
		return nil, reject(ReasonBadFormat, "delivery format must be CMS or (break-glass) PKCS12")
	}
	if err := CheckText("the break-glass reason", req.BreakGlassReason); err != nil {
		return nil, err
	}
	out, ev, err := b.assemble(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := b.audit.Record(ctx, ev); err != nil {
		return nil, fmt.Errorf("policy: the key release could not be audited, so nothing was released: %w", err)
	}
	return out, nil
}

// Sealer turns a bundle into what leaves smimeca (a device's encrypted
// configuration profile), putting everything secret in it through encrypt,
// which encrypts to the device's registered identity certificate.
type Sealer func(b *Bundle, encrypt func([]byte) ([]byte, error)) ([]byte, error)

// Sealed releases the user's keys to a registered, active device with an
// identity inside one envelope: the bundle (each PKCS#12 with its password)
// goes to seal, which must encrypt it to the device, and only seal's result
// leaves. The caller never holds a key or a password. Audited as a key
// release to the identity; no audit, no release.
func (b *Bundles) Sealed(ctx context.Context, req BundleRequest, seal Sealer) ([]byte, error) {
	req.Delivery, req.BreakGlass = deliverSealed, false
	out, ev, err := b.assemble(ctx, req)
	if err != nil {
		return nil, err
	}
	defer func() {
		for i := range out.Encryption {
			out.Encryption[i].Password = ""
		}
	}()
	sealed, err := seal(out, func(p []byte) ([]byte, error) { return pfxconnector.Envelope(p, out.Recipient, req.KeyTransport) })
	if err != nil {
		return nil, fmt.Errorf("policy: seal: %w", err)
	}
	ev.Detail = "sealed in an encrypted profile"
	if err := b.audit.Record(ctx, ev); err != nil {
		return nil, fmt.Errorf("policy: the key release could not be audited, so nothing was released: %w", err)
	}
	return sealed, nil
}

// deliverSealed re-wraps with passwords in the clear for a Sealer, which
// encrypts the whole to the device: never returned from Bundle.
const deliverSealed Delivery = -1

// assemble checks the device and the delivery, loads and re-wraps the keys
// and creates the challenge; it returns the bundle with the release's
// audit event, still to be recorded.
func (b *Bundles) assemble(ctx context.Context, req BundleRequest) (*Bundle, Event, error) {
	dev, err := b.enroll.ActiveDevice(ctx, req.User, req.Device)
	if err != nil {
		return nil, Event{}, err
	}
	user := dev.User
	now := b.now()
	action := ActionKeyRelease
	if req.Delivery == DeliverPKCS12 {
		if !req.BreakGlass {
			return nil, Event{}, reject(ReasonBreakGlass, "plain PKCS#12 with passwords is a break-glass release: an administrator must ask for it explicitly (--break-glass) with a reason; devices get CMS delivery")
		}
		action = ActionKeyBreakGlass
		var off error
		if !b.breakGlass {
			off = reject(ReasonBreakGlassOff, "plain key release (break-glass) is turned off on this installation: escrowed keys leave only encrypted to a device; the operator can allow it with serve --allow-break-glass")
		} else if b.recoveryOn != nil {
			on, err := b.recoveryOn(ctx)
			if err != nil {
				return nil, Event{}, fmt.Errorf("policy: is key recovery configured: %w", err)
			}
			if on {
				off = reject(ReasonBreakGlassOff, "key recovery under dual control is configured (recovery-approver credentials exist), so plain break-glass is refused: ask with smimeca recovery request")
			}
		}
		if off != nil {
			b.audit.Audit(ctx, Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: action, User: user, Device: req.Device, Result: "refused", Detail: off.Error()})
			return nil, Event{}, off
		}
	}
	var recs []EscrowedKey
	if b.keys != nil {
		if recs, err = b.keys.Load(ctx, user); err != nil {
			b.audit.Audit(ctx, Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: action, User: user, Device: req.Device, Result: "error", Detail: err.Error()})
			return nil, Event{}, fmt.Errorf("policy: bundle: %w", err)
		}
	}
	defer func() {
		for i := range recs {
			clear(recs[i].KeyPKCS8)
		}
	}()
	// A CMS bundle always needs the identity: the challenge is enveloped
	// to it even when the user has nothing in escrow.
	var recipient *x509.Certificate
	if req.Delivery == DeliverCMS || req.Delivery == deliverSealed {
		if recipient, err = b.enroll.ReleasableIdentity(dev); err != nil {
			b.audit.Audit(ctx, Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: action, User: user, Device: req.Device, Result: "refused", Detail: err.Error()})
			return nil, Event{}, err
		}
	}

	out := &Bundle{User: user, Device: req.Device, Recipient: recipient, Chain: []*x509.Certificate{b.ca.Root(), b.ca.Intermediate()}}
	// The signing reference (a challenge write and an inventory read) is
	// built while the keys are re-wrapped; both are needed for the answer.
	// It comes after every refusal above, so a refused bundle leaves no
	// challenge behind.
	sigDone := make(chan error, 1)
	if req.NoSigning {
		sigDone <- nil
	} else {
		go func() { sigDone <- b.signingReference(ctx, &out.Signing, req, recipient, user, now) }()
	}
	var rewrapErr error
	out.Encryption, rewrapErr = b.rewrap(recs, req, recipient, now)
	if err := <-sigDone; err != nil {
		return nil, Event{}, err
	}
	if rewrapErr != nil {
		return nil, Event{}, rewrapErr
	}

	ev := Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: action, User: user, Device: req.Device,
		Result: "ok", Detail: "delivery " + deliveryName(req.Delivery) + "; SCEP challenge enveloped to the identity"}
	if req.NoSigning {
		ev.Detail = "delivery " + deliveryName(req.Delivery) + "; no SCEP challenge"
	}
	if recipient != nil {
		s := sha256.Sum256(recipient.Raw)
		ev.Recipient = hex.EncodeToString(s[:])
	}
	if req.Delivery == DeliverPKCS12 {
		ev.Detail = "plain PKCS#12, passwords and SCEP challenge to the caller; reason: " + req.BreakGlassReason
	}
	for _, e := range out.Encryption {
		ev.SHA256 = append(ev.SHA256, e.Metadata.SHA256)
	}
	if len(out.Encryption) > 0 {
		out.EscrowNotice, ev.EscrowNotice = KeyEscrowNotice, true
	}
	return out, ev, nil
}

// signingReference creates the device's challenge and fills s; for a CMS
// bundle the challenge leaves only enveloped to recipient.
func (b *Bundles) signingReference(ctx context.Context, s *SigningReference, req BundleRequest, recipient *x509.Certificate, user string, now time.Time) error {
	device := req.Device
	ch, err := b.enroll.CreateChallenge(ctx, user, device, 0)
	if err != nil {
		return err
	}
	*s = b.scepReference(user)
	s.ExpiresAt = ch.ExpiresAt
	if req.Delivery == DeliverCMS {
		if s.EnvelopedChallenge, err = pfxconnector.Envelope([]byte(ch.Secret), recipient, req.KeyTransport); err != nil {
			return fmt.Errorf("policy: envelope the challenge: %w", err)
		}
	} else {
		s.Challenge = ch.Secret
	}
	issued, err := b.enroll.ListCertificates(ctx, Filter{User: user, Device: device})
	if err != nil {
		return err
	}
	for _, c := range issued {
		if !c.Revoked && c.User == user && now.Before(c.NotAfter) {
			s.IssuedSerials = append(s.IssuedSerials, c.Serial)
		}
	}
	return nil
}

// scepReference is what every device of user needs to enrol, without a
// challenge.
func (b *Bundles) scepReference(user string) SigningReference {
	anchor := b.ca.SCEPAnchor()
	s := SigningReference{SCEPURL: b.scepURL, Subject: "CN=" + user, RFC822Name: user, KeyUsage: x509.KeyUsageDigitalSignature,
		KeySize: b.enroll.MinRSABits(), KeyType: "RSA"}
	s256, s1, m5 := sha256.Sum256(anchor.Raw), sha1.Sum(anchor.Raw), md5.Sum(anchor.Raw)
	s.CAFingerprint.SHA256, s.CAFingerprint.SHA1, s.CAFingerprint.MD5 = s256[:], s1[:], m5[:]
	return s
}

func deliveryName(d Delivery) string {
	if d == DeliverCMS {
		return "cms"
	}
	return "pkcs12"
}

// rewrap packs every record for this delivery: the current certificate
// (newest valid encryption certificate) first, then by notAfter, newest
// first.
func (b *Bundles) rewrap(recs []EscrowedKey, req BundleRequest, recipient *x509.Certificate, now time.Time) ([]EncryptionEntry, error) {
	entries := make([]EncryptionEntry, len(recs))
	current := currentKey(recs, now)
	keys := make([]pfxconnector.DERKey, len(recs))
	for i, r := range recs {
		keys[i] = pfxconnector.DERKey{CertDER: r.CertDER, KeyPKCS8: r.KeyPKCS8, ChainDER: r.ChainDER}
	}
	wrapped, errs := pfxconnector.RewrapAll(keys, req.Encoding)
	for i, r := range recs {
		if errs[i] != nil {
			errs[i] = fmt.Errorf("policy: escrowed certificate %s: %w", r.SHA256, errs[i])
			continue
		}
		entries[i], errs[i] = deliverOne(r, wrapped[i], req, recipient, now, i == current)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sortEntries(entries)
	return entries, nil
}

// currentKey is the index of the certificate for new mail: the newest
// valid encryption certificate (-1: none).
func currentKey(recs []EscrowedKey, now time.Time) int {
	current := -1
	for i, r := range recs {
		if r.CanEncrypt(now) && (current < 0 || r.NotAfter.After(recs[current].NotAfter)) {
			current = i
		}
	}
	return current
}

// sortEntries puts the current certificate first, then the others by
// notAfter, newest first.
func sortEntries(entries []EncryptionEntry) {
	sort.SliceStable(entries, func(i, j int) bool {
		if entries[i].Current != entries[j].Current {
			return entries[i].Current
		}
		return entries[i].Metadata.NotAfter.After(entries[j].Metadata.NotAfter)
	})
}

// deliverOne is one re-wrapped key as this delivery carries it: its
// password enveloped to the recipient (CMS) or in the clear (break-glass).
func deliverOne(r EscrowedKey, w pfxconnector.Rewrapped, req BundleRequest, recipient *x509.Certificate, now time.Time, current bool) (EncryptionEntry, error) {
	e := EncryptionEntry{Metadata: r.Escrowed, PFX: w.PFX, Current: current, Expired: now.After(r.NotAfter)}
	if req.Delivery == DeliverCMS {
		var err error
		if e.EnvelopedPassword, err = pfxconnector.Envelope([]byte(w.Password), recipient, req.KeyTransport); err != nil {
			return EncryptionEntry{}, err
		}
	} else {
		e.Password = w.Password
	}
	return e, nil
}
