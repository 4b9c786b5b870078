package policy

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/smimeca/smimeca/ca"
)

// Audit actions of the device registry.
const (
	ActionDeviceRegister = "device.register"
	// ActionDeviceIdentity is a re-registration that added an identity
	// certificate to an active device that had none.
	ActionDeviceIdentity = "device.identity.replace"
	ActionDeviceRetire   = "device.retire"
)

// minIdentityRSABits is the smallest device identity RSA key (what iOS MDM
// issues); the largest and the exponent are CheckPublicKey's.
const minIdentityRSABits = 2048

// activeDevice returns the registered, active device (user, id), with the
// user normalised and checked against the allowed domains. An unknown
// device is ReasonUnknownDevice, a retired one ReasonDeviceRetired.
func (reg *Registry) activeDevice(ctx context.Context, user, id string) (Device, error) {
	u, err := reg.checkDeviceName(user, id)
	if err != nil {
		return Device{}, err
	}
	d, err := reg.store.Device(ctx, u, id)
	if errors.Is(err, ErrNotFound) {
		return Device{}, reject(ReasonUnknownDevice, fmt.Sprintf("device %q of %s is not registered; register it first (smimeca device register --user %s --device %s)", id, u, u, id))
	} else if err != nil {
		return Device{}, fmt.Errorf("policy: read device: %w", err)
	}
	if d.State != DeviceActive {
		return Device{}, reject(ReasonDeviceRetired, fmt.Sprintf("device %q of %s was retired at %s; register it again to give it a new lifecycle", id, u, d.RetiredAt.Format("2006-01-02T15:04:05Z")))
	}
	return d, nil
}

func (r *rules) checkDeviceName(user, id string) (string, error) {
	u, err := NormalizeEmail(user)
	if err != nil {
		return "", err
	}
	if err := r.cfg.Domains.Check(u); err != nil {
		return "", err
	}
	if err := ValidateDeviceID(id); err != nil {
		return "", err
	}
	return u, nil
}

func identityFieldNames(fs []IdentityField) string {
	var s []string
	for _, f := range fs {
		s = append(s, string(f))
	}
	return strings.Join(s, " or ")
}

// errRetiredNow is the refusal of a write whose transaction found the
// device retired (or never registered) at commit time.
func errRetiredNow(user, device string) error {
	return reject(ReasonDeviceRetired, fmt.Sprintf("device %q of %s is not registered and active", device, user))
}

// IdentitySHA256 returns the hex SHA-256 of a device's identity certificate
// ("" when it has none): what audit events name as the key recipient.
func (d Device) IdentitySHA256() string {
	if len(d.Identity) == 0 {
		return ""
	}
	s := sha256.Sum256(d.Identity)
	return hex.EncodeToString(s[:])
}

// checkIdentity parses and checks a device identity certificate: RSA of
// 2048 to 4096 bits with exponent 65537 (what iOS MDM enrolment issues, and
// what CMS key transport needs), valid now, issued by one of the
// configured device identity CAs, and naming the device (Config.IdentityFields).
func (reg *Registry) checkIdentity(der []byte, device string) (*x509.Certificate, error) {
	if reg.cfg.DeviceIdentityCAs == nil {
		return nil, reject(ReasonBadIdentity, "no device identity CA is configured; start the server with --device-identity-ca FILE.pem (the MDM's device identity CA) before registering identities")
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, reject(ReasonBadIdentity, "the identity certificate is not a DER or PEM X.509 certificate")
	}
	pub, ok := c.PublicKey.(*rsa.PublicKey)
	if !ok {
		return nil, reject(ReasonBadIdentity, fmt.Sprintf("the identity certificate's key is %s; device identities must be RSA (2048 to 4096 bits), as iOS MDM enrolment issues them", c.PublicKeyAlgorithm))
	}
	if bits := pub.N.BitLen(); bits < minIdentityRSABits || CheckPublicKey(pub) != nil {
		return nil, reject(ReasonBadIdentity, fmt.Sprintf("the identity certificate's RSA key has %d bits and exponent %d; %d to %d bits with exponent 65537 are accepted", bits, pub.E, minIdentityRSABits, MaxRSABits))
	}
	now := reg.now()
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return nil, reject(ReasonBadIdentity, fmt.Sprintf("the identity certificate is not valid now (%s to %s)", c.NotBefore.UTC().Format("2006-01-02"), c.NotAfter.UTC().Format("2006-01-02")))
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		return nil, reject(ReasonBadIdentity, "the identity certificate's key usage lacks keyEncipherment, so nothing can be encrypted to it")
	}
	if err := reg.verifyIdentityChain(c, now); errors.Is(err, errIdentityRevoked) {
		return nil, reject(ReasonBadIdentity, "the identity certificate was revoked by the MDM CA (--device-identity-crl)")
	} else if err != nil {
		return nil, reject(ReasonBadIdentity, "the identity certificate does not chain to a configured device identity CA (--device-identity-ca), or its revocation cannot be checked")
	}
	if !namesDevice(c, device, reg.cfg.IdentityFields) {
		return nil, reject(ReasonBadIdentity, fmt.Sprintf("the identity certificate (subject %q) does not name device %q in %s; an identity must name the device it is registered to (--identity-device-fields)",
			c.Subject.String(), device, identityFieldNames(reg.cfg.IdentityFields)))
	}
	return c, nil
}

// RegisterDevice registers user's device id as active, with identity (DER;
// nil for none) as the certificate escrowed keys will be encrypted to. The
// identity must name the device and belong to no other active device
// (ReasonIdentityInUse names the holder). A device that is active already
// keeps its history: the same identity changes nothing, an identity added
// to a device that had none is audited as such, and replacing an identity
// is refused (ReasonIdentityChange): that is RekeyDevice, which holds key
// releases. A retired device starts a new lifecycle. It returns the device
// as stored.
func (reg *Registry) RegisterDevice(ctx context.Context, user, id string, identity []byte) (Device, error) {
	u, err := reg.checkDeviceName(user, id)
	if err != nil {
		return Device{}, err
	}
	if isUnregisteredDevice(id) {
		return Device{}, reject(ReasonBadDevice, fmt.Sprintf("the device id %q is reserved for devices outside the registry (the labs static challenge, %s…)", id, ExternalDevicePrefix))
	}
	refused := func(err error) (Device, error) {
		reg.audit.Audit(ctx, Event{Time: reg.now().UTC(), Actor: ActorFrom(ctx), Action: ActionDeviceRegister, User: u, Device: id, Result: "refused", Detail: err.Error()})
		return Device{}, err
	}
	var idCert *x509.Certificate
	if len(identity) > 0 {
		if idCert, err = reg.checkIdentity(identity, id); err != nil {
			return refused(err)
		}
		identity = idCert.Raw
	}
	now := reg.now().UTC()
	by := ActorFrom(ctx).Name
	old, err := reg.store.Device(ctx, u, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Device{}, fmt.Errorf("policy: read device: %w", err)
	}
	action, detail := ActionDeviceRegister, "registered"
	d := Device{User: u, ID: id, State: DeviceActive, Identity: identity, CreatedAt: now, CreatedBy: by}
	switch {
	case err == nil && old.State == DeviceActive:
		if string(old.Identity) == string(identity) || len(identity) == 0 {
			return old, nil
		}
		if len(old.Identity) > 0 {
			return refused(reject(ReasonIdentityChange, fmt.Sprintf("device %q of %s is active with identity sha256 %s; replacing it is a rekey (smimeca device rekey), which holds key releases until an administrator confirms", id, u, old.IdentitySHA256())))
		}
		d.CreatedAt, d.CreatedBy, d.UpdatedAt, d.UpdatedBy = old.CreatedAt, old.CreatedBy, now, by
		action, detail = ActionDeviceIdentity, "identity added"
	case err == nil:
		detail = "registered again after retirement at " + old.RetiredAt.Format("2006-01-02T15:04:05Z")
	}
	if idCert != nil {
		if err := reg.claimIdentity(ctx, idCert, u, id); err != nil {
			return refused(err)
		}
	}
	put := reg.store.PutDevice
	if action == ActionDeviceIdentity {
		// A change of an active device: a retirement meanwhile stands.
		put = reg.store.UpdateDevice
	}
	if err := put(ctx, d); errors.Is(err, ErrInactiveDevice) {
		return refused(errRetiredNow(u, id))
	} else if err != nil {
		reg.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: action, User: u, Device: id, Result: "error", Detail: "storing the device failed"})
		return Device{}, fmt.Errorf("policy: register device: %w", err)
	}
	ev := Event{Time: now, Actor: ActorFrom(ctx), Action: action, User: u, Device: id, Result: "ok", Detail: detail}
	if s := d.IdentitySHA256(); s != "" {
		ev.SHA256 = []string{s}
	}
	reg.audit.Audit(ctx, ev)
	return d, nil
}

// Device returns the registered device (user, id).
func (reg *Registry) Device(ctx context.Context, user, id string) (Device, error) {
	return reg.device(ctx, user, id)
}

// device returns the registered device (user, id), ReasonUnknownDevice when
// there is none.
func (r *rules) device(ctx context.Context, user, id string) (Device, error) {
	u, err := r.checkDeviceName(user, id)
	if err != nil {
		return Device{}, err
	}
	d, err := r.store.Device(ctx, u, id)
	if errors.Is(err, ErrNotFound) {
		return Device{}, reject(ReasonUnknownDevice, fmt.Sprintf("device %q of %s is not registered", id, u))
	}
	return d, err
}

// ListDevices returns the user's registered devices.
func (reg *Registry) ListDevices(ctx context.Context, user string) ([]Device, error) {
	u, err := NormalizeEmail(user)
	if err != nil {
		return nil, err
	}
	return reg.store.ListDevices(ctx, u)
}

// RetireDevice ends a device's lifecycle. In one transaction: the device is
// retired, its live challenge deleted, and every unrevoked certificate it
// was issued revoked (cessationOfOperation, with reason) and stripped of
// its right to renew. An issuance that commits after it finds the device
// retired; one that committed between the listing and the retirement is
// revoked right after, so none ends valid. The user's escrow is untouched.
// It returns the serials it revoked.
func (reg *Registry) RetireDevice(ctx context.Context, user, id, reason string) ([]string, error) {
	if err := CheckText("the reason", reason); err != nil {
		return nil, err
	}
	d, err := reg.activeDevice(ctx, user, id)
	if err != nil {
		return nil, err
	}
	now := reg.now().UTC()
	revs, sums, err := reg.revocations.unrevoked(ctx, d.User, d.ID, ca.ReasonCessationOfOperation, "device retired: "+reason)
	if err != nil {
		return nil, err
	}
	d.State, d.RetiredAt, d.RetiredBy, d.RetireReason = DeviceRetired, now, ActorFrom(ctx).Name, reason
	if err := reg.store.RetireDevice(ctx, d, revs); errors.Is(err, ErrInactiveDevice) {
		return nil, reject(ReasonDeviceRetired, fmt.Sprintf("device %q of %s was retired meanwhile", id, d.User))
	} else if err != nil {
		reg.audit.Audit(ctx, Event{Time: now, Actor: ActorFrom(ctx), Action: ActionDeviceRetire, User: d.User, Device: id, Result: "error", Detail: "storing the retirement failed"})
		return nil, fmt.Errorf("policy: retire device: %w", err)
	}
	serials := make([]string, 0, len(revs))
	for _, r := range revs {
		serials = append(serials, r.Serial)
	}
	// Anything issued between the listing and the commit.
	late, lateSums, err := reg.revocations.revokeAll(ctx, d.User, d.ID, ca.ReasonCessationOfOperation, "device retired: "+reason)
	serials, sums = append(serials, late...), append(sums, lateSums...)
	ev := Event{Time: now, Actor: ActorFrom(ctx), Action: ActionDeviceRetire, User: d.User, Device: id,
		Serials: serials, SHA256: sums, Result: "ok", Detail: reason}
	if err != nil {
		ev.Result, ev.Detail = "error", "retired; revoking late certificates failed: "+err.Error()
	}
	reg.audit.Audit(ctx, ev)
	return serials, err
}
