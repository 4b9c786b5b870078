package policy

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"github.com/smimeca/smimeca/ca"
)

// Challenge is a one-time enrolment secret's binding. The secret itself is
// never stored, only its SHA-256 hash (the key under which it is stored).
type Challenge struct {
	User       string    `json:"user"`
	Device     string    `json:"device"`
	CreatedAt  time.Time `json:"created_at"`
	CreatedBy  string    `json:"created_by,omitempty"`
	ExpiresAt  time.Time `json:"expires_at"`
	ConsumedAt time.Time `json:"consumed_at,omitzero"`
	// What a used challenge paid for: the certificate's serial and the
	// request's transaction and key, so that the same request repeated is
	// answered with the same certificate.
	Serial        string `json:"serial,omitempty"`
	TransactionID string `json:"transaction_id,omitempty"`
	KeySHA256     string `json:"key_sha256,omitempty"`
}

// ChallengeStore keeps challenges by the hash of their secret. A challenge
// is used up by the Inventory transaction that records the certificate it
// paid for (see Commit).
type ChallengeStore interface {
	// PutChallenge stores a new challenge under hash and deletes the
	// device's previous challenge, if any: a device has at most one live
	// challenge. It fails with ErrInactiveDevice when the device is not
	// registered and active.
	PutChallenge(ctx context.Context, hash []byte, c Challenge) error
	// Challenge returns the challenge stored under hash (with ConsumedAt set
	// once it was used), or ErrNotFound.
	Challenge(ctx context.Context, hash []byte) (Challenge, error)
	// DeleteChallenge deletes the device's live challenge, if it has one.
	DeleteChallenge(ctx context.Context, user, device string) error
}

// Issued is the inventory record of a certificate issued to a device.
type Issued struct {
	Serial      string    `json:"serial"` // decimal, as in the CA database
	User        string    `json:"user"`
	Device      string    `json:"device"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	IssuedAt    time.Time `json:"issued_at"`
	RenewedFrom string    `json:"renewed_from,omitempty"`
	SHA256      string    `json:"sha256"`
}

// Filter selects inventory records; empty fields match everything.
type Filter struct {
	User   string
	Device string
}

// Commit is what an issuance writes besides its inventory record, in the
// same transaction: the certificate is stored, the challenge used up, the
// predecessor superseded and the device's inventory updated together or
// not at all.
type Commit struct {
	// Challenge, when not nil, is the hash of the one-time challenge the
	// issuance uses up. If it is no longer unused the whole transaction
	// fails with a *RejectError (ReasonChallengeUsed).
	Challenge []byte
	// At is when the challenge was used.
	At time.Time
	// TransactionID and KeySHA256 identify the request that used the
	// challenge; they are kept with the used challenge and the serial.
	TransactionID, KeySHA256 string
	// ChallengeRecord, when not nil, is the challenge as the caller read it
	// (the store then does not read it again; the transaction still fails
	// when it is no longer unused).
	ChallengeRecord *Challenge
	// CA is the CA's own record of the certificate.
	CA ca.Record
	// Supersedes, for a renewal, is the decimal serial of the certificate
	// being renewed. It can be renewed once: if it was renewed, revoked or
	// its device retired since it was checked, the whole transaction fails
	// with a *RejectError (ReasonRenewalNotAuthorized). Revocation is the
	// CA's record of revoking it as superseded, committed with the rest.
	Supersedes string
	Revocation ca.Record
	// Unregistered marks an issuance to a device that is not in the
	// registry (the labs-only static challenge). Every other issuance fails
	// with ErrInactiveDevice unless the device is registered and active
	// when the transaction commits: that is the tombstone a racing
	// retirement leaves.
	Unregistered bool
}

// ErrInactiveDevice is returned by stores when a device is not registered
// or was retired by the time a transaction that needs it active commits.
var ErrInactiveDevice = errors.New("policy: the device is not registered or was retired")

// Inventory keeps the issued certificates, by device and by serial. A write
// costs the same whatever the device's history.
type Inventory interface {
	// RecordIssued stores rec together with c, atomically.
	RecordIssued(ctx context.Context, rec Issued, c Commit) error
	// IssuedBySerial returns the record for a decimal serial, or ErrNotFound.
	IssuedBySerial(ctx context.Context, serial string) (Issued, error)
	// ListIssued returns the records that match f, newest first. A Device
	// filter needs its User: device ids are unique per user only.
	ListIssued(ctx context.Context, f Filter) ([]Issued, error)
	// RevokeIssued commits the CA's record of revoking serial (see
	// ca.Authority.RevocationRecord), ends the certificate's right to be
	// renewed and deletes its device's live challenge, in one transaction:
	// a challenge handed out before a revocation enrols nothing after it.
	RevokeIssued(ctx context.Context, serial string, revocation ca.Record) error
}

// DeviceState is a registered device's state.
type DeviceState string

// Device states.
const (
	DeviceActive  DeviceState = "active"
	DeviceRetired DeviceState = "retired"
)

// Device is a registered device: a user's device id with its state and the
// identity certificate (the MDM identity the device holds) that escrowed
// keys are encrypted to.
type Device struct {
	User  string      `json:"user"`
	ID    string      `json:"id"`
	State DeviceState `json:"state"`
	// Identity is the DER identity certificate; nil when the device was
	// registered without one (it may enrol, but no key is released to it).
	Identity  []byte    `json:"identity,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	UpdatedBy string    `json:"updated_by,omitempty"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
	RetiredBy string    `json:"retired_by,omitempty"`
	// RetireReason is the administrator's reason for retiring it.
	RetireReason string `json:"retire_reason,omitempty"`
	// HeldUntil, after a rekey, is when key releases to the device resume
	// unless an administrator confirms its new identity first.
	HeldUntil time.Time `json:"held_until,omitzero"`
}

// Revocation is one certificate a retirement revokes: its decimal serial and
// the CA's record of the revocation.
type Revocation struct {
	Serial string
	CA     ca.Record
}

// DeviceStore keeps the device registry. Devices are keyed by (user, id).
type DeviceStore interface {
	// PutDevice stores d; an active d may be issued certificates and
	// challenges from the moment this returns.
	PutDevice(ctx context.Context, d Device) error
	// UpdateDevice stores a change of an active device (its identity, its
	// hold) in a transaction that fails with ErrInactiveDevice, changing
	// nothing, when the device is no longer active: a retirement racing the
	// change is never undone.
	UpdateDevice(ctx context.Context, d Device) error
	// Device returns the device, or ErrNotFound.
	Device(ctx context.Context, user, id string) (Device, error)
	// ListDevices returns the user's devices (every device for ""), by id.
	ListDevices(ctx context.Context, user string) ([]Device, error)
	// RetireDevice stores d (retired) and, in the same transaction, deletes
	// the device's live challenge, ends its certificates' right to be
	// renewed and commits the revocations. It fails with ErrInactiveDevice,
	// changing nothing, when the device is not active any more.
	RetireDevice(ctx context.Context, d Device, revocations []Revocation) error
}

// Store is every store the enrolment rules use; nosqlstore.Store is one.
type Store interface {
	ChallengeStore
	Inventory
	DeviceStore
	IdentityIndex
}

// Issuer signs leaf certificates; *ca.Authority implements it.
type Issuer interface {
	// Sign signs csr's public key shaped by t and returns leaf + chain with
	// the CA's record of it, which the caller commits (Commit.CA) before
	// the certificate is handed out.
	Sign(ctx context.Context, csr *x509.CertificateRequest, t ca.Template) (ca.Issuance, error)
	// VerifyIssued reports (nil) whether crt is a valid, unrevoked
	// certificate issued by this CA.
	VerifyIssued(crt *x509.Certificate, now time.Time) error
	// Issued returns the certificate with the decimal serial followed by
	// the issuing chain.
	Issued(serial string) ([]*x509.Certificate, error)
	// IsRevoked reports whether the decimal serial is revoked.
	IsRevoked(serial string) (bool, error)
	// RevocationRecord returns the CA's record of revoking the decimal
	// serial, for the caller to commit (Inventory.RevokeIssued,
	// DeviceStore.RetireDevice, Commit.Revocation).
	RevocationRecord(serial string, reasonCode int, reason string, at time.Time) (ca.Record, error)
}

// Leases lets one of several nodes run a job at a time (the Intune
// revocation feed): a named lease held by one holder until it expires.
type Leases interface {
	// TryLease takes or renews the lease name for holder until now+ttl:
	// true when holder has it, false when another holder's has not expired.
	TryLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (bool, error)
}
