package scep_test

import (
	"bytes"
	"crypto/rsa"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	smallscep "github.com/smallstep/scep"

	"github.com/smimeca/smimeca/internal/testing/testpki"
)

// BenchmarkPKIOperation measures one full PKCSReq enrolment through the
// handler (decrypt, challenge, issue, store, CertRep) without HTTP. Messages
// are built before the timer starts.
func BenchmarkPKIOperation(b *testing.B) {
	f := newFixture(b)
	d := newDevice(b, 0)
	msgs := make([][]byte, b.N)
	for i := range msgs {
		msgs[i] = d.message(b, f, smallscep.PKCSReq, f.challenge(b, fmt.Sprintf("u%d@example.com", i), fmt.Sprintf("dev-%d", i)))
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
		msgs <- d.message(b, f, smallscep.PKCSReq, f.challenge(b, fmt.Sprintf("u%d@example.com", i), fmt.Sprintf("dev-%d", i)))
	}
	h := f.srv.Config.Handler
	b.SetParallelism(8)
	w0 := diskWrites(b)
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
	b.StopTimer()
	b.ReportMetric(float64(diskWrites(b)-w0)/float64(b.N), "disk-B/op")
}

// diskWrites returns the bytes this process has caused to be written to
// storage (/proc/self/io write_bytes): the database's write amplification,
// since every commit is synced.
func diskWrites(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io")
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Skip("no write_bytes in /proc/self/io")
	return 0
}

// BenchmarkHostileRequest measures what an unauthenticated peer can make
// the server spend on one refused PKIOperation, to compare with
// BenchmarkPKIOperation (one real enrolment).
func BenchmarkHostileRequest(b *testing.B) {
	f := newFixture(b)
	huge := new(big.Int).Lsh(big.NewInt(1), 16383)
	huge.Add(huge, big.NewInt(1234567))
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"16384-bit-signer-key", signedWith(b, &rsa.PublicKey{N: huge, E: 65537}, "tid")},
		{"exponent-2^31-1", signedWith(b, &rsa.PublicKey{N: new(big.Int).Set(testpki.RSAKey(b, 2048, 6).N), E: 1<<31 - 1}, "tid")},
		{"deep-BER-64KiB", bytes.Repeat([]byte{0x30, 0x80}, 32<<10)},
		{"long-transactionID", signedWith(b, &testpki.RSAKey(b, 2048, 7).PublicKey, strings.Repeat("T", 60<<10))},
	} {
		b.Run(c.name, func(b *testing.B) {
			h := f.srv.Config.Handler
			for i := 0; i < b.N; i++ {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/scep?operation=PKIOperation", bytes.NewReader(c.body)))
				if rec.Code != http.StatusBadRequest {
					b.Fatalf("%d %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
