package scep_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/smimeca/smimeca/scep"
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

func serve(h http.Handler, op, remote string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/scep?operation="+op, nil)
	req.RemoteAddr = remote
	h.ServeHTTP(rec, req)
	return rec
}

// Beyond the bound PKIOperations get 503 with Retry-After at once; below
// it they all pass.
func TestShedderBoundsConcurrentPKIOperations(t *testing.T) {
	b := &blocking{entered: make(chan struct{}, 8), release: make(chan struct{})}
	s := scep.NewShedder(b, 2, 0, 0)
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); codes[i] = serve(s, "PKIOperation", "192.0.2.1:1000").Code }(i)
	}
	<-b.entered
	<-b.entered
	rec := serve(s, "PKIOperation", "192.0.2.2:1000")
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("third concurrent PKIOperation: %d, Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	close(b.release)
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("request %d below the bound: %d", i, c)
		}
	}
	if rec := serve(s, "PKIOperation", "192.0.2.2:1000"); rec.Code != http.StatusOK {
		t.Errorf("after the load: %d", rec.Code)
	}
}

// okHandler answers 200.
type okHandler struct{}

func (okHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }

// With a per-IP rate, one address past its burst gets 429 while another
// address is served; GetCACaps is never limited.
func TestShedderPerIPRate(t *testing.T) {
	s := scep.NewShedder(okHandler{}, 100, 0.01, 3)
	for i := 0; i < 3; i++ {
		if c := serve(s, "PKIOperation", "198.51.100.7:4000").Code; c != http.StatusOK {
			t.Fatalf("request %d within the burst: %d", i, c)
		}
	}
	rec := serve(s, "PKIOperation", "198.51.100.7:4001")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("past the burst: %d %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	if c := serve(s, "PKIOperation", "198.51.100.8:4000").Code; c != http.StatusOK {
		t.Errorf("another address: %d", c)
	}
	if c := serve(s, "GetCACaps", "198.51.100.7:4000").Code; c != http.StatusOK {
		t.Errorf("GetCACaps limited: %d", c)
	}
}
