// Package httplimit bounds what one HTTP peer of a public listener may cost
// before any expensive work starts: a request's body is read in full, with
// a size bound and a short deadline, before it takes one of a fixed number
// of processing slots; each client address may hold a bounded number of
// requests at once and send a bounded rate of them. A slow or hostile peer
// therefore holds a goroutine and a connection, never a slot.
package httplimit

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of Limits, chosen so that a fleet behind one NAT address
// enrolling together (thousands of devices over minutes: a few requests a
// second, a handful at once) is never refused, while one address cannot
// hold more than a fraction of the slots.
const (
	DefaultRatePerIP   = 20  // requests per second per client address
	DefaultBurstPerIP  = 100 // of DefaultRatePerIP
	DefaultMaxPerIP    = 16  // requests of one address in progress at once
	DefaultBodyTimeout = 5 * time.Second
)

// Limits bound the requests the Limiter guards.
type Limits struct {
	// MaxInFlight is how many requests are processed at once (after their
	// body was read); more get 503 with Retry-After.
	MaxInFlight int
	// RatePerIP is requests per second per client address (0: no limit),
	// with bursts of BurstPerIP; more get 429 with Retry-After.
	RatePerIP  float64
	BurstPerIP int
	// MaxPerIP is how many requests of one client address may be in
	// progress at once, body reading included (0: no limit); more get 429.
	MaxPerIP int
	// MaxBodyBytes bounds a request body; a larger one gets 413 before it
	// is read to its end.
	MaxBodyBytes int64
	// BodyTimeout is how long a body may take to arrive; a slower one gets
	// 408 and its connection is closed.
	BodyTimeout time.Duration
	// TrustedProxies are the addresses (load balancers) whose
	// X-Forwarded-For is believed: for a request from one of them the
	// client address is the last one in X-Forwarded-For that is not a
	// trusted proxy itself. From any other peer the header is ignored.
	TrustedProxies []netip.Prefix
}

// Limiter guards the requests that Guarded selects in next with Limits;
// the others pass untouched.
type Limiter struct {
	next    http.Handler
	guarded func(*http.Request) bool
	l       Limits
	slots   chan struct{}
	mu      sync.Mutex
	clients map[netip.Addr]*client
}

type client struct {
	lim    *rate.Limiter
	active int
}

// maxTrackedClients bounds the per-address table; past it, addresses with
// nothing in progress are forgotten (they start with a fresh burst), so
// memory stays bounded whatever the number of addresses a peer uses.
const maxTrackedClients = 65536

// New returns a Limiter that applies l to the requests of next for which
// guarded returns true (nil: every request).
func New(next http.Handler, guarded func(*http.Request) bool, l Limits) *Limiter {
	if l.MaxInFlight < 1 {
		l.MaxInFlight = 1
	}
	if l.BurstPerIP < 1 {
		l.BurstPerIP = 1
	}
	if l.BodyTimeout <= 0 {
		l.BodyTimeout = DefaultBodyTimeout
	}
	if guarded == nil {
		guarded = func(*http.Request) bool { return true }
	}
	return &Limiter{next: next, guarded: guarded, l: l, slots: make(chan struct{}, l.MaxInFlight), clients: map[netip.Addr]*client{}}
}

// ServeHTTP implements http.Handler.
func (s *Limiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.guarded(r) {
		s.next.ServeHTTP(w, r)
		return
	}
	ip := ClientAddr(r, s.l.TrustedProxies)
	if retry, ok := s.enter(ip); !ok {
		// Closing the connection spares the server reading an unread
		// body (which a slow peer would drip) before the refusal.
		w.Header().Set("Connection", "close")
		w.Header().Set("Retry-After", strconv.Itoa(retry))
		http.Error(w, "too many requests from this address; retry later", http.StatusTooManyRequests)
		return
	}
	defer s.leave(ip)
	if r.Body != nil && r.Body != http.NoBody {
		if code, err := s.readBody(w, r); err != nil {
			w.Header().Set("Connection", "close")
			http.Error(w, err.Error(), code)
			return
		}
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
		s.next.ServeHTTP(w, r)
	default:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "the CA is busy; retry in a second", http.StatusServiceUnavailable)
	}
}

var errBodyTooLarge = errors.New("request body too large")

// readBody reads the whole body under the deadline and the size bound and
// puts it back in memory for next.
func (s *Limiter) readBody(w http.ResponseWriter, r *http.Request) (int, error) {
	if s.l.MaxBodyBytes > 0 && r.ContentLength > s.l.MaxBodyBytes {
		return http.StatusRequestEntityTooLarge, errBodyTooLarge
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.l.BodyTimeout))
	defer rc.SetReadDeadline(time.Time{})
	src := io.Reader(r.Body)
	if s.l.MaxBodyBytes > 0 {
		src = io.LimitReader(r.Body, s.l.MaxBodyBytes+1)
	}
	b, err := io.ReadAll(src)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return http.StatusRequestTimeout, errors.New("the request body did not arrive in time")
		}
		return http.StatusBadRequest, errors.New("the request body could not be read")
	}
	if s.l.MaxBodyBytes > 0 && int64(len(b)) > s.l.MaxBodyBytes {
		return http.StatusRequestEntityTooLarge, errBodyTooLarge
	}
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
	return 0, nil
}

// enter counts a request of ip in, or says after how many seconds to retry.
func (s *Limiter) enter(ip netip.Addr) (int, bool) {
	if s.l.RatePerIP <= 0 && s.l.MaxPerIP <= 0 {
		return 0, true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[ip]
	if !ok {
		if len(s.clients) >= maxTrackedClients {
			for a, old := range s.clients {
				if old.active == 0 {
					delete(s.clients, a)
				}
			}
		}
		c = &client{lim: rate.NewLimiter(rate.Limit(s.l.RatePerIP), s.l.BurstPerIP)}
		if s.l.RatePerIP <= 0 {
			c.lim = rate.NewLimiter(rate.Inf, 0)
		}
		s.clients[ip] = c
	}
	if s.l.MaxPerIP > 0 && c.active >= s.l.MaxPerIP {
		return 1, false
	}
	if !c.lim.Allow() {
		return max(1, int(1/s.l.RatePerIP+0.5)), false
	}
	c.active++
	return 0, true
}

func (s *Limiter) leave(ip netip.Addr) {
	if s.l.RatePerIP <= 0 && s.l.MaxPerIP <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.clients[ip]; ok {
		c.active--
	}
}

// ClientAddr returns the address of the client that sent r: its peer's
// address, or, when the peer is a trusted proxy, the last address in
// X-Forwarded-For that is not a trusted proxy.
func ClientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	peer := remoteAddr(r.RemoteAddr)
	if !isTrusted(peer, trusted) {
		return peer
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return peer
		}
		a = a.Unmap()
		if !isTrusted(a, trusted) {
			return a
		}
	}
	return peer
}

func remoteAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap()
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap()
	}
	return netip.Addr{}
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParsePrefixes parses a comma-separated list of addresses and CIDR
// prefixes ("10.0.0.0/8,192.0.2.7").
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, err
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
