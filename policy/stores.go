package policy

import (
	"context"
	"crypto/x509"
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
}

// ChallengeStore keeps challenges by the hash of their secret. A challenge
// is used up by the Inventory transaction that records the certificate it
// paid for (see Commit).
type ChallengeStore interface {
	// PutChallenge stores a new challenge under hash.
	PutChallenge(ctx context.Context, hash []byte, c Challenge) error
	// Challenge returns the challenge stored under hash (with ConsumedAt set
	// once it was used), or ErrNotFound.
	Challenge(ctx context.Context, hash []byte) (Challenge, error)
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
// same transaction: the certificate is stored, the challenge used up and the
// device's inventory updated together or not at all.
type Commit struct {
	// Challenge, when not nil, is the hash of the one-time challenge the
	// issuance uses up. If it is no longer unused the whole transaction
	// fails with a *RejectError (ReasonChallengeUsed).
	Challenge []byte
	// At is when the challenge was used.
	At time.Time
	// CA is the CA's own record of the certificate.
	CA ca.Record
}

// Inventory keeps the (serial → user, device) binding of issued certificates.
type Inventory interface {
	// RecordIssued stores rec together with c, atomically.
	RecordIssued(ctx context.Context, rec Issued, c Commit) error
	// IssuedBySerial returns the record for a decimal serial, or ErrNotFound.
	IssuedBySerial(ctx context.Context, serial string) (Issued, error)
	// ListIssued returns the records that match f, newest first.
	ListIssued(ctx context.Context, f Filter) ([]Issued, error)
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
	// IsRevoked reports whether the decimal serial is revoked.
	IsRevoked(serial string) (bool, error)
	// Revoke revokes the decimal serial and refreshes the CRL.
	Revoke(ctx context.Context, serial string, reasonCode int, reason string) error
}
