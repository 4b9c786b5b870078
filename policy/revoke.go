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

// ListCertificates returns the certificates issued to a user and/or device,
// newest first, with their revocation state. At least one of the two must be
// given.
func (e *Enrollment) ListCertificates(ctx context.Context, f Filter) ([]CertificateStatus, error) {
	if f.User == "" && f.Device == "" {
		return nil, reject(ReasonBadUser, "give a user or a device to list certificates for")
	}
	if f.User != "" {
		u, err := NormalizeEmail(f.User)
		if err != nil {
			return nil, err
		}
		f.User = u
	}
	recs, err := e.inventory.ListIssued(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("policy: list issued: %w", err)
	}
	out := make([]CertificateStatus, 0, len(recs))
	for _, r := range recs {
		rev, err := e.issuer.IsRevoked(r.Serial)
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
func (e *Enrollment) RevokeCertificate(ctx context.Context, serial string, reasonCode int, reason string) (Issued, error) {
	sn, err := ParseSerial(serial)
	if err != nil {
		return Issued{}, err
	}
	rec, err := e.inventory.IssuedBySerial(ctx, sn)
	if errors.Is(err, ErrNotFound) {
		return Issued{}, reject(ReasonUnknownCertificate, "no certificate with serial "+sn+" was issued to a device")
	} else if err != nil {
		return Issued{}, fmt.Errorf("policy: read inventory: %w", err)
	}
	if err := e.revoke(ctx, sn, reasonCode, reason); err != nil {
		e.audit.Audit(ctx, Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: ActionRevoke,
			User: rec.User, Device: rec.Device, Serials: []string{sn}, Result: "refused", Detail: err.Error()})
		return Issued{}, err
	}
	e.audit.Audit(ctx, Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: ActionRevoke,
		User: rec.User, Device: rec.Device, Serials: []string{sn}, SHA256: []string{rec.SHA256}, Result: "ok", Detail: reason})
	return rec, nil
}

// RevokeDevice revokes every unrevoked certificate issued to device and
// returns the serials it revoked.
func (e *Enrollment) RevokeDevice(ctx context.Context, device string, reasonCode int, reason string) ([]string, error) {
	if err := ValidateDeviceID(device); err != nil {
		return nil, err
	}
	recs, err := e.inventory.ListIssued(ctx, Filter{Device: device})
	if err != nil {
		return nil, fmt.Errorf("policy: list issued: %w", err)
	}
	var revoked, sums []string
	for _, r := range recs {
		err := e.revoke(ctx, r.Serial, reasonCode, reason)
		if re, ok := IsReject(err); ok && re.Reason == ReasonAlreadyRevoked {
			continue
		}
		if err != nil {
			return revoked, err
		}
		revoked = append(revoked, r.Serial)
		sums = append(sums, r.SHA256)
	}
	e.audit.Audit(ctx, Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: ActionRevokeDevice,
		Device: device, Serials: revoked, SHA256: sums, Result: "ok", Detail: reason})
	return revoked, nil
}

func (e *Enrollment) revoke(ctx context.Context, serial string, reasonCode int, reason string) error {
	switch reasonCode {
	case ca.ReasonUnspecified, ca.ReasonKeyCompromise, ca.ReasonAffiliationChanged, ca.ReasonSuperseded, ca.ReasonCessationOfOperation:
	default:
		return reject(ReasonBadReasonCode, fmt.Sprintf("revocation reason code %d is not one of 0,1,3,4,5", reasonCode))
	}
	err := e.issuer.Revoke(ctx, serial, reasonCode, reason)
	switch {
	case errors.Is(err, ca.ErrAlreadyRevoked):
		return reject(ReasonAlreadyRevoked, "certificate "+serial+" is already revoked")
	case errors.Is(err, ca.ErrNotFound):
		return reject(ReasonUnknownCertificate, "certificate "+serial+" is not in the CA database")
	case err != nil:
		return fmt.Errorf("policy: revoke %s: %w", serial, err)
	}
	return nil
}
