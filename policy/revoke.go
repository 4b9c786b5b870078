package policy

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/smimeca/smimeca/ca"
)

// CertificateStatus is an inventory record with its revocation state.
type CertificateStatus struct {
	Issued
	Revoked bool
}

// ListCertificates returns the certificates issued to a user, or to one
// of the user's devices, newest first, with their revocation state.
func (rv *Revocations) ListCertificates(ctx context.Context, f Filter) ([]CertificateStatus, error) {
	if f.User == "" {
		return nil, reject(ReasonBadUser, "give the user (and optionally one of their devices) to list certificates for")
	}
	u, err := NormalizeEmail(f.User)
	if err != nil {
		return nil, err
	}
	f.User = u
	if f.Device != "" {
		if err := ValidateDeviceID(f.Device); err != nil {
			return nil, err
		}
	}
	recs, err := rv.store.ListIssued(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("policy: list issued: %w", err)
	}
	out := make([]CertificateStatus, 0, len(recs))
	for _, r := range recs {
		rev, err := rv.issuer.IsRevoked(r.Serial)
		if err != nil {
			return nil, err
		}
		out = append(out, CertificateStatus{Issued: r, Revoked: rev})
	}
	return out, nil
}

// ParseSerial accepts a serial as decimal or as hex (with a 0x prefix or
// colons, as openssl prints it) and returns it in decimal.
func ParseSerial(s string) (string, error) {
	s = strings.TrimSpace(s)
	n := new(big.Int)
	var ok bool
	switch {
	case strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X"):
		_, ok = n.SetString(s[2:], 16)
	case strings.Contains(s, ":"):
		_, ok = n.SetString(strings.ReplaceAll(s, ":", ""), 16)
	default:
		_, ok = n.SetString(s, 10)
	}
	if !ok || n.Sign() <= 0 {
		return "", reject(ReasonBadSerial, fmt.Sprintf("%q is not a serial number (decimal, 0x-hex or colon hex)", s))
	}
	return n.String(), nil
}

// RevokeCertificate revokes one issued certificate by serial.
func (rv *Revocations) RevokeCertificate(ctx context.Context, serial string, reasonCode int, reason string) (Issued, error) {
	sn, err := ParseSerial(serial)
	if err != nil {
		return Issued{}, err
	}
	if err := CheckText("the reason", reason); err != nil {
		return Issued{}, err
	}
	rec, err := rv.store.IssuedBySerial(ctx, sn)
	if errors.Is(err, ErrNotFound) {
		return Issued{}, reject(ReasonUnknownCertificate, "no certificate with serial "+sn+" was issued to a device")
	} else if err != nil {
		return Issued{}, fmt.Errorf("policy: read inventory: %w", err)
	}
	if err := rv.revoke(ctx, sn, reasonCode, reason); err != nil {
		rv.audit.Audit(ctx, Event{Time: rv.now().UTC(), Actor: ActorFrom(ctx), Action: ActionRevoke,
			User: rec.User, Device: rec.Device, Serials: []string{sn}, Result: "refused", Detail: err.Error()})
		return Issued{}, err
	}
	rv.audit.Audit(ctx, Event{Time: rv.now().UTC(), Actor: ActorFrom(ctx), Action: ActionRevoke,
		User: rec.User, Device: rec.Device, Serials: []string{sn}, SHA256: []string{rec.SHA256}, Result: "ok", Detail: reason})
	return rec, nil
}

// RevokeDevice revokes every unrevoked certificate issued to the user's
// device and deletes its live challenge (in the revocation's transaction),
// and returns the serials it revoked. The device stays registered and may
// enrol again with a new challenge; RetireDevice ends it.
func (rv *Revocations) RevokeDevice(ctx context.Context, user, device string, reasonCode int, reason string) ([]string, error) {
	if err := checkReasonCode(reasonCode); err != nil {
		return nil, err
	}
	if err := CheckText("the reason", reason); err != nil {
		return nil, err
	}
	u, err := rv.checkDeviceName(user, device)
	if err != nil {
		return nil, err
	}
	if _, err := rv.device(ctx, u, device); err != nil {
		return nil, err
	}
	revoked, sums, err := rv.revokeAll(ctx, u, device, reasonCode, reason)
	if err == nil && len(revoked) == 0 {
		// Nothing to revoke, so no revocation deleted the live challenge:
		// a revoked device enrols again only with a new one.
		err = rv.store.DeleteChallenge(ctx, u, device)
	}
	ev := Event{Time: rv.now().UTC(), Actor: ActorFrom(ctx), Action: ActionRevokeDevice,
		User: u, Device: device, Serials: revoked, SHA256: sums, Result: "ok", Detail: reason}
	if err != nil {
		ev.Result, ev.Detail = "error", err.Error()
	}
	rv.audit.Audit(ctx, ev)
	return revoked, err
}

func checkReasonCode(reasonCode int) error {
	switch reasonCode {
	case ca.ReasonUnspecified, ca.ReasonKeyCompromise, ca.ReasonAffiliationChanged, ca.ReasonSuperseded, ca.ReasonCessationOfOperation:
		return nil
	}
	return reject(ReasonBadReasonCode, fmt.Sprintf("revocation reason code %d is not one of 0,1,3,4,5", reasonCode))
}

// revoke revokes one certificate and ends its right to renew, in one
// transaction.
func (rv *Revocations) revoke(ctx context.Context, serial string, reasonCode int, reason string) error {
	if err := checkReasonCode(reasonCode); err != nil {
		return err
	}
	if revoked, err := rv.issuer.IsRevoked(serial); err != nil {
		return err
	} else if revoked {
		return reject(ReasonAlreadyRevoked, "certificate "+serial+" is already revoked")
	}
	rec, err := rv.issuer.RevocationRecord(serial, reasonCode, reason, rv.now())
	if errors.Is(err, ca.ErrNotFound) {
		return reject(ReasonUnknownCertificate, "certificate "+serial+" is not in the CA database")
	} else if err != nil {
		return fmt.Errorf("policy: revoke %s: %w", serial, err)
	}
	if err := rv.store.RevokeIssued(ctx, serial, rec); err != nil {
		return err
	}
	if !rec.Applied() {
		return reject(ReasonAlreadyRevoked, "certificate "+serial+" is already revoked")
	}
	return nil
}

// unrevoked lists the device's unrevoked certificates with the CA's records
// of revoking them.
func (rv *Revocations) unrevoked(ctx context.Context, user, id string, code int, reason string) ([]Revocation, []string, error) {
	recs, err := rv.store.ListIssued(ctx, Filter{User: user, Device: id})
	if err != nil {
		return nil, nil, fmt.Errorf("policy: list issued: %w", err)
	}
	var revs []Revocation
	var sums []string
	now := rv.now()
	for _, r := range recs {
		if revoked, err := rv.issuer.IsRevoked(r.Serial); err != nil {
			return nil, nil, err
		} else if revoked {
			continue
		}
		rec, err := rv.issuer.RevocationRecord(r.Serial, code, reason, now)
		if err != nil {
			return nil, nil, fmt.Errorf("policy: revoke %s: %w", r.Serial, err)
		}
		revs = append(revs, Revocation{Serial: r.Serial, CA: rec})
		sums = append(sums, r.SHA256)
	}
	return revs, sums, nil
}

// revokeAll revokes every unrevoked certificate of the device, one
// transaction each, and returns their serials and thumbprints.
func (rv *Revocations) revokeAll(ctx context.Context, user, id string, code int, reason string) ([]string, []string, error) {
	revs, sums, err := rv.unrevoked(ctx, user, id, code, reason)
	if err != nil {
		return nil, nil, err
	}
	var serials []string
	for i, r := range revs {
		if err := rv.store.RevokeIssued(ctx, r.Serial, r.CA); err != nil {
			return serials, sums[:i], fmt.Errorf("policy: revoke %s: %w", r.Serial, err)
		}
		serials = append(serials, r.Serial)
	}
	return serials, sums, nil
}
