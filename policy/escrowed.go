package policy

import (
	"errors"
	"time"
)

// Purposes of an escrowed certificate.
const (
	PurposeEncryption = "smimeEncryption"
	PurposeSigning    = "smimeSigning"
)

// Escrowed describes one escrowed certificate, without its key.
type Escrowed struct {
	SHA1   string `json:"sha1"`
	SHA256 string `json:"sha256"`
	Serial string `json:"serial"` // hex, upper case
	Issuer string `json:"issuer"`
	// AuthorityKeyID is the certificate's authority key identifier, hex
	// (empty when it has none, and for entries imported before it was
	// recorded): with Issuer it names the key that issued it.
	AuthorityKeyID string    `json:"authority_key_id,omitempty"`
	Subject        string    `json:"subject"`
	Emails         []string  `json:"emails"`
	NotBefore      time.Time `json:"not_before"`
	NotAfter       time.Time `json:"not_after"`
	Purpose        string    `json:"purpose"`
	ImportedAt     time.Time `json:"imported_at"`
	ImportedBy     string    `json:"imported_by"`
	// RevokedAt is when an administrator recorded that the certificate's
	// CA revoked it (zero: not revoked). Its key stays in escrow for old
	// mail; it is no longer the current one nor published as a recipient.
	RevokedAt        time.Time `json:"revoked_at,omitzero"`
	RevocationReason string    `json:"revocation_reason,omitempty"`
}

// CanEncrypt reports whether new mail may be encrypted to the certificate
// at now: an encryption certificate, valid then, not marked revoked. The
// newest such is a bundle's current certificate; all of them are the
// user's published recipient certificates.
func (m Escrowed) CanEncrypt(now time.Time) bool {
	return m.Purpose != PurposeSigning && !now.Before(m.NotBefore) && now.Before(m.NotAfter) && m.RevokedAt.IsZero()
}

// PublicCertificate is an escrowed certificate without its key: what a
// recipient directory publishes.
type PublicCertificate struct {
	Escrowed
	CertDER []byte
}

// EscrowedKey is one escrowed certificate with its private key in the
// clear. It lives only in memory, for the request that needs it.
type EscrowedKey struct {
	Escrowed
	// CertDER is the certificate.
	CertDER []byte
	// ChainDER holds the other certificates of the imported file.
	ChainDER [][]byte
	// KeyPKCS8 is the private key, PKCS#8 DER.
	KeyPKCS8 []byte
}

// Errors escrow backends return, beside ErrNotFound (a user or certificate
// not in escrow). None says anything secret.
var (
	// ErrUnavailable means the backend (Vault) could not be reached or is
	// sealed; nothing was changed.
	ErrUnavailable = errors.New("policy: the escrow (Vault) is unavailable")
	// ErrTooLarge means the user's entry would pass the backend's size
	// limit.
	ErrTooLarge = errors.New("policy: the user's escrow entry would exceed Vault's size limit")
	// ErrConflict means concurrent writers kept winning the check-and-set.
	ErrConflict = errors.New("policy: too many concurrent changes to the user's escrow; retry")
)
