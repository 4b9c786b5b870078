package httplimit_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/httplimit"
)

// blocking is a handler that holds each request until released.
type blocking struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blocking) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	b.entered <- struct{}{}
	<-b.release
	w.WriteHeader(http.StatusOK)
}

func serve(h http.Handler, remote string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/scep?operation=PKIOperation", strings.NewReader("msg"))
	req.RemoteAddr = remote
	h.ServeHTTP(rec, req)
	return rec
}

// Beyond the bound requests get 503 with Retry-After at once; below it
// they all pass.
func TestBoundsConcurrentRequests(t *testing.T) {
	b := &blocking{entered: make(chan struct{}, 8), release: make(chan struct{})}
	s := httplimit.New(b, nil, httplimit.Limits{MaxInFlight: 2})
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); codes[i] = serve(s, "192.0.2.1:1000").Code }(i)
	}
	<-b.entered
	<-b.entered
	rec := serve(s, "192.0.2.2:1000")
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("third concurrent request: %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	close(b.release)
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("request %d below the bound: %d", i, c)
		}
	}
	if rec := serve(s, "192.0.2.2:1000"); rec.Code != http.StatusOK {
		t.Errorf("after the load: %d", rec.Code)
	}
}

type okHandler struct{}

func (okHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.WriteHeader(http.StatusOK)
}

// With a per-IP rate, one address past its burst gets 429 while another
// address is served; requests that are not guarded are never limited.
func TestPerIPRate(t *testing.T) {
	s := httplimit.New(okHandler{}, func(r *http.Request) bool { return r.URL.Query().Get("operation") == "PKIOperation" },
		httplimit.Limits{MaxInFlight: 100, RatePerIP: 0.01, BurstPerIP: 3})
	for i := 0; i < 3; i++ {
		if c := serve(s, "198.51.100.7:4000").Code; c != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i, c)
		}
	}
	rec := serve(s, "198.51.100.7:4001")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("past the burst: %d %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	if c := serve(s, "198.51.100.8:4000").Code; c != http.StatusOK {
		t.Errorf("another address: %d", c)
	}
	caps := httptest.NewRequest(http.MethodGet, "/scep?operation=GetCACaps", nil)
	caps.RemoteAddr = "198.51.100.7:4000"
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, caps)
	if rec.Code != http.StatusOK {
		t.Errorf("GetCACaps limited: %d", rec.Code)
	}
}

// Slow peers cost nothing: bodies that never arrive hold no slot, their
// address's excess is refused at once, and a request from elsewhere is
// answered right away; each slow request ends with 408 at the deadline.
func TestSlowBodiesHoldNoSlot(t *testing.T) {
	srv := httptest.NewServer(httplimit.New(okHandler{}, nil, httplimit.Limits{MaxInFlight: 2, MaxPerIP: 4, MaxBodyBytes: 1 << 10, BodyTimeout: 2 * time.Second,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	// Six slow requests "from" 203.0.113.9 (through the trusted proxy, so
	// that the test needs one loopback address only).
	var conns []net.Conn
	answers := make(chan string, 6)
	for i := 0; i < 6; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /scep?operation=PKIOperation HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nContent-Length: 1000\r\n\r\nabc")
		go func(c net.Conn) {
			b := make([]byte, 64)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, _ := c.Read(b)
			answers <- string(b[:n])
		}(c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/scep?operation=PKIOperation", strings.NewReader("real"))
	req.Header.Set("X-Forwarded-For", "198.51.100.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || time.Since(start) > time.Second {
		t.Fatalf("a real request beside slow ones: %d after %s", resp.StatusCode, time.Since(start))
	}
	var refused, timedOut int
	for i := 0; i < 6; i++ {
		a := <-answers
		switch {
		case strings.Contains(a, " 429 "):
			refused++
		case strings.Contains(a, " 408 "):
			timedOut++
		default:
			t.Errorf("slow request answered %q", a)
		}
	}
	if refused != 2 || timedOut != 4 {
		t.Errorf("slow requests: %d refused, %d timed out; want 2 past the per-address cap and 4 at the deadline", refused, timedOut)
	}
}

func TestBodyTooLarge(t *testing.T) {
	s := httplimit.New(okHandler{}, nil, httplimit.Limits{MaxInFlight: 1, MaxBodyBytes: 4})
	for _, body := range []string{"12345", strings.Repeat("x", 1<<20)} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		req.ContentLength = -1 // unknown: the bound holds while reading too
		s.ServeHTTP(rec, req)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("%d-byte body: %d", len(body), rec.Code)
		}
	}
}

// X-Forwarded-For is believed only from a trusted proxy, and then only up
// to the first address that is not one.
func TestClientAddr(t *testing.T) {
	trusted, err := httplimit.ParsePrefixes("10.0.0.0/8, 192.0.2.7")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ remote, xff, want string }{
		{"198.51.100.1:1", "", "198.51.100.1"},
		{"198.51.100.1:1", "203.0.113.5", "198.51.100.1"}, // an untrusted peer's header is ignored
		{"10.1.2.3:1", "203.0.113.5", "203.0.113.5"},
		{"10.1.2.3:1", "1.2.3.4, 203.0.113.5, 192.0.2.7", "203.0.113.5"}, // the client cannot forge past the proxies
		{"192.0.2.7:1", "garbage", "192.0.2.7"},
		{"[::ffff:10.0.0.1]:1", "203.0.113.6", "203.0.113.6"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := httplimit.ClientAddr(r, trusted).String(); got != c.want {
			t.Errorf("%s with %q: %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
	if _, err := httplimit.ParsePrefixes("10.0.0.0/33"); err == nil {
		t.Error("a bad prefix parsed")
	}
}
