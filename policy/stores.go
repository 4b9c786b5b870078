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

// ChallengeStore keeps challenges by the hash of their secret.
type ChallengeStore interface {
	// PutChallenge stores a new challenge under hash.
	PutChallenge(ctx context.Context, hash []byte, c Challenge) error
	// Challenge returns the challenge stored under hash, or ErrNotFound.
	Challenge(ctx context.Context, hash []byte) (Challenge, error)
	// ConsumeChallenge marks the challenge under hash consumed at time at,
	// atomically: of concurrent callers exactly one succeeds and the others
	// get a *RejectError with ReasonChallengeUsed. It returns ErrNotFound for
	// an unknown hash.
	ConsumeChallenge(ctx context.Context, hash []byte, at time.Time) (Challenge, error)
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

// Inventory keeps the (serial → user, device) binding of issued certificates.
type Inventory interface {
	// RecordIssued stores rec.
	RecordIssued(ctx context.Context, rec Issued) error
	// IssuedBySerial returns the record for a decimal serial, or ErrNotFound.
	IssuedBySerial(ctx context.Context, serial string) (Issued, error)
	// ListIssued returns the records that match f, newest first.
	ListIssued(ctx context.Context, f Filter) ([]Issued, error)
}

// Issuer signs leaf certificates; *ca.Authority implements it.
type Issuer interface {
	// Issue signs csr's public key shaped by t and returns leaf + chain.
	Issue(ctx context.Context, csr *x509.CertificateRequest, t ca.Template) ([]*x509.Certificate, error)
	// VerifyIssued reports (nil) whether crt is a valid, unrevoked
	// certificate issued by this CA.
	VerifyIssued(crt *x509.Certificate, now time.Time) error
	// IsRevoked reports whether the decimal serial is revoked.
	IsRevoked(serial string) (bool, error)
	// Revoke revokes the decimal serial and refreshes the CRL.
	Revoke(ctx context.Context, serial string, reasonCode int, reason string) error
}
