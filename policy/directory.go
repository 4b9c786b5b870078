package policy

import (
	"context"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"time"
)

// RecipientSource is what the recipient directory reads: each user's
// escrowed certificates without keys. *escrow.Store implements it.
type RecipientSource interface {
	Certificates(ctx context.Context, user string) ([]PublicCertificate, error)
}

// Directory defaults.
const (
	// DefaultDirectoryTTL is how long a lookup's answer is reused. Changes
	// made through this process invalidate it at once.
	DefaultDirectoryTTL = time.Minute
	// directoryCacheEntries bounds the cached answers (also for addresses
	// that have none, so that anonymous lookups of made-up addresses cost
	// one escrow read per address and TTL at most).
	directoryCacheEntries = 10000
)

// Directory answers "which certificates may I encrypt mail to this
// address with": a user's escrowed encryption certificates that are valid
// now, not marked revoked, and name the address — public parts only. It
// is what a recipient directory (LDAP, a publisher) serves. Answers are
// cached per address for a TTL and dropped when the user's escrow changes
// here (Invalidate is a ChangeListener).
type Directory struct {
	src     RecipientSource
	aliases map[string]string
	ttl     time.Duration
	now     func() time.Time
	domains *Domains

	mu    sync.Mutex
	cache map[string]dirEntry
	// escrowed, once loaded (LoadIndex), holds every user with an escrow
	// entry: an address whose user is not in it is answered "none"
	// without reading the escrow. Escrow changes here add to it
	// (Invalidate); LoadIndex again picks up other nodes' imports.
	escrowed map[string]bool
}

// UserLister lists the users that have an escrow entry; *escrow.Store
// implements it.
type UserLister interface {
	Users(ctx context.Context) ([]string, error)
}

// DirectoryOption configures a Directory.
type DirectoryOption func(*Directory)

// WithDirectoryDomains answers "none" for any address outside domains
// without reading the escrow.
func WithDirectoryDomains(d *Domains) DirectoryOption {
	return func(dir *Directory) { dir.domains = d }
}

type dirEntry struct {
	user    string
	certs   []*x509.Certificate
	expires time.Time
}

// NewDirectory returns the directory over src. aliases maps alias
// addresses to users (as the escrow's); ttl 0 is DefaultDirectoryTTL.
func NewDirectory(src RecipientSource, aliases map[string]string, ttl time.Duration, opts ...DirectoryOption) *Directory {
	if ttl <= 0 {
		ttl = DefaultDirectoryTTL
	}
	d := &Directory{src: src, aliases: aliases, ttl: ttl, now: time.Now, cache: map[string]dirEntry{}}
	for _, o := range opts {
		o(d)
	}
	return d
}

// LoadIndex (re)loads the set of users that have an escrow entry from l:
// from then on a lookup of anyone else is answered without reading the
// escrow. Call it at start and periodically where several nodes import.
func (d *Directory) LoadIndex(ctx context.Context, l UserLister) (int, error) {
	users, err := l.Users(ctx)
	if err != nil {
		return 0, err
	}
	idx := make(map[string]bool, len(users))
	for _, u := range users {
		idx[strings.ToLower(u)] = true
	}
	d.mu.Lock()
	// Users added here since the listing began stay in (so do purged ones
	// until a restart: a user wrongly in the index costs one escrow read).
	for u := range d.escrowed {
		idx[u] = true
	}
	d.escrowed = idx
	d.mu.Unlock()
	return len(idx), nil
}

// Recipients returns the certificates mail to address may be encrypted
// to now, newest first; none for an address that is not an e-mail address
// or has none. An error means the escrow could not be read.
func (d *Directory) Recipients(ctx context.Context, address string) ([]*x509.Certificate, error) {
	addr, err := NormalizeEmail(address)
	if err != nil {
		return nil, nil
	}
	if d.domains != nil && d.domains.Check(addr) != nil {
		return nil, nil
	}
	now := d.now()
	d.mu.Lock()
	e, ok := d.cache[addr]
	d.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.certs, nil
	}
	user := addr
	if u, ok := d.aliases[addr]; ok {
		user = u
	}
	d.mu.Lock()
	unknown := d.escrowed != nil && !d.escrowed[user]
	d.mu.Unlock()
	if unknown {
		return nil, nil
	}
	certs, err := d.lookup(ctx, user, addr, now)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	if len(d.cache) >= directoryCacheEntries {
		for k := range d.cache {
			delete(d.cache, k)
			break
		}
	}
	d.cache[addr] = dirEntry{user: user, certs: certs, expires: now.Add(d.ttl)}
	d.mu.Unlock()
	return certs, nil
}

// lookup reads user's escrow and keeps the certificates that may be
// encrypted to at now and name addr.
func (d *Directory) lookup(ctx context.Context, user, addr string, now time.Time) ([]*x509.Certificate, error) {
	list, err := d.src.Certificates(ctx, user)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, pc := range list {
		if !pc.CanEncrypt(now) {
			continue
		}
		c, err := x509.ParseCertificate(pc.CertDER)
		if err != nil {
			continue
		}
		if names(c, addr) {
			out = append(out, c)
		}
	}
	return out, nil
}

// names reports whether the certificate names the address.
func names(c *x509.Certificate, addr string) bool {
	for _, a := range certificateEmails(c) {
		if strings.EqualFold(a, addr) {
			return true
		}
	}
	return false
}

// Invalidate drops the cached answers of user's addresses. It is a
// ChangeListener.
func (d *Directory) Invalidate(user string, _ []Escrowed) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.escrowed != nil {
		d.escrowed[user] = true
	}
	for k, e := range d.cache {
		if e.user == user {
			delete(d.cache, k)
		}
	}
}
