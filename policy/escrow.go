package policy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Audit actions of the escrow.
const (
	ActionEscrowImport = "escrow.import"
	ActionEscrowDelete = "escrow.delete"
	ActionEscrowPurge  = "escrow.purge"
	ActionEscrowRevoke = "escrow.revoke"
)

// EscrowStore is what escrow rules need from the Vault store;
// *escrow.Store implements it.
type EscrowStore interface {
	Put(ctx context.Context, user string, rec EscrowedKey) (Escrowed, bool, error)
	List(ctx context.Context, user string) ([]Escrowed, error)
	Delete(ctx context.Context, user, thumbprint string) (Escrowed, error)
	Purge(ctx context.Context, user string) ([]Escrowed, error)
	MarkRevoked(ctx context.Context, user, thumbprint string, at time.Time, reason string) (Escrowed, bool, error)
}

// ChangeListener hears of every escrow change after it is written: the
// user whose entry changed and the certificates that left it or were
// marked revoked (nil for an import). A recipient directory publisher
// follows escrow with it. It must not block.
type ChangeListener func(user string, removed []Escrowed)

// OnChange adds a listener of escrow changes. Add listeners before the
// Escrow is used.
func (e *Escrow) OnChange(l ChangeListener) { e.listeners = append(e.listeners, l) }

func (e *Escrow) changed(user string, removed []Escrowed) {
	for _, l := range e.listeners {
		l(user, removed)
	}
}

// Escrow applies the import rules and records every escrow change.
type Escrow struct {
	store     EscrowStore
	connector crypto.Decrypter
	hashes    []pfxconnector.PasswordHash // OAEP hashes connector decrypts with
	domains   *Domains
	aliases   map[string]string // alias address → user address
	audit     Auditor
	now       func() time.Time
	listeners []ChangeListener
}

// EscrowOption configures Escrow.
type EscrowOption func(*Escrow)

// WithAliases sets alternative addresses: a certificate naming an alias is
// accepted for the user it maps to (both lower-cased).
func WithAliases(aliases map[string]string) EscrowOption {
	return func(e *Escrow) {
		for a, u := range aliases {
			e.aliases[strings.ToLower(a)] = strings.ToLower(u)
		}
	}
}

// WithEscrowAuditor sets where audit events go.
func WithEscrowAuditor(a Auditor) EscrowOption { return func(e *Escrow) { e.audit = a } }

// WithEscrowClock sets the clock.
func WithEscrowClock(now func() time.Time) EscrowOption { return func(e *Escrow) { e.now = now } }

// NewEscrow returns the escrow rules on store. connector is the RSA key
// admins encrypt PFX passwords to (in memory or a token's); NewEscrow tries
// which OAEP hashes it decrypts with.
func NewEscrow(store EscrowStore, connector crypto.Decrypter, domains *Domains, opts ...EscrowOption) *Escrow {
	e := &Escrow{store: store, connector: connector, hashes: pfxconnector.DecryptableHashes(connector),
		domains: domains, aliases: map[string]string{}, audit: nopAuditor{}, now: time.Now}
	for _, o := range opts {
		o(e)
	}
	return e
}

// ConnectorKey returns the public key PFX passwords may be encrypted to.
func (e *Escrow) ConnectorKey() *rsa.PublicKey { return e.connector.Public().(*rsa.PublicKey) }

// ConnectorHashes returns the OAEP hashes the connector key decrypts with,
// the preferred first.
func (e *Escrow) ConnectorHashes() []string {
	out := make([]string, len(e.hashes))
	for i, h := range e.hashes {
		out[i] = string(h)
	}
	return out
}

// checkHash refuses an OAEP hash the connector key cannot decrypt with,
// saying which it can.
func (e *Escrow) checkHash(h pfxconnector.PasswordHash) error {
	if slices.Contains(e.hashes, h) {
		return nil
	}
	return reject(ReasonWrongPassword, fmt.Sprintf("the connector key's store cannot decrypt RSA-OAEP with %s (it can with: %s); encrypt the password with one of those", h, strings.Join(e.ConnectorHashes(), ", ")))
}

// ImportRequest is one PFX to escrow for a user.
type ImportRequest struct {
	User string
	PFX  []byte
	// Password opens the PFX (plain text over the mutually authenticated
	// channel), or EncryptedPassword does, RSA-OAEP encrypted to the
	// connector key with PasswordHash (SHA256, SHA384, SHA512).
	Password          string
	EncryptedPassword []byte
	PasswordHash      string
	// Purpose is PurposeEncryption (default) or PurposeSigning.
	Purpose string
	// intune is the Intune record the request came from (ImportIntune).
	intune *pfxconnector.IntuneRecord
}

// ImportIntune escrows one record of Intune's PFX import format (Graph's
// userPFXCertificate, see pfxconnector.IntuneRecord) as Import escrows a
// PFX, to the same entry: the user is its userPrincipalName, the password
// is decrypted with the connector key and the record's padding scheme, and
// the PFX's certificate must have the record's thumbprint. Only
// smimeEncryption and unassigned records are escrowed (as encryption
// certificates); smimeSigning, vpn and wifi records are refused by name.
// record is one record's JSON; anything else is refused
// (ReasonBadIntuneRecord) naming the field to fix.
func (e *Escrow) ImportIntune(ctx context.Context, record []byte) (ImportResult, error) {
	recs, err := pfxconnector.ParseIntune(record)
	if err != nil {
		return ImportResult{}, reject(ReasonBadIntuneRecord, err.Error())
	}
	if len(recs) != 1 {
		return ImportResult{}, reject(ReasonBadIntuneRecord, fmt.Sprintf("one userPFXCertificate record per call, not %d", len(recs)))
	}
	rec := recs[0]
	return e.Import(ctx, ImportRequest{User: rec.UserPrincipalName, PFX: rec.PFX, Purpose: PurposeEncryption, intune: &rec})
}

// intunePassword applies an Intune record's rules before its PFX is
// opened: the purpose, and the password decrypted as the module encrypted it.
func (e *Escrow) intunePassword(rec *pfxconnector.IntuneRecord) (string, error) {
	switch rec.IntendedPurpose {
	case "smimeEncryption", "unassigned":
	default:
		return "", reject(ReasonBadPurpose, fmt.Sprintf("the record's intendedPurpose is %s: only smimeEncryption and unassigned records are escrowed (signing keys are born on the device)", rec.IntendedPurpose))
	}
	if h, ok := rec.PasswordHash(); ok {
		if err := e.checkHash(h); err != nil {
			return "", err
		}
	}
	p, err := rec.Password(e.connector)
	if errors.Is(err, pfxconnector.ErrPKCS1Refused) {
		return "", reject(ReasonBadIntuneRecord, err.Error())
	}
	if err != nil {
		return "", reject(ReasonWrongPassword, fmt.Sprintf("encryptedPfxPassword does not decrypt with the connector key and paddingScheme %s: encrypt it to the key GetConnectorKey returns", rec.PaddingScheme))
	}
	return p, nil
}

// ImportResult says what an import did.
type ImportResult struct {
	Metadata Escrowed
	// Duplicate reports that the certificate was escrowed already; nothing
	// changed.
	Duplicate bool
	// Expired reports that the certificate is past its notAfter (accepted:
	// old mail needs it).
	Expired bool
}

// Import checks a PFX against the import rules and escrows it. Every
// refusal is a *RejectError naming the rule; Vault trouble wraps
// ErrUnavailable, and then nothing was written.
func (e *Escrow) Import(ctx context.Context, req ImportRequest) (ImportResult, error) {
	user, err := NormalizeEmail(req.User)
	if err != nil {
		return ImportResult{}, err
	}
	res, err := e.importPFX(ctx, user, req)
	actor := ActorFrom(ctx)
	ev := Event{Time: e.now().UTC(), Actor: actor, Action: ActionEscrowImport, User: user}
	switch {
	case err != nil:
		ev.Result, ev.Detail = "refused", err.Error()
		if _, ok := IsReject(err); !ok {
			ev.Result = "error"
		}
	case res.Duplicate:
		ev.Result, ev.SHA256 = "duplicate", []string{res.Metadata.SHA256}
	default:
		ev.Result, ev.SHA256 = "ok", []string{res.Metadata.SHA256}
		ev.Serials = []string{res.Metadata.Serial}
	}
	e.audit.Audit(ctx, ev)
	if err == nil && !res.Duplicate {
		e.changed(user, nil)
	}
	return res, err
}

func (e *Escrow) importPFX(ctx context.Context, user string, req ImportRequest) (ImportResult, error) {
	if err := e.domains.Check(user); err != nil {
		return ImportResult{}, err
	}
	purpose := req.Purpose
	switch purpose {
	case "":
		purpose = PurposeEncryption
	case PurposeEncryption, PurposeSigning:
	default:
		return ImportResult{}, reject(ReasonBadPurpose, fmt.Sprintf("purpose %q is not %s or %s", purpose, PurposeEncryption, PurposeSigning))
	}
	password := req.Password
	if req.intune != nil {
		p, err := e.intunePassword(req.intune)
		if err != nil {
			return ImportResult{}, err
		}
		password = p
	} else if len(req.EncryptedPassword) > 0 {
		if req.Password != "" {
			return ImportResult{}, reject(ReasonWrongPassword, "give the password either in plain text or encrypted, not both")
		}
		h, err := pfxconnector.ParsePasswordHash(req.PasswordHash)
		if err != nil {
			return ImportResult{}, reject(ReasonWrongPassword, err.Error())
		}
		if err := e.checkHash(h); err != nil {
			return ImportResult{}, err
		}
		p, err := pfxconnector.DecryptPassword(e.connector, req.EncryptedPassword, h)
		if err != nil {
			return ImportResult{}, reject(ReasonWrongPassword, err.Error())
		}
		password = p
	}
	d, err := pfxconnector.Decode(req.PFX, password)
	switch {
	case errors.Is(err, pfxconnector.ErrWrongPassword):
		return ImportResult{}, reject(ReasonWrongPassword, "the password does not open this PFX")
	case errors.Is(err, pfxconnector.ErrNoKey):
		return ImportResult{}, reject(ReasonNoKey, "the PFX holds only a certificate; export it with its private key")
	case err != nil:
		return ImportResult{}, reject(ReasonBadPFX, err.Error())
	}
	now := e.now()
	if req.intune != nil {
		if sum := sha1.Sum(d.Cert.Raw); hex.EncodeToString(sum[:]) != req.intune.Thumbprint {
			return ImportResult{}, reject(ReasonBadThumbprint, fmt.Sprintf("the record's thumbprint %s is not the SHA-1 of the PFX's certificate (%x)", req.intune.Thumbprint, sum))
		}
	}
	if err := e.checkImport(user, purpose, d); err != nil {
		return ImportResult{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(d.Key)
	if err != nil {
		return ImportResult{}, reject(ReasonBadPFX, "the private key cannot be re-encoded as PKCS#8")
	}
	meta := CertificateMetadata(d.Cert)
	meta.Purpose = purpose
	meta.ImportedAt = now.UTC()
	meta.ImportedBy = ActorFrom(ctx).Name
	rec := EscrowedKey{Escrowed: meta, CertDER: d.Cert.Raw, KeyPKCS8: keyDER}
	for _, c := range d.Chain {
		rec.ChainDER = append(rec.ChainDER, c.Raw)
	}
	stored, dup, err := e.store.Put(ctx, user, rec)
	clear(keyDER)
	if errors.Is(err, ErrTooLarge) {
		return ImportResult{}, reject(ReasonEntryFull, err.Error())
	}
	if err != nil {
		return ImportResult{}, fmt.Errorf("policy: escrow: %w", err)
	}
	return ImportResult{Metadata: stored, Duplicate: dup, Expired: now.After(d.Cert.NotAfter)}, nil
}

// checkImport applies the import rules to a decoded PFX.
func (e *Escrow) checkImport(user, purpose string, d *pfxconnector.Decoded) error {
	c := d.Cert
	if !d.KeyMatches {
		return reject(ReasonKeyMismatch, "the private key in the PFX does not belong to its certificate")
	}
	if c.IsCA || c.KeyUsage&x509.KeyUsageCertSign != 0 {
		return reject(ReasonCACertificate, "the certificate is a CA certificate, not a user's S/MIME certificate")
	}
	if len(c.ExtKeyUsage) > 0 && !hasEKU(c, x509.ExtKeyUsageEmailProtection) && !hasEKU(c, x509.ExtKeyUsageAny) {
		return reject(ReasonCannotEncrypt, "the certificate's extended key usage does not include emailProtection")
	}
	if purpose == PurposeEncryption && c.KeyUsage != 0 {
		switch d.Key.(type) {
		case *rsa.PrivateKey:
			if c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
				return reject(ReasonCannotEncrypt, "the RSA certificate's key usage lacks keyEncipherment, so mail cannot be encrypted to it")
			}
		case *ecdsa.PrivateKey:
			if c.KeyUsage&x509.KeyUsageKeyAgreement == 0 {
				return reject(ReasonCannotEncrypt, "the EC certificate's key usage lacks keyAgreement, so mail cannot be encrypted to it")
			}
		default:
			return reject(ReasonCannotEncrypt, "only RSA and EC keys can decrypt S/MIME mail")
		}
	}
	if purpose == PurposeSigning && c.KeyUsage != 0 && c.KeyUsage&(x509.KeyUsageDigitalSignature|x509.KeyUsageContentCommitment) == 0 {
		return reject(ReasonCannotEncrypt, "the certificate's key usage does not allow signing")
	}
	emails := certificateEmails(c)
	for _, a := range emails {
		a = strings.ToLower(a)
		if a == user || e.aliases[a] == user {
			return nil
		}
	}
	return reject(ReasonUserMismatch, fmt.Sprintf("the certificate is for %s, not for %s (or a configured alias)", strings.Join(emails, ", "), user))
}

func hasEKU(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	for _, e := range c.ExtKeyUsage {
		if e == u {
			return true
		}
	}
	return false
}

// certificateEmails returns the rfc822Names and subject emailAddress values.
func certificateEmails(c *x509.Certificate) []string {
	out := append([]string{}, c.EmailAddresses...)
	for _, atv := range c.Subject.Names {
		if atv.Type.Equal(oidEmailAddress) {
			if s, ok := atv.Value.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// CertificateMetadata returns the escrow metadata of a certificate.
func CertificateMetadata(c *x509.Certificate) Escrowed {
	s1 := sha1.Sum(c.Raw)
	s256 := sha256.Sum256(c.Raw)
	emails := certificateEmails(c)
	for i := range emails {
		emails[i] = strings.ToLower(emails[i])
	}
	return Escrowed{
		SHA1: hex.EncodeToString(s1[:]), SHA256: hex.EncodeToString(s256[:]),
		Serial: strings.ToUpper(c.SerialNumber.Text(16)), Issuer: c.Issuer.String(), Subject: c.Subject.String(),
		AuthorityKeyID: hex.EncodeToString(c.AuthorityKeyId),
		Emails:         emails, NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
	}
}

// List returns the user's escrowed certificates' metadata.
func (e *Escrow) List(ctx context.Context, user string) ([]Escrowed, error) {
	u, err := NormalizeEmail(user)
	if err != nil {
		return nil, err
	}
	list, err := e.store.List(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("policy: escrow list: %w", err)
	}
	return list, nil
}

// Delete removes one escrowed certificate by SHA-256 or SHA-1 thumbprint.
func (e *Escrow) Delete(ctx context.Context, user, thumbprint string) (Escrowed, error) {
	u, err := NormalizeEmail(user)
	if err != nil {
		return Escrowed{}, err
	}
	t, err := parseThumbprint(thumbprint)
	if err != nil {
		return Escrowed{}, err
	}
	m, err := e.store.Delete(ctx, u, t)
	ev := Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: ActionEscrowDelete, User: u}
	return e.changedOne(ctx, ev, thumbprint, m, err)
}

// changedOne audits the outcome of a change of one escrowed certificate m
// (named by thumbprint) that the store reported with err, and tells the
// listeners of a change that took place.
func (e *Escrow) changedOne(ctx context.Context, ev Event, thumbprint string, m Escrowed, err error) (Escrowed, error) {
	switch {
	case errors.Is(err, ErrNotFound):
		ev.Result, ev.Detail = "refused", "not escrowed"
		e.audit.Audit(ctx, ev)
		return Escrowed{}, reject(ReasonNotEscrowed, fmt.Sprintf("no certificate %s is escrowed for %s", thumbprint, ev.User))
	case err != nil:
		ev.Result, ev.Detail = "error", err.Error()
		e.audit.Audit(ctx, ev)
		return Escrowed{}, fmt.Errorf("policy: %s: %w", strings.ReplaceAll(ev.Action, ".", " "), err) // "escrow delete", "escrow revoke"
	}
	ev.Result, ev.SHA256, ev.Serials = "ok", []string{m.SHA256}, []string{m.Serial}
	e.audit.Audit(ctx, ev)
	e.changed(ev.User, []Escrowed{m})
	return m, nil
}

// Revoke records that an escrowed certificate was revoked by its CA (the
// certificate is named by its SHA-1 or SHA-256 thumbprint): its key stays
// in escrow, since old mail needs it, but it is no longer any bundle's
// current certificate and no longer published as a recipient
// certificate. A second revocation of it is refused (already-revoked).
func (e *Escrow) Revoke(ctx context.Context, user, thumbprint, reason string) (Escrowed, error) {
	if err := CheckText("the reason", reason); err != nil {
		return Escrowed{}, err
	}
	u, err := NormalizeEmail(user)
	if err != nil {
		return Escrowed{}, err
	}
	t, err := parseThumbprint(thumbprint)
	if err != nil {
		return Escrowed{}, err
	}
	m, revoked, err := e.store.MarkRevoked(ctx, u, t, e.now(), reason)
	ev := Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: ActionEscrowRevoke, User: u, Detail: reason}
	if err == nil && !revoked {
		ev.Result, ev.Detail, ev.SHA256 = "refused", "already revoked", []string{m.SHA256}
		e.audit.Audit(ctx, ev)
		return m, reject(ReasonAlreadyRevoked, fmt.Sprintf("certificate %s of %s was marked revoked already, at %s", m.SHA256, u, m.RevokedAt.Format(time.RFC3339)))
	}
	return e.changedOne(ctx, ev, thumbprint, m, err)
}

// parseThumbprint normalises a SHA-1 or SHA-256 thumbprint (hex, colons
// allowed) to lower-case hex, or refuses it (ReasonBadThumbprint).
func parseThumbprint(thumbprint string) (string, error) {
	t := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(thumbprint), ":", ""))
	if _, err := hex.DecodeString(t); err != nil || (len(t) != 40 && len(t) != 64) {
		return "", reject(ReasonBadThumbprint, fmt.Sprintf("%q is not a SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint", thumbprint))
	}
	return t, nil
}

// Purge removes every escrowed certificate of the user.
func (e *Escrow) Purge(ctx context.Context, user string) ([]Escrowed, error) {
	u, err := NormalizeEmail(user)
	if err != nil {
		return nil, err
	}
	list, err := e.store.Purge(ctx, u)
	ev := Event{Time: e.now().UTC(), Actor: ActorFrom(ctx), Action: ActionEscrowPurge, User: u}
	if err != nil {
		ev.Result, ev.Detail = "error", err.Error()
		e.audit.Audit(ctx, ev)
		return nil, fmt.Errorf("policy: escrow purge: %w", err)
	}
	ev.Result = "ok"
	for _, m := range list {
		ev.SHA256 = append(ev.SHA256, m.SHA256)
	}
	e.audit.Audit(ctx, ev)
	e.changed(u, list)
	return list, nil
}
