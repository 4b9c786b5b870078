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
	"sync"
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
	// PutCredentialSerial stores c under its serial only (a revocation of
	// a credential that may not be its name's current one).
	PutCredentialSerial(ctx context.Context, c Credential) error
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

// CredentialCheckTTL is how long a credential found valid is trusted
// without reading the registry again: a revocation on another node takes
// effect within it (on this node at once).
const CredentialCheckTTL = 5 * time.Second

// Credentials issues, revokes and checks API credentials.
type Credentials struct {
	store  CredentialStore
	signer ClientSigner
	roles  map[string]string // role → URI SAN that carries it
	audit  Auditor
	now    func() time.Time
	// checked caches valid credentials by serial (checkedCredential) for
	// CredentialCheckTTL, so that a TLS handshake and the calls on its
	// connection read the registry once.
	checked sync.Map
}

type checkedCredential struct {
	cred Credential
	at   time.Time
}

// Audit actions of credentials.
const (
	ActionCredentialIssue  = "credential.issue"
	ActionCredentialRevoke = "credential.revoke"
)

// CredentialOption configures Credentials.
type CredentialOption func(*Credentials)

// WithCredentialClock sets the clock (default time.Now).
func WithCredentialClock(now func() time.Time) CredentialOption {
	return func(c *Credentials) { c.now = now }
}

// NewCredentials returns the credential rules. roles maps each role name to
// the URI its certificates carry.
func NewCredentials(store CredentialStore, signer ClientSigner, roles map[string]string, audit Auditor, opts ...CredentialOption) *Credentials {
	if audit == nil {
		audit = nopAuditor{}
	}
	c := &Credentials{store: store, signer: signer, roles: roles, audit: audit, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	return c
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
	system := WithActor(ctx, Actor{Role: "system", Name: "smimeca serve"})
	if cur, err := c.store.CredentialByName(ctx, name); err == nil && cur.Revoked() {
		return nil
	}
	// The renewed file replaces its predecessor: every live serial of the
	// name is revoked before the new one is registered.
	if _, err := c.revokeLive(system, name, "renewed by smimeca serve"); err != nil && !errors.Is(err, errNoneLive) {
		return fmt.Errorf("policy: revoke the predecessor of bootstrap credential %s: %w", name, err)
	}
	cred := credentialOf(name, role, crt, "smimeca serve (bootstrap)", c.now())
	if err := c.store.PutCredential(ctx, cred); err != nil {
		return fmt.Errorf("policy: register bootstrap credential %s: %w", name, err)
	}
	c.audit.Audit(ctx, Event{Time: c.now().UTC(), Actor: Actor{Role: "system", Name: "smimeca serve"}, Action: ActionCredentialIssue,
		Serials: []string{cred.Serial}, SHA256: []string{cred.SHA256}, Result: "ok", Detail: "bootstrap credential " + name + " role " + role})
	return nil
}

var errNoneLive = errors.New("policy: no live credential")

// Revoke revokes every live (unrevoked, unexpired) credential of the name:
// the current one and any predecessor still valid. It returns them.
func (c *Credentials) Revoke(ctx context.Context, name string) ([]Credential, error) {
	revoked, err := c.revokeLive(ctx, name, "")
	if errors.Is(err, errNoneLive) {
		cur, err := c.store.CredentialByName(ctx, name)
		if errors.Is(err, ErrNotFound) {
			return nil, reject(ReasonUnknownCredential, fmt.Sprintf("no credential is named %q (smimeca credentials list)", name))
		} else if err != nil {
			return nil, err
		}
		return nil, reject(ReasonAlreadyRevoked, fmt.Sprintf("credential %q has no live serial (revoked at %s)", name, cur.RevokedAt.Format(time.RFC3339)))
	}
	return revoked, err
}

// revokeLive revokes every live credential of the name, or returns
// errNoneLive.
func (c *Credentials) revokeLive(ctx context.Context, name, why string) ([]Credential, error) {
	all, err := c.store.ListCredentials(ctx)
	if err != nil {
		return nil, err
	}
	now := c.now()
	var out []Credential
	for _, cred := range all {
		if cred.Name != name || cred.Revoked() || !now.Before(cred.ExpiresAt) {
			continue
		}
		r, err := c.revoke(ctx, cred, why)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, errNoneLive
	}
	return out, nil
}

// RevokeSerial revokes the credential with the serial (hex, as listed).
func (c *Credentials) RevokeSerial(ctx context.Context, serial string) (Credential, error) {
	s := strings.ToLower(strings.TrimPrefix(strings.ReplaceAll(strings.TrimSpace(serial), ":", ""), "0x"))
	cur, err := c.store.CredentialBySerial(ctx, strings.TrimLeft(s, "0"))
	if errors.Is(err, ErrNotFound) {
		return Credential{}, reject(ReasonUnknownCredential, fmt.Sprintf("no credential has serial %q (smimeca credentials list)", serial))
	} else if err != nil {
		return Credential{}, err
	}
	if cur.Revoked() {
		return Credential{}, reject(ReasonAlreadyRevoked, fmt.Sprintf("credential %s (%s) was revoked at %s", cur.Serial, cur.Name, cur.RevokedAt.Format(time.RFC3339)))
	}
	return c.revoke(ctx, cur, "")
}

func (c *Credentials) revoke(ctx context.Context, cur Credential, why string) (Credential, error) {
	cur.RevokedAt, cur.RevokedBy = c.now().UTC(), ActorFrom(ctx).Name
	if err := c.store.PutCredentialSerial(ctx, cur); err != nil {
		return Credential{}, fmt.Errorf("policy: revoke credential: %w", err)
	}
	c.checked.Delete(cur.Serial)
	detail := "credential " + cur.Name
	if why != "" {
		detail += ": " + why
	}
	c.audit.Audit(ctx, Event{Time: cur.RevokedAt, Actor: ActorFrom(ctx), Action: ActionCredentialRevoke, Serials: []string{cur.Serial},
		SHA256: []string{cur.SHA256}, Result: "ok", Detail: detail})
	return cur, nil
}

// List returns every credential.
func (c *Credentials) List(ctx context.Context) ([]Credential, error) {
	return c.store.ListCredentials(ctx)
}

// Check returns the registered credential of a client certificate, or
// ErrUnknownCredential / ErrRevokedCredential. A credential found valid is
// trusted for CredentialCheckTTL without reading the registry again.
func (c *Credentials) Check(ctx context.Context, crt *x509.Certificate) (Credential, error) {
	serial := Serial(crt)
	sum := sha256.Sum256(crt.Raw)
	if v, ok := c.checked.Load(serial); ok {
		cc := v.(checkedCredential)
		if c.now().Sub(cc.at) < CredentialCheckTTL && cc.cred.SHA256 == hex.EncodeToString(sum[:]) {
			return cc.cred, nil
		}
		c.checked.Delete(serial)
	}
	cred, err := c.checkStored(ctx, crt, serial, sum)
	if err == nil {
		c.checked.Store(serial, checkedCredential{cred: cred, at: c.now()})
	}
	return cred, err
}

func (c *Credentials) checkStored(ctx context.Context, crt *x509.Certificate, serial string, sum [32]byte) (Credential, error) {
	cred, err := c.store.CredentialBySerial(ctx, serial)
	if errors.Is(err, ErrNotFound) {
		return Credential{}, ErrUnknownCredential
	} else if err != nil {
		return Credential{}, fmt.Errorf("policy: read credential: %w", err)
	}
	if cred.SHA256 != hex.EncodeToString(sum[:]) {
		return Credential{}, ErrUnknownCredential
	}
	if cred.Revoked() {
		return Credential{}, ErrRevokedCredential
	}
	return cred, nil
}
