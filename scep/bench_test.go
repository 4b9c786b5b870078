package scep_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	smallscep "github.com/smallstep/scep"
)

// BenchmarkPKIOperation measures one full PKCSReq enrolment through the
// handler (decrypt, challenge, issue, store, CertRep) without HTTP. Messages
// are built before the timer starts.
func BenchmarkPKIOperation(b *testing.B) {
	f := newFixture(b)
	d := newDevice(b, 0)
	msgs := make([][]byte, b.N)
	for i := range msgs {
		msgs[i] = d.message(b, f, smallscep.PKCSReq, f.challenge(b, fmt.Sprintf("u%d@example.com", i), "dev"))
	}
	h := f.srv.Config.Handler
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/scep?operation=PKIOperation", bytes.NewReader(msgs[i])))
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// BenchmarkPKIOperationParallel is BenchmarkPKIOperation with 16 concurrent
// requests per core, the shape of a fleet enrolling at once.
func BenchmarkPKIOperationParallel(b *testing.B) {
	f := newFixture(b)
	d := newDevice(b, 0)
	msgs := make(chan []byte, b.N)
	for i := 0; i < b.N; i++ {
		msgs <- d.message(b, f, smallscep.PKCSReq, f.challenge(b, fmt.Sprintf("u%d@example.com", i), "dev"))
	}
	h := f.srv.Config.Handler
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/scep?operation=PKIOperation", bytes.NewReader(<-msgs)))
			if rec.Code != 200 {
				b.Error(rec.Code)
			}
		}
	})
}
