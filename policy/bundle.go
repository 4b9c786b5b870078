package policy

import (
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smimeca/smimeca/escrow"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Bundle refusal reasons.
const (
	ReasonBadFormat Reason = iota + 200
	ReasonBadDeviceCert
)

func init() {
	reasonNames[ReasonBadFormat] = "bad-format"
	reasonNames[ReasonBadDeviceCert] = "bad-device-certificate"
}

// ActionKeyRelease is the audit action of a bundle that released keys.
const ActionKeyRelease = "key.release"

// Delivery says how escrowed keys leave in a bundle.
type Delivery int

// Deliveries.
const (
	// DeliverPKCS12 re-wraps each key in a new PKCS#12 with a fresh
	// password returned beside it.
	DeliverPKCS12 Delivery = iota + 1
	// DeliverCMS re-wraps as DeliverPKCS12 and returns the password only as
	// CMS EnvelopedData to the device's certificate: the caller never holds
	// a usable key.
	DeliverCMS
)

// KeyStore is what bundles need from the escrow; *escrow.Store implements
// it.
type KeyStore interface {
	Load(ctx context.Context, user string) ([]escrow.Record, error)
}

// CAInfo is the CA's public side that bundles carry.
type CAInfo interface {
	Root() *x509.Certificate
	Intermediate() *x509.Certificate
}

// Bundles assembles what one device of one user needs.
type Bundles struct {
	enroll  *Enrollment
	keys    KeyStore
	ca      CAInfo
	scepURL string
	audit   Auditor
	now     func() time.Time
}

// NewBundles returns the bundle rules. keys may be nil when no escrow is
// configured: bundles then carry the signing reference only.
func NewBundles(enroll *Enrollment, keys KeyStore, ca CAInfo, scepURL string, audit Auditor) *Bundles {
	if audit == nil {
		audit = nopAuditor{}
	}
	return &Bundles{enroll: enroll, keys: keys, ca: ca, scepURL: scepURL, audit: audit, now: time.Now}
}

// BundleRequest names the user, the device and the delivery.
type BundleRequest struct {
	User     string
	Device   string
	Delivery Delivery
	// Encoding of the re-wrapped PKCS#12 files (default Legacy).
	Encoding pfxconnector.Encoding
	// DeviceCert receives the envelopes with DeliverCMS.
	DeviceCert *x509.Certificate
}

// SigningReference is what the device needs to enrol its own signing
// certificate over SCEP.
type SigningReference struct {
	SCEPURL   string
	Challenge string
	ExpiresAt time.Time
	// Subject is the subject the certificate will carry ("CN=<user>").
	Subject       string
	RFC822Name    string
	KeySize       int
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
	Metadata escrow.Metadata
	PFX      []byte
	// Password opens PFX (DeliverPKCS12 only).
	Password string
	// EnvelopedPassword is Password as CMS EnvelopedData to the device
	// certificate (DeliverCMS only).
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
}

// Bundle creates a fresh one-time challenge for the device, re-wraps every
// escrowed certificate of the user for this delivery, and audits the
// release. Keys are decrypted for this call only and dropped after it.
func (b *Bundles) Bundle(ctx context.Context, req BundleRequest) (*Bundle, error) {
	user, err := NormalizeEmail(req.User)
	if err != nil {
		return nil, err
	}
	if err := b.enroll.cfg.Domains.Check(user); err != nil {
		return nil, err
	}
	if err := ValidateDeviceID(req.Device); err != nil {
		return nil, err
	}
	now := b.now()
	switch req.Delivery {
	case DeliverPKCS12:
	case DeliverCMS:
		if req.DeviceCert == nil {
			return nil, reject(ReasonBadDeviceCert, "CMS delivery needs the device certificate to encrypt to")
		}
		if err := pfxconnector.CheckRecipient(req.DeviceCert, now); err != nil {
			return nil, reject(ReasonBadDeviceCert, err.Error())
		}
	default:
		return nil, reject(ReasonBadFormat, "delivery format must be PKCS12 or CMS")
	}

	var recs []escrow.Record
	if b.keys != nil {
		if recs, err = b.keys.Load(ctx, user); err != nil {
			b.audit.Audit(ctx, Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: ActionKeyRelease, User: user, Device: req.Device, Result: "error", Detail: err.Error()})
			return nil, fmt.Errorf("policy: bundle: %w", err)
		}
	}
	defer func() {
		for i := range recs {
			clear(recs[i].KeyPKCS8)
		}
	}()

	out := &Bundle{User: user, Device: req.Device, Chain: []*x509.Certificate{b.ca.Root(), b.ca.Intermediate()}}
	// The signing reference (a challenge write and an inventory read) is
	// built while the keys are re-wrapped; both are needed for the answer.
	// It comes after every refusal above, so a refused bundle leaves no
	// challenge behind.
	sigDone := make(chan error, 1)
	go func() { sigDone <- b.signingReference(ctx, &out.Signing, user, req.Device, now) }()
	var rewrapErr error
	out.Encryption, rewrapErr = b.rewrap(recs, req, now)
	if err := <-sigDone; err != nil {
		return nil, err
	}
	if rewrapErr != nil {
		return nil, rewrapErr
	}

	ev := Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: ActionKeyRelease, User: user, Device: req.Device,
		Result: "ok", Detail: "delivery " + deliveryName(req.Delivery)}
	for _, e := range out.Encryption {
		ev.SHA256 = append(ev.SHA256, e.Metadata.SHA256)
	}
	b.audit.Audit(ctx, ev)
	return out, nil
}

func (b *Bundles) signingReference(ctx context.Context, s *SigningReference, user, device string, now time.Time) error {
	ch, err := b.enroll.CreateChallenge(ctx, user, device, 0)
	if err != nil {
		return err
	}
	inter := b.ca.Intermediate()
	s.SCEPURL, s.Challenge, s.ExpiresAt = b.scepURL, ch.Secret, ch.ExpiresAt
	s.Subject, s.RFC822Name, s.KeySize, s.KeyUsage = "CN="+user, user, 2048, x509.KeyUsageDigitalSignature
	s256, s1, m5 := sha256.Sum256(inter.Raw), sha1.Sum(inter.Raw), md5.Sum(inter.Raw)
	s.CAFingerprint.SHA256, s.CAFingerprint.SHA1, s.CAFingerprint.MD5 = s256[:], s1[:], m5[:]
	issued, err := b.enroll.ListCertificates(ctx, Filter{Device: device})
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

func deliveryName(d Delivery) string {
	if d == DeliverCMS {
		return "cms"
	}
	return "pkcs12"
}

// rewrap packs every record for this delivery: the current certificate
// (newest valid encryption certificate) first, then by notAfter, newest
// first.
func (b *Bundles) rewrap(recs []escrow.Record, req BundleRequest, now time.Time) ([]EncryptionEntry, error) {
	entries := make([]EncryptionEntry, len(recs))
	current := -1
	for i, r := range recs {
		if r.Purpose != escrow.PurposeSigning && now.Before(r.NotAfter) && !now.Before(r.NotBefore) &&
			(current < 0 || r.NotAfter.After(recs[current].NotAfter)) {
			current = i
		}
	}
	// Re-wrapping (PBKDF + 3DES/AES per file) dominates a bundle's CPU:
	// spread it over the cores so one caller's latency drops with them.
	errs := make([]error, len(recs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(recs)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(recs) {
					return
				}
				entries[i], errs[i] = rewrapOne(recs[i], req, now, i == current)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sort.SliceStable(entries, func(i, j int) bool {
		if entries[i].Current != entries[j].Current {
			return entries[i].Current
		}
		return entries[i].Metadata.NotAfter.After(entries[j].Metadata.NotAfter)
	})
	return entries, nil
}

func rewrapOne(r escrow.Record, req BundleRequest, now time.Time, current bool) (EncryptionEntry, error) {
	cert, err := x509.ParseCertificate(r.CertDER)
	if err != nil {
		return EncryptionEntry{}, fmt.Errorf("policy: escrowed certificate %s is unreadable: %w", r.SHA256, err)
	}
	key, err := x509.ParsePKCS8PrivateKey(r.KeyPKCS8)
	if err != nil {
		return EncryptionEntry{}, fmt.Errorf("policy: escrowed key of %s is unreadable", r.SHA256)
	}
	var chain []*x509.Certificate
	for _, d := range r.ChainDER {
		if c, err := x509.ParseCertificate(d); err == nil {
			chain = append(chain, c)
		}
	}
	w, err := pfxconnector.Rewrap(key, cert, chain, req.Encoding)
	if err != nil {
		return EncryptionEntry{}, err
	}
	e := EncryptionEntry{Metadata: r.Metadata, PFX: w.PFX, Current: current, Expired: now.After(r.NotAfter)}
	if req.Delivery == DeliverCMS {
		if e.EnvelopedPassword, err = pfxconnector.Envelope([]byte(w.Password), req.DeviceCert); err != nil {
			return EncryptionEntry{}, err
		}
	} else {
		e.Password = w.Password
	}
	return e, nil
}
