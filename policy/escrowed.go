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
	SHA1       string    `json:"sha1"`
	SHA256     string    `json:"sha256"`
	Serial     string    `json:"serial"` // hex, upper case
	Issuer     string    `json:"issuer"`
	Subject    string    `json:"subject"`
	Emails     []string  `json:"emails"`
	NotBefore  time.Time `json:"not_before"`
	NotAfter   time.Time `json:"not_after"`
	Purpose    string    `json:"purpose"`
	ImportedAt time.Time `json:"imported_at"`
	ImportedBy string    `json:"imported_by"`
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
