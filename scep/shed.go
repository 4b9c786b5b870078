package scep

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Shedder wraps the SCEP handler and sheds PKIOperation load before any of
// it is read: at most a fixed number of PKIOperations run at once, the
// next ones get 503 with Retry-After (never a half-written answer); and,
// when set, each client IP may send a bounded rate of them (429 with
// Retry-After beyond it). GetCACaps and GetCACert pass untouched: they
// cost nothing.
type Shedder struct {
	next  http.Handler
	slots chan struct{}
	// perIP is off when its limit is 0.
	perIP   rate.Limit
	burst   int
	mu      sync.Mutex
	clients map[string]*rate.Limiter
}

// maxTrackedClients bounds the per-IP table; past it the table starts over
// (every client gets a fresh burst), so memory stays bounded whatever the
// number of addresses a peer sends from.
const maxTrackedClients = 65536

// NewShedder returns next with at most maxInFlight concurrent
// PKIOperations and, when perIP > 0, perIP PKIOperations per second per
// client IP with bursts of burst.
func NewShedder(next http.Handler, maxInFlight int, perIP float64, burst int) *Shedder {
	if maxInFlight < 1 {
		maxInFlight = 1
	}
	if burst < 1 {
		burst = 1
	}
	return &Shedder{next: next, slots: make(chan struct{}, maxInFlight), perIP: rate.Limit(perIP), burst: burst,
		clients: map[string]*rate.Limiter{}}
}

// ServeHTTP implements http.Handler.
func (s *Shedder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("operation") != "PKIOperation" {
		s.next.ServeHTTP(w, r)
		return
	}
	if s.perIP > 0 {
		if lim := s.client(r.RemoteAddr); !lim.Allow() {
			wait := time.Duration(float64(time.Second) / float64(s.perIP))
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(wait.Seconds()+0.5))))
			http.Error(w, "too many requests from this address; retry later", http.StatusTooManyRequests)
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

func (s *Shedder) client(remote string) *rate.Limiter {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lim, ok := s.clients[host]
	if !ok {
		if len(s.clients) >= maxTrackedClients {
			s.clients = map[string]*rate.Limiter{}
		}
		lim = rate.NewLimiter(s.perIP, s.burst)
		s.clients[host] = lim
	}
	return lim
}
