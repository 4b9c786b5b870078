// Package directory answers mail clients' lookups of users' recipient
// certificates — the public part of their current escrowed encryption
// certificates — on a built-in, read-only, anonymous LDAP endpoint (Server,
// on gldap): an inbound edge that reads policy's Directory and decides
// nothing itself. Publishing to an existing directory is package
// directory/publish.
package directory

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/hashicorp/go-hclog"
	"github.com/jimlambrt/gldap"
	"github.com/smallstep/pkcs7"
	"golang.org/x/time/rate"
)

// Source answers recipient lookups; *policy.Directory implements it.
type Source interface {
	Recipients(ctx context.Context, address string) ([]*x509.Certificate, error)
}

// Server defaults and bounds.
const (
	// DefaultBaseDN is the suffix of the entries the server returns.
	DefaultBaseDN = "ou=recipients,o=smimeca"
	// DefaultMaxInFlight bounds the searches served at once; more get
	// "busy".
	DefaultMaxInFlight = 64
	// DefaultConnLifetime bounds how long one connection may stay open.
	DefaultConnLifetime = 30 * time.Second
	// maxAddresses bounds the addresses one filter may ask for.
	maxAddresses = 8
	// maxLDAPMessage bounds every LDAP message this process reads (the
	// BER library's default is 2 GiB, allocated as announced).
	maxLDAPMessage = 256 << 10
	// searchTimeout bounds one search, whatever the client's time limit.
	searchTimeout = 5 * time.Second
	// DefaultSearchRate bounds the searches of one connection per second
	// (bursts of twice that); more get "busy". gldap does not expose a
	// peer's address, so the bound is per connection, not per address.
	DefaultSearchRate = 10
)

// ServerConfig configures the built-in LDAP endpoint.
type ServerConfig struct {
	// BaseDN of the returned entries (DefaultBaseDN).
	BaseDN string
	// MaxInFlight searches at once (DefaultMaxInFlight).
	MaxInFlight int
	// ConnLifetime of one connection (DefaultConnLifetime).
	ConnLifetime time.Duration
	// SearchRate is searches per second per connection (DefaultSearchRate).
	SearchRate float64
}

// Server is the built-in read-only LDAP endpoint: anonymous simple bind
// only; a search whose filter asks for addresses by equality on mail (also
// proxyAddresses "smtp:", userPrincipalName, rfc822Mailbox) gets one entry
// per address that has recipient certificates, carrying mail, cn,
// userCertificate;binary (each DER certificate) and userSMIMECertificate
// (one PKCS#7 certs-only bundle of them); any other search gets nothing —
// the server holds no other data and lists nothing — but the root DSE.
type Server struct {
	src      Source
	cfg      ServerConfig
	log      *slog.Logger
	srv      *gldap.Server
	inflight chan struct{}
	// perConn holds each open connection's search rate limiter by its id.
	perConn sync.Map
}

// NewServer returns the endpoint over src.
func NewServer(src Source, cfg ServerConfig, log *slog.Logger) (*Server, error) {
	if cfg.BaseDN == "" {
		cfg.BaseDN = DefaultBaseDN
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.ConnLifetime <= 0 {
		cfg.ConnLifetime = DefaultConnLifetime
	}
	if cfg.SearchRate <= 0 {
		cfg.SearchRate = DefaultSearchRate
	}
	if _, err := ldap.ParseDN(cfg.BaseDN); err != nil {
		return nil, fmt.Errorf("directory: base DN %q: %w", cfg.BaseDN, err)
	}
	ber.MaxPacketLengthBytes = maxLDAPMessage
	s := &Server{src: src, cfg: cfg, log: log, inflight: make(chan struct{}, cfg.MaxInFlight)}
	srv, err := gldap.NewServer(gldap.WithLogger(hclog.NewNullLogger()),
		gldap.WithReadTimeout(cfg.ConnLifetime), gldap.WithWriteTimeout(cfg.ConnLifetime),
		gldap.WithOnClose(func(id int) { s.perConn.Delete(id) }))
	if err != nil {
		return nil, err
	}
	mux, err := gldap.NewMux()
	if err != nil {
		return nil, err
	}
	if err := mux.Bind(s.bind); err != nil {
		return nil, err
	}
	if err := mux.Search(s.search); err != nil {
		return nil, err
	}
	// Writes are refused in the answer their operation expects.
	for _, route := range []struct {
		add  func(gldap.HandlerFunc, ...gldap.Option) error
		code int
	}{{mux.Add, gldap.ApplicationAddResponse}, {mux.Modify, gldap.ApplicationModifyResponse}, {mux.Delete, gldap.ApplicationDelResponse}} {
		if err := route.add(refuse(route.code)); err != nil {
			return nil, err
		}
	}
	if err := mux.DefaultRoute(refuse(gldap.ApplicationExtendedResponse)); err != nil {
		return nil, err
	}
	if err := srv.Router(mux); err != nil {
		return nil, err
	}
	s.srv = srv
	return s, nil
}

// Serve listens on addr and serves until Stop.
func (s *Server) Serve(addr string) error { return s.srv.Run(addr) }

// Ready reports whether the server is listening.
func (s *Server) Ready() bool { return s.srv.Ready() }

// Stop stops the server.
func (s *Server) Stop() error { return s.srv.Stop() }

func (s *Server) bind(w *gldap.ResponseWriter, r *gldap.Request) {
	resp := r.NewBindResponse(gldap.WithResponseCode(gldap.ResultInappropriateAuthentication))
	defer w.Write(resp)
	m, err := r.GetSimpleBindMessage()
	if err != nil {
		resp.SetDiagnosticMessage("only anonymous simple bind is supported")
		return
	}
	if m.UserName != "" || m.Password != "" {
		resp.SetDiagnosticMessage("this directory is anonymous and read-only: bind without a name and password")
		return
	}
	resp.SetResultCode(gldap.ResultSuccess)
}

// refuse answers an operation other than bind and search, in the
// response type its request expects.
func refuse(applicationCode int) gldap.HandlerFunc {
	return func(w *gldap.ResponseWriter, r *gldap.Request) {
		w.Write(r.NewResponse(gldap.WithResponseCode(gldap.ResultUnwillingToPerform), gldap.WithApplicationCode(applicationCode),
			gldap.WithDiagnosticMessage("read-only recipient directory: only bind and search")))
	}
}

func (s *Server) search(w *gldap.ResponseWriter, r *gldap.Request) {
	done := r.NewSearchDoneResponse(gldap.WithResponseCode(gldap.ResultSuccess))
	defer func() { w.Write(done) }()
	select {
	case s.inflight <- struct{}{}:
		defer func() { <-s.inflight }()
	default:
		done.SetResultCode(gldap.ResultBusy)
		done.SetDiagnosticMessage("too many searches at once; retry")
		return
	}
	lim, _ := s.perConn.LoadOrStore(r.ConnectionID(), rate.NewLimiter(rate.Limit(s.cfg.SearchRate), 2*int(s.cfg.SearchRate)))
	if !lim.(*rate.Limiter).Allow() {
		done.SetResultCode(gldap.ResultBusy)
		done.SetDiagnosticMessage("too many searches on this connection; slow down")
		return
	}
	m, err := r.GetSearchMessage()
	if err != nil {
		done.SetResultCode(gldap.ResultProtocolError)
		return
	}
	if m.BaseDN == "" && m.Scope == gldap.BaseObject {
		e := r.NewSearchResponseEntry("")
		e.AddAttribute("namingContexts", []string{s.cfg.BaseDN})
		e.AddAttribute("supportedLDAPVersion", []string{"3"})
		w.Write(e)
		return
	}
	addrs, err := filterAddresses(m.Filter)
	if err != nil {
		done.SetResultCode(gldap.ResultFilterError)
		done.SetDiagnosticMessage(err.Error())
		return
	}
	limit := int64(maxAddresses)
	if m.SizeLimit > 0 && m.SizeLimit < limit {
		limit = m.SizeLimit
	}
	ctx, cancel := context.WithTimeout(context.Background(), searchTimeout)
	defer cancel()
	var sent int64
	for _, a := range addrs {
		certs, err := s.src.Recipients(ctx, a)
		if err != nil {
			s.log.Warn("ldap: recipient lookup failed", "err", err)
			done.SetResultCode(gldap.ResultUnavailable)
			done.SetDiagnosticMessage("the recipient store is unavailable; retry later")
			return
		}
		if len(certs) == 0 {
			continue
		}
		if sent == limit {
			done.SetResultCode(gldap.ResultSizeLimitExceeded)
			return
		}
		e := r.NewSearchResponseEntry("mail=" + ldap.EscapeDN(a) + "," + s.cfg.BaseDN)
		for name, values := range entryAttributes(a, certs) {
			if wanted(m.Attributes, name) {
				e.AddAttribute(name, values)
			}
		}
		w.Write(e)
		sent++
	}
}

// entryAttributes are the attributes of one address's entry.
func entryAttributes(addr string, certs []*x509.Certificate) map[string][]string {
	var ders []string
	var all []byte
	for _, c := range certs {
		ders = append(ders, string(c.Raw))
		all = append(all, c.Raw...)
	}
	attrs := map[string][]string{
		"objectClass":            {"top", "person", "organizationalPerson", "inetOrgPerson"},
		"mail":                   {addr},
		"cn":                     {addr},
		"userCertificate;binary": ders,
	}
	if p7, err := pkcs7.DegenerateCertificate(all); err == nil {
		attrs["userSMIMECertificate"] = []string{string(p7)}
	}
	return attrs
}

// wanted reports whether the requested attribute list asks for name
// (none or "*": every user attribute; "userCertificate" also names its
// ";binary" form).
func wanted(requested []string, name string) bool {
	if len(requested) == 0 {
		return true
	}
	base, _, _ := strings.Cut(name, ";")
	for _, r := range requested {
		rb, _, _ := strings.Cut(r, ";")
		if r == "*" || strings.EqualFold(r, name) || strings.EqualFold(rb, base) {
			return true
		}
	}
	return false
}

// addressAttributes are the attributes an equality match may name an
// address by.
var addressAttributes = map[string]bool{"mail": true, "email": true, "rfc822mailbox": true, "userprincipalname": true, "proxyaddresses": true, "othermailbox": true}

// filterAddresses returns the addresses a search filter asks for by
// equality on an address attribute, in any AND/OR nesting (a NOT branch
// asks for nothing); at most maxAddresses.
func filterAddresses(filter string) ([]string, error) {
	p, err := ldap.CompileFilter(filter)
	if err != nil {
		return nil, fmt.Errorf("filter: %v", err)
	}
	seen := map[string]bool{}
	var out []string
	var walk func(p *ber.Packet, depth int)
	walk = func(p *ber.Packet, depth int) {
		if depth > 8 || len(out) >= maxAddresses {
			return
		}
		switch p.Tag {
		case ldap.FilterAnd, ldap.FilterOr:
			for _, c := range p.Children {
				walk(c, depth+1)
			}
		case ldap.FilterEqualityMatch:
			if len(p.Children) != 2 {
				return
			}
			attr := strings.ToLower(p.Children[0].Data.String())
			val := p.Children[1].Data.String()
			if !addressAttributes[attr] {
				return
			}
			if attr == "proxyaddresses" {
				if !strings.HasPrefix(strings.ToLower(val), "smtp:") {
					return
				}
				val = val[len("smtp:"):]
			}
			if a := strings.ToLower(strings.TrimSpace(val)); a != "" && !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	walk(p, 0)
	return out, nil
}
