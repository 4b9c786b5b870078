// Package publish keeps users' recipient certificates — the public part of
// their current escrowed encryption certificates — in an existing
// directory (OpenLDAP, Active Directory) with go-ldap: an outbound
// publisher that follows the escrow's changes. The built-in LDAP endpoint
// that answers lookups is package directory.
package publish

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"

	"github.com/smimeca/smimeca/policy"
)

// EscrowReader is what the publisher reads: every escrowed certificate of
// a user (public parts) and the users that have any. *escrow.Store
// implements it.
type EscrowReader interface {
	Certificates(ctx context.Context, user string) ([]policy.PublicCertificate, error)
	Users(ctx context.Context) ([]string, error)
}

// Publisher defaults.
const (
	DefaultFilter    = "(mail=%s)"
	DefaultAttribute = "userCertificate;binary"
	DefaultRetryMax  = 5 * time.Minute
	retryMin         = 500 * time.Millisecond
	publishTimeout   = 30 * time.Second
	// maxLDAPMessage bounds every LDAP message this process reads (the
	// BER library's default is 2 GiB, allocated as announced).
	maxLDAPMessage = 256 << 10
)

// Config says where and how to publish.
type Config struct {
	// URL of the directory: ldap://host:port or ldaps://host:port.
	URL string
	// BindDN and Password of an account that may modify the attribute of
	// users' entries.
	BindDN   string
	Password string
	// BaseDN under which users' entries are searched.
	BaseDN string
	// Filter finds a user's entry; %s is the user's address, escaped
	// (DefaultFilter).
	Filter string
	// Attribute holds the certificates (DefaultAttribute; Active
	// Directory: userCertificate).
	Attribute string
	// Issuers are CA certificates whose certificates in the attribute are
	// smimeca's to manage even when no escrowed certificate names them.
	Issuers []*x509.Certificate
	// RetryMax caps the back-off of a failed publication (DefaultRetryMax).
	RetryMax time.Duration
}

// Publisher keeps the certificate attribute of users' entries in an
// existing directory equal to their current escrowed encryption
// certificates: on every escrow change (Notify, a policy.ChangeListener) it
// adds the missing ones and removes those that are no longer current
// (deleted, revoked, expired) — only values issued by a known issuer (one
// that issued any of the user's escrowed certificates, or is configured),
// never the others. Entries are found, never created. A failure is
// retried with exponential back-off until it succeeds; SyncAll reconciles
// every user (on start, and with `smimeca directory sync`).
type Publisher struct {
	cfg Config
	src EscrowReader
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	pending map[string]*pendingUser
	wake    chan struct{}
}

type pendingUser struct {
	issuers []issuer // issuers of certificates that left escrow
	due     time.Time
	delay   time.Duration
	gen     int // bumped by every Notify
}

// SyncReport counts what a publication did.
type SyncReport struct {
	Users, Added, Removed, Missing, Failed int
}

// New returns a publisher; Run starts its worker.
func New(cfg Config, src EscrowReader, log *slog.Logger) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ber.MaxPacketLengthBytes = maxLDAPMessage
	return &Publisher{cfg: cfg, src: src, log: log, now: time.Now, pending: map[string]*pendingUser{}, wake: make(chan struct{}, 1)}, nil
}

// Validate fills the defaults and checks the URL, the filter and the base
// DN, naming what to fix.
func (cfg *Config) Validate() error {
	if cfg.Filter == "" {
		cfg.Filter = DefaultFilter
	}
	if cfg.Attribute == "" {
		cfg.Attribute = DefaultAttribute
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	switch {
	case !strings.HasPrefix(cfg.URL, "ldap://") && !strings.HasPrefix(cfg.URL, "ldaps://"):
		return fmt.Errorf("publish: URL %q is not ldap:// or ldaps://", cfg.URL)
	case strings.Count(cfg.Filter, "%s") != 1:
		return fmt.Errorf("publish: filter %q must hold one %%s (the address)", cfg.Filter)
	}
	if _, err := ldap.CompileFilter(fmt.Sprintf(cfg.Filter, "a@example.com")); err != nil {
		return fmt.Errorf("publish: filter %q: %w", cfg.Filter, err)
	}
	if _, err := ldap.ParseDN(cfg.BaseDN); err != nil || cfg.BaseDN == "" {
		return fmt.Errorf("publish: base DN %q is not a DN", cfg.BaseDN)
	}
	return nil
}

// Notify queues user's publication. It is a policy.ChangeListener and
// does not block.
func (p *Publisher) Notify(user string, removed []policy.Escrowed) {
	p.mu.Lock()
	u := p.pending[user]
	if u == nil {
		u = &pendingUser{}
		p.pending[user] = u
	}
	u.due, u.gen = time.Time{}, u.gen+1
	for _, m := range removed {
		u.issuers = append(u.issuers, issuer{m.Issuer, m.AuthorityKeyID})
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run publishes queued users until ctx ends, retrying failures with
// exponential back-off (from 0.5 s to RetryMax).
func (p *Publisher) Run(ctx context.Context) {
	for {
		next := p.runDue(ctx)
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 10*time.Millisecond)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// runDue publishes every user that is due and returns when the next
// retry is due (zero: none waits).
func (p *Publisher) runDue(ctx context.Context) time.Time {
	now := p.now()
	p.mu.Lock()
	var due []string
	var extra [][]issuer
	var gens []int
	for user, u := range p.pending {
		if !u.due.After(now) {
			due, extra, gens = append(due, user), append(extra, u.issuers), append(gens, u.gen)
		}
	}
	p.mu.Unlock()
	if len(due) == 0 {
		return p.nextDue()
	}
	conn, err := p.dial()
	for i, user := range due {
		if err == nil {
			var r SyncReport
			r, err = p.publish(ctx, conn, user, extra[i])
			if err == nil {
				p.done(user, gens[i])
				p.log.Info("publish: published", "user", user, "added", r.Added, "removed", r.Removed, "entry_missing", r.Missing > 0)
				continue
			}
		}
		p.retry(user, err)
	}
	if conn != nil {
		conn.Close()
	}
	return p.nextDue()
}

// done forgets user unless a change came in while it was published
// (then it is published again at once).
func (p *Publisher) done(user string, gen int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if u := p.pending[user]; u != nil && u.gen == gen {
		delete(p.pending, user)
	}
}

func (p *Publisher) retry(user string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	u := p.pending[user]
	if u == nil {
		return
	}
	u.delay = min(max(2*u.delay, retryMin), p.cfg.RetryMax)
	u.due = p.now().Add(u.delay)
	p.log.Warn("publish: publishing failed; will retry", "user", user, "in", u.delay, "err", err)
}

func (p *Publisher) nextDue() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var next time.Time
	for _, u := range p.pending {
		if next.IsZero() || u.due.Before(next) {
			next = u.due
		}
	}
	return next
}

func (p *Publisher) dial() (*ldap.Conn, error) {
	conn, err := ldap.DialURL(p.cfg.URL, ldap.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}))
	if err != nil {
		return nil, fmt.Errorf("publish: connect %s: %w", p.cfg.URL, err)
	}
	conn.SetTimeout(publishTimeout)
	if p.cfg.BindDN != "" {
		if err := conn.Bind(p.cfg.BindDN, p.cfg.Password); err != nil {
			conn.Close()
			return nil, fmt.Errorf("publish: bind as %s: %w", p.cfg.BindDN, err)
		}
	}
	return conn, nil
}

// SyncAll publishes every user that has an escrow entry.
func (p *Publisher) SyncAll(ctx context.Context) (SyncReport, error) {
	users, err := p.src.Users(ctx)
	if err != nil {
		return SyncReport{}, err
	}
	conn, err := p.dial()
	if err != nil {
		return SyncReport{}, err
	}
	defer conn.Close()
	var total SyncReport
	for _, u := range users {
		r, err := p.publish(ctx, conn, u, nil)
		total.Users++
		total.Added += r.Added
		total.Removed += r.Removed
		total.Missing += r.Missing
		if err != nil {
			total.Failed++
			p.log.Warn("directory sync: publishing failed", "user", u, "err", err)
			if ldap.IsErrorAnyOf(err, ldap.ErrorNetwork) {
				return total, err
			}
		}
	}
	return total, nil
}

// publish makes user's entry hold exactly their current certificates
// among the values of known issuers.
func (p *Publisher) publish(ctx context.Context, conn *ldap.Conn, user string, removedIssuers []issuer) (SyncReport, error) {
	r := SyncReport{Users: 1}
	list, err := p.src.Certificates(ctx, user)
	if err != nil && !errors.Is(err, policy.ErrNotFound) {
		return r, err
	}
	now := p.now()
	known := append([]issuer{}, removedIssuers...)
	for _, c := range p.cfg.Issuers {
		known = append(known, issuer{c.Subject.String(), hex.EncodeToString(c.SubjectKeyId)})
	}
	var desired [][]byte
	for _, pc := range list {
		if c, err := x509.ParseCertificate(pc.CertDER); err == nil {
			known = append(known, issuerOf(c))
			if pc.CanEncrypt(now) {
				desired = append(desired, pc.CertDER)
			}
		}
	}
	res, err := conn.Search(ldap.NewSearchRequest(p.cfg.BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 2, 0, false,
		fmt.Sprintf(p.cfg.Filter, ldap.EscapeFilter(user)), []string{p.cfg.Attribute}, nil))
	if err != nil {
		return r, fmt.Errorf("publish: find the entry of %s: %w", user, err)
	}
	switch len(res.Entries) {
	case 0:
		r.Missing = 1
		return r, nil // the directory has no entry for this user: nothing to publish to
	case 1:
	default:
		return r, fmt.Errorf("publish: %d entries match %s; make the publish filter unique", len(res.Entries), user)
	}
	entry := res.Entries[0]
	var existing [][]byte
	for _, a := range entry.Attributes {
		if strings.EqualFold(baseName(a.Name), baseName(p.cfg.Attribute)) {
			existing = append(existing, a.ByteValues...)
		}
	}
	mod := ldap.NewModifyRequest(entry.DN, nil)
	var add, del []string
	for _, d := range desired {
		if !slices.ContainsFunc(existing, func(v []byte) bool { return bytes.Equal(v, d) }) {
			add = append(add, string(d))
		}
	}
	for _, v := range existing {
		if slices.ContainsFunc(desired, func(d []byte) bool { return bytes.Equal(d, v) }) {
			continue
		}
		c, err := x509.ParseCertificate(v)
		if err != nil || !issuedByOneOf(c, known) {
			continue // not ours: never touched
		}
		del = append(del, string(v))
	}
	if len(add) == 0 && len(del) == 0 {
		return r, nil
	}
	if len(add) > 0 {
		mod.Add(p.cfg.Attribute, add)
	}
	if len(del) > 0 {
		mod.Delete(p.cfg.Attribute, del)
	}
	if err := conn.Modify(mod); err != nil {
		return r, fmt.Errorf("publish: modify %s: %w", entry.DN, err)
	}
	r.Added, r.Removed = len(add), len(del)
	return r, nil
}

func baseName(attr string) string {
	b, _, _ := strings.Cut(attr, ";")
	return b
}

// issuer names a CA key: its name (as escrow metadata records it) and,
// when known, its key identifier (hex).
type issuer struct{ name, keyID string }

func issuerOf(c *x509.Certificate) issuer {
	return issuer{c.Issuer.String(), hex.EncodeToString(c.AuthorityKeyId)}
}

// issuedByOneOf reports whether c was issued by one of known: the same
// name and, where both say, the same key — another CA that happens to
// share a known CA's name is not known.
func issuedByOneOf(c *x509.Certificate, known []issuer) bool {
	ci := issuerOf(c)
	for _, k := range known {
		if k.name == ci.name && (k.keyID == "" || ci.keyID == "" || k.keyID == ci.keyID) {
			return true
		}
	}
	return false
}
