package policy

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Audit actions of device identities.
const (
	// ActionDeviceRekey replaced an active device's identity certificate:
	// its key releases are held until an administrator confirms or the
	// cooling-off passes (the event names both SHA-256s and the hold).
	ActionDeviceRekey = "device.rekey"
	// ActionDeviceConfirm is an administrator's confirmation of a rekeyed
	// identity, ending its hold.
	ActionDeviceConfirm = "device.identity.confirm"
)

// DefaultRekeyHold is how long key releases to a rekeyed device wait
// unless an administrator confirms the new identity.
const DefaultRekeyHold = 24 * time.Hour

// claimGrace is how long a claim on an identity blocks other devices while
// the device it names does not (yet) hold that identity: a registration in
// flight on another node. After it, such a claim is stale.
const claimGrace = 2 * time.Minute

// IdentityField names a place in a device identity certificate that may
// carry the device id.
type IdentityField string

// Identity fields.
const (
	// IdentityCN is the subject common name (the MDM convention CN=<UDID>).
	IdentityCN IdentityField = "cn"
	// IdentitySAN is any DNS name, URI or e-mail address in the subject
	// alternative name.
	IdentitySAN IdentityField = "san"
	// IdentityAny skips the check: any identity may be registered to any
	// device id. Only for MDMs whose identities do not name the device.
	IdentityAny IdentityField = "none"
)

// DefaultIdentityFields is where the device id is looked for by default.
var DefaultIdentityFields = []IdentityField{IdentityCN, IdentitySAN}

// ParseIdentityFields parses a comma-separated list of identity fields
// ("cn,san", or "none").
func ParseIdentityFields(s string) ([]IdentityField, error) {
	var out []IdentityField
	for _, f := range strings.Split(s, ",") {
		switch v := IdentityField(strings.ToLower(strings.TrimSpace(f))); v {
		case IdentityCN, IdentitySAN:
			out = append(out, v)
		case IdentityAny:
			if len(strings.Split(s, ",")) > 1 {
				return nil, errors.New("\"none\" stands alone")
			}
			out = append(out, v)
		default:
			return nil, fmt.Errorf("%q is not an identity field (cn, san or none)", f)
		}
	}
	return out, nil
}

// namesDevice reports whether the identity certificate carries the device
// id in one of fields.
func namesDevice(c *x509.Certificate, id string, fields []IdentityField) bool {
	for _, f := range fields {
		switch f {
		case IdentityAny:
			return true
		case IdentityCN:
			if c.Subject.CommonName == id {
				return true
			}
		case IdentitySAN:
			names := append(append([]string{}, c.DNSNames...), c.EmailAddresses...)
			for _, u := range c.URIs {
				names = append(names, u.String())
			}
			if slices.Contains(names, id) {
				return true
			}
		}
	}
	return false
}

// IdentityKeys returns the keys under which an identity is indexed: its
// certificate's SHA-256 and its public key's, so that neither the same
// certificate nor another certificate for the same key serves two devices.
func IdentityKeys(c *x509.Certificate) []string {
	cs, ks := sha256.Sum256(c.Raw), sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return []string{"cert:" + hex.EncodeToString(cs[:]), "spki:" + hex.EncodeToString(ks[:])}
}

// IdentityClaim says which device an identity key belongs to.
type IdentityClaim struct {
	User   string    `json:"user"`
	Device string    `json:"device"`
	At     time.Time `json:"at"`
}

// IdentityIndex maps identity keys (IdentityKeys) to the device that
// claimed them.
type IdentityIndex interface {
	// IdentityClaim returns the claim stored under key, or ErrNotFound.
	IdentityClaim(ctx context.Context, key string) (IdentityClaim, error)
	// SwapIdentityClaim stores next under key if the stored claim is
	// still old (nil: none stored) and reports whether it did.
	SwapIdentityClaim(ctx context.Context, key string, old *IdentityClaim, next IdentityClaim) (bool, error)
}

// claimIdentity makes (user, id) the holder of identity c, or refuses with
// ReasonIdentityInUse naming the active device that holds it.
func (reg *Registry) claimIdentity(ctx context.Context, c *x509.Certificate, user, id string) error {
	now := reg.now().UTC()
	for _, key := range IdentityKeys(c) {
		swapped := false
		for attempt := 0; attempt < 10 && !swapped; attempt++ {
			var old *IdentityClaim
			cur, err := reg.store.IdentityClaim(ctx, key)
			switch {
			case err == nil:
				if cur.User == user && cur.Device == id {
					swapped = true
					continue
				}
				if held, err := reg.holds(ctx, cur, key, now); err != nil {
					return err
				} else if held {
					return reject(ReasonIdentityInUse, fmt.Sprintf("the identity certificate is registered to device %q of %s; an identity belongs to one active device: retire that device or rekey it first", cur.Device, cur.User))
				}
				old = &cur
			case !errors.Is(err, ErrNotFound):
				return fmt.Errorf("policy: read identity index: %w", err)
			}
			if swapped, err = reg.store.SwapIdentityClaim(ctx, key, old, IdentityClaim{User: user, Device: id, At: now}); err != nil {
				return fmt.Errorf("policy: claim identity: %w", err)
			}
		}
		if !swapped {
			return fmt.Errorf("policy: claim identity: too many concurrent registrations of one identity")
		}
	}
	return nil
}

// holds reports whether the claim still binds: its device is active with
// an identity under key, or the claim is too young to tell (a registration
// in flight).
func (reg *Registry) holds(ctx context.Context, c IdentityClaim, key string, now time.Time) (bool, error) {
	d, err := reg.store.Device(ctx, c.User, c.Device)
	if errors.Is(err, ErrNotFound) {
		return now.Sub(c.At) < claimGrace, nil
	} else if err != nil {
		return false, fmt.Errorf("policy: read device: %w", err)
	}
	if d.State == DeviceActive && len(d.Identity) > 0 {
		if ic, err := x509.ParseCertificate(d.Identity); err == nil && slices.Contains(IdentityKeys(ic), key) {
			return true, nil
		}
	}
	return now.Sub(c.At) < claimGrace && d.State == DeviceActive, nil
}

// RekeyDevice replaces the identity certificate of an active device (an MDM
// re-enrolment). The new identity is checked as at registration and must
// belong to no other active device. Key releases to the device are then
// held for the configured cooling-off (Config.RekeyHold) unless an
// administrator confirms the new identity (ConfirmIdentity); the audit
// event (device.rekey) names the old and the new SHA-256 and the hold, and
// is the notification. The same identity again changes nothing.
func (reg *Registry) RekeyDevice(ctx context.Context, user, id string, identity []byte) (Device, error) {
	d, err := reg.activeDevice(ctx, user, id)
	if err != nil {
		return Device{}, err
	}
	refused := func(err error) (Device, error) {
		reg.audit.Audit(ctx, Event{Time: reg.now().UTC(), Actor: ActorFrom(ctx), Action: ActionDeviceRekey, User: d.User, Device: id, Result: "refused", Detail: err.Error()})
		return Device{}, err
	}
	c, err := reg.checkIdentity(identity, id)
	if err != nil {
		return refused(err)
	}
	if string(d.Identity) == string(c.Raw) {
		return d, nil
	}
	if err := reg.claimIdentity(ctx, c, d.User, id); err != nil {
		return refused(err)
	}
	now := reg.now().UTC()
	oldSum := d.IdentitySHA256()
	d.Identity, d.UpdatedAt, d.UpdatedBy = c.Raw, now, ActorFrom(ctx).Name
	detail := "identity added; no key was released to this device before"
	if oldSum != "" {
		d.HeldUntil = now.Add(reg.cfg.RekeyHold)
		detail = fmt.Sprintf("identity replaced: old sha256 %s, new sha256 %s; key releases held until %s unless an administrator confirms (smimeca device confirm)",
			oldSum, d.IdentitySHA256(), d.HeldUntil.Format(time.RFC3339))
	}
	if err := reg.store.UpdateDevice(ctx, d); errors.Is(err, ErrInactiveDevice) {
		return refused(errRetiredNow(d.User, id))
	} else if err != nil {
		reg.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: ActionDeviceRekey, User: d.User, Device: id, Result: "error", Detail: "storing the device failed"})
		return Device{}, fmt.Errorf("policy: rekey device: %w", err)
	}
	ev := Event{Time: now, Actor: ActorFrom(ctx), Action: ActionDeviceRekey, User: d.User, Device: id, Result: "ok", Detail: detail,
		SHA256: []string{d.IdentitySHA256()}}
	if oldSum != "" {
		ev.SHA256 = []string{oldSum, d.IdentitySHA256()}
	}
	reg.audit.Audit(ctx, ev)
	return d, nil
}

// ConfirmIdentity ends the hold a rekey put on a device's key releases (an
// administrator's decision: the new identity is the device's).
func (reg *Registry) ConfirmIdentity(ctx context.Context, user, id string) (Device, error) {
	d, err := reg.activeDevice(ctx, user, id)
	if err != nil {
		return Device{}, err
	}
	now := reg.now().UTC()
	if !now.Before(d.HeldUntil) {
		return Device{}, reject(ReasonIdentityChange, fmt.Sprintf("device %q of %s has no identity on hold", id, d.User))
	}
	d.HeldUntil, d.UpdatedAt, d.UpdatedBy = time.Time{}, now, ActorFrom(ctx).Name
	if err := reg.store.UpdateDevice(ctx, d); errors.Is(err, ErrInactiveDevice) {
		return Device{}, errRetiredNow(d.User, id)
	} else if err != nil {
		return Device{}, fmt.Errorf("policy: confirm identity: %w", err)
	}
	reg.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: ActionDeviceConfirm, User: d.User, Device: id, Result: "ok",
		SHA256: []string{d.IdentitySHA256()}, Detail: "rekeyed identity confirmed; key releases resume"})
	return d, nil
}

// ActiveDevice returns the registered, active device (user, id), the user
// normalised: ReasonUnknownDevice or ReasonDeviceRetired otherwise.
func (reg *Registry) ActiveDevice(ctx context.Context, user, id string) (Device, error) {
	return reg.activeDevice(ctx, user, id)
}

// MinRSABits is the smallest device RSA key accepted (Config.MinRSABits).
func (e *Enrollment) MinRSABits() int { return e.cfg.MinRSABits }

// SigningValidity is how long issued signing certificates are valid.
func (e *Enrollment) SigningValidity() time.Duration { return e.cfg.Validity }

// ReleasableIdentity returns the device's registered identity certificate
// when keys may be encrypted to it now: it has one, it can receive CMS
// envelopes, it is not on hold after a rekey, and it still chains to a
// configured device identity CA (and is not revoked by the MDM).
func (reg *Registry) ReleasableIdentity(d Device) (*x509.Certificate, error) {
	if len(d.Identity) == 0 {
		return nil, reject(ReasonNoIdentity, fmt.Sprintf("device %q of %s has no registered identity certificate, so no key can be encrypted to it; register it with --identity-cert (smimeca device register)", d.ID, d.User))
	}
	c, err := x509.ParseCertificate(d.Identity)
	if err != nil {
		return nil, fmt.Errorf("policy: the registered identity of %s is unreadable: %w", d.ID, err)
	}
	now := reg.now()
	if err := pfxconnector.CheckRecipient(c, now); err != nil {
		return nil, reject(ReasonNoIdentity, fmt.Sprintf("the registered identity certificate of device %q cannot receive keys (%v); register its current identity", d.ID, err))
	}
	if err := reg.releasable(d, c, now); err != nil {
		return nil, err
	}
	return c, nil
}

// releasable checks, at release time, that the device's registered
// identity may receive keys now: not on hold after a rekey, and still
// chaining to a currently configured device identity CA.
func (reg *Registry) releasable(d Device, c *x509.Certificate, now time.Time) error {
	if now.Before(d.HeldUntil) {
		return reject(ReasonIdentityOnHold, fmt.Sprintf("the identity of device %q of %s was replaced; key releases are held until %s unless an administrator confirms it (smimeca device confirm --user %s --device %s)",
			d.ID, d.User, d.HeldUntil.UTC().Format(time.RFC3339), d.User, d.ID))
	}
	if err := reg.verifyIdentityChain(c, now); err != nil {
		return reject(ReasonNoIdentity, fmt.Sprintf("the registered identity of device %q cannot receive keys now (%v): it must chain to a configured device identity CA (--device-identity-ca) and not be revoked by the MDM; rekey the device with its current identity", d.ID, err))
	}
	return nil
}

// verifyIdentityChain checks that c chains to a configured device identity
// CA now and, where the MDM's CRL is configured, is not revoked.
func (reg *Registry) verifyIdentityChain(c *x509.Certificate, now time.Time) error {
	if reg.cfg.DeviceIdentityCAs == nil {
		return errors.New("no device identity CA configured")
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: reg.cfg.DeviceIdentityCAs, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return err
	}
	if reg.cfg.IdentityRevocations != nil {
		revoked, err := reg.cfg.IdentityRevocations.Revoked(c)
		if err != nil {
			return fmt.Errorf("the MDM CA's revocation list cannot be checked: %w", err)
		}
		if revoked {
			return errIdentityRevoked
		}
	}
	return nil
}

var errIdentityRevoked = errors.New("revoked by the MDM CA")
