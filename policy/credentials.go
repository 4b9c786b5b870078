package policy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Credential is one API client identity: a named client certificate with
// its role. Every API call is checked against it, so a revoked credential
// is refused from the next call on.
type Credential struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// Serial is the certificate's serial, lower-case hex.
	Serial    string    `json:"serial"`
	SHA256    string    `json:"sha256"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
	IssuedBy  string    `json:"issued_by,omitempty"`
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	RevokedBy string    `json:"revoked_by,omitempty"`
}

// Revoked reports whether the credential was revoked.
func (c Credential) Revoked() bool { return !c.RevokedAt.IsZero() }

// CredentialStore keeps credentials by serial, with the current serial of
// each name.
type CredentialStore interface {
	// PutCredential stores c and makes it the name's current credential.
	PutCredential(ctx context.Context, c Credential) error
	// CredentialBySerial returns the credential with the serial, or
	// ErrNotFound.
	CredentialBySerial(ctx context.Context, serial string) (Credential, error)
	// CredentialByName returns the name's current credential, or
	// ErrNotFound.
	CredentialByName(ctx context.Context, name string) (Credential, error)
	// ListCredentials returns every credential, by name then issue time.
	ListCredentials(ctx context.Context) ([]Credential, error)
}

// ClientSigner issues API client certificates; *ca.APIPKI implements it.
type ClientSigner interface {
	SignClient(csr *x509.CertificateRequest, name, roleURI string, lifetime time.Duration) (*x509.Certificate, error)
}

// Errors of Credentials.Check: the API answers both as unauthenticated.
var (
	ErrUnknownCredential = errors.New("policy: the client certificate is not a registered credential")
	ErrRevokedCredential = errors.New("policy: the client credential was revoked")
)

// Credential lifetimes.
const (
	DefaultCredentialTTL = 90 * 24 * time.Hour
	MaxCredentialTTL     = 2 * 365 * 24 * time.Hour
)

var credentialName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Credentials issues, revokes and checks API credentials.
type Credentials struct {
	store  CredentialStore
	signer ClientSigner
	roles  map[string]string // role → URI SAN that carries it
	audit  Auditor
	now    func() time.Time
}

// Audit actions of credentials.
const (
	ActionCredentialIssue  = "credential.issue"
	ActionCredentialRevoke = "credential.revoke"
)

// NewCredentials returns the credential rules. roles maps each role name to
// the URI its certificates carry.
func NewCredentials(store CredentialStore, signer ClientSigner, roles map[string]string, audit Auditor) *Credentials {
	if audit == nil {
		audit = nopAuditor{}
	}
	return &Credentials{store: store, signer: signer, roles: roles, audit: audit, now: time.Now}
}

// Serial returns the credential serial form of a certificate's serial.
func Serial(c *x509.Certificate) string { return strings.ToLower(c.SerialNumber.Text(16)) }

func credentialOf(name, role string, c *x509.Certificate, by string, now time.Time) Credential {
	sum := sha256.Sum256(c.Raw)
	return Credential{Name: name, Role: role, Serial: Serial(c), SHA256: hex.EncodeToString(sum[:]),
		IssuedAt: now.UTC(), ExpiresAt: c.NotAfter.UTC(), IssuedBy: by}
}

// Issue signs csr as the credential name with role for ttl (0: 90 days).
// The key stays with the caller. A name is unique while its credential is
// valid: revoke it (or let it expire) before issuing the name again.
func (c *Credentials) Issue(ctx context.Context, name, role string, ttl time.Duration, csr *x509.CertificateRequest) (Credential, *x509.Certificate, error) {
	uri, ok := c.roles[role]
	switch {
	case !credentialName.MatchString(name):
		return Credential{}, nil, reject(ReasonBadCredential, fmt.Sprintf("credential name %q: 1 to 64 letters, digits, '.', '_' or '-'", name))
	case !ok:
		return Credential{}, nil, reject(ReasonBadCredential, fmt.Sprintf("role %q is not one of admin, registrar, profile", role))
	case ttl == 0:
		ttl = DefaultCredentialTTL
	}
	if ttl < time.Hour || ttl > MaxCredentialTTL {
		return Credential{}, nil, reject(ReasonBadCredential, fmt.Sprintf("ttl %s is outside 1h..%s", ttl, MaxCredentialTTL))
	}
	if err := checkCredentialCSR(csr); err != nil {
		return Credential{}, nil, err
	}
	now := c.now()
	if cur, err := c.store.CredentialByName(ctx, name); err == nil && !cur.Revoked() && now.Before(cur.ExpiresAt) {
		return Credential{}, nil, reject(ReasonCredentialExists, fmt.Sprintf("credential %q is valid until %s; revoke it first (smimeca credentials revoke --name %s)", name, cur.ExpiresAt.Format(time.RFC3339), name))
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return Credential{}, nil, err
	}
	crt, err := c.signer.SignClient(csr, name, uri, ttl)
	if err != nil {
		return Credential{}, nil, fmt.Errorf("policy: sign credential: %w", err)
	}
	cred := credentialOf(name, role, crt, ActorFrom(ctx).Name, now)
	if err := c.store.PutCredential(ctx, cred); err != nil {
		return Credential{}, nil, fmt.Errorf("policy: store credential: %w", err)
	}
	c.audit.Audit(ctx, Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: ActionCredentialIssue, Serials: []string{cred.Serial},
		SHA256: []string{cred.SHA256}, Result: "ok", Detail: "credential " + name + " role " + role})
	return cred, crt, nil
}

func checkCredentialCSR(csr *x509.CertificateRequest) error {
	if csr == nil {
		return reject(ReasonBadCredential, "a CSR (PKCS#10, DER) signed by the credential's key is required")
	}
	// The key's bounds first (CheckPublicKey: size and exponent), then
	// the signature, so that a hostile key costs no verification.
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return reject(ReasonBadCredential, "EC credential keys must be P-256 or P-384")
		}
	case *rsa.PublicKey:
		if err := CheckPublicKey(k); err != nil || k.N.BitLen() < 2048 {
			return reject(ReasonBadCredential, fmt.Sprintf("RSA credential keys must have 2048 to %d bits and exponent 65537", MaxRSABits))
		}
	default:
		return reject(ReasonBadCredential, "credential keys must be EC (P-256, P-384) or RSA")
	}
	if csr.CheckSignature() != nil {
		return reject(ReasonBadCredential, "a CSR (PKCS#10, DER) signed by the credential's key is required")
	}
	return nil
}

// Bootstrap registers a credential the server created itself (the admin
// and profile credentials of the first start) unless its name's credential
// was revoked: a revoked bootstrap credential stays revoked, and the file
// the server renews for it is then not accepted either.
func (c *Credentials) Bootstrap(ctx context.Context, name, role string, crt *x509.Certificate) error {
	if _, err := c.store.CredentialBySerial(ctx, Serial(crt)); err == nil {
		return nil
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	if cur, err := c.store.CredentialByName(ctx, name); err == nil && cur.Revoked() {
		return nil
	}
	cred := credentialOf(name, role, crt, "smimeca serve (bootstrap)", c.now())
	if err := c.store.PutCredential(ctx, cred); err != nil {
		return fmt.Errorf("policy: register bootstrap credential %s: %w", name, err)
	}
	c.audit.Audit(ctx, Event{Time: c.now().UTC(), Actor: Actor{Role: "system", Name: "smimeca serve"}, Action: ActionCredentialIssue,
		Serials: []string{cred.Serial}, SHA256: []string{cred.SHA256}, Result: "ok", Detail: "bootstrap credential " + name + " role " + role})
	return nil
}

// Revoke revokes the name's current credential.
func (c *Credentials) Revoke(ctx context.Context, name string) (Credential, error) {
	cur, err := c.store.CredentialByName(ctx, name)
	if errors.Is(err, ErrNotFound) {
		return Credential{}, reject(ReasonUnknownCredential, fmt.Sprintf("no credential is named %q (smimeca credentials list)", name))
	} else if err != nil {
		return Credential{}, err
	}
	if cur.Revoked() {
		return Credential{}, reject(ReasonAlreadyRevoked, fmt.Sprintf("credential %q was revoked at %s", name, cur.RevokedAt.Format(time.RFC3339)))
	}
	cur.RevokedAt, cur.RevokedBy = c.now().UTC(), ActorFrom(ctx).Name
	if err := c.store.PutCredential(ctx, cur); err != nil {
		return Credential{}, fmt.Errorf("policy: revoke credential: %w", err)
	}
	c.audit.Audit(ctx, Event{Time: cur.RevokedAt, Actor: ActorFrom(ctx), Action: ActionCredentialRevoke, Serials: []string{cur.Serial},
		SHA256: []string{cur.SHA256}, Result: "ok", Detail: "credential " + name})
	return cur, nil
}

// List returns every credential.
func (c *Credentials) List(ctx context.Context) ([]Credential, error) {
	return c.store.ListCredentials(ctx)
}

// Check returns the registered credential of a client certificate, or
// ErrUnknownCredential / ErrRevokedCredential.
func (c *Credentials) Check(ctx context.Context, crt *x509.Certificate) (Credential, error) {
	cred, err := c.store.CredentialBySerial(ctx, Serial(crt))
	if errors.Is(err, ErrNotFound) {
		return Credential{}, ErrUnknownCredential
	} else if err != nil {
		return Credential{}, fmt.Errorf("policy: read credential: %w", err)
	}
	sum := sha256.Sum256(crt.Raw)
	if cred.SHA256 != hex.EncodeToString(sum[:]) {
		return Credential{}, ErrUnknownCredential
	}
	if cred.Revoked() {
		return Credential{}, ErrRevokedCredential
	}
	return cred, nil
}
