// Package benchutil holds what the benchmark commands under test/ share:
// loopback ports, waiting for a server, an mTLS gRPC connection with a
// smimeca role's credentials, the -c concurrency list, spreading n calls
// over workers, and latency percentiles.
package benchutil

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/smimeca/smimeca/internal/freeport"
	"github.com/smimeca/smimeca/internal/vaultproc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// FreeAddr returns a free loopback host:port.
func FreeAddr() string {
	a, err := freeport.Addr()
	if err != nil {
		panic(err)
	}
	return a
}

// WaitTCP waits up to 30 s for addr to accept connections.
func WaitTCP(addr string) error {
	for i := 0; i < 600; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not come up", addr)
}

// Dial connects to smimeca's gRPC API with the credentials in dir
// (client.crt, client.key, ca.crt).
func Dial(addr, dir string) (*grpc.ClientConn, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "localhost"})))
}

// Concurrencies parses a comma-separated list of client counts (-c).
func Concurrencies(list string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c < 1 {
			return nil, fmt.Errorf("bad -c %q", list)
		}
		out = append(out, c)
	}
	return out, nil
}

// Parallel calls do for every i in [0, n) from workers goroutines, each
// taking the next i, and returns when all are done. A worker stops early
// when do returns false.
func Parallel(n, workers int, do func(worker, i int) bool) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || !do(w, i) {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// ParallelErr is Parallel for calls that can fail: the workers stop at the
// first error, which it returns.
func ParallelErr(n, workers int, do func(worker, i int) error) error {
	var firstErr atomic.Value
	Parallel(n, workers, func(w, i int) bool {
		if err := do(w, i); err != nil {
			firstErr.CompareAndSwap(nil, err)
			return false
		}
		return true
	})
	if e := firstErr.Load(); e != nil {
		return e.(error)
	}
	return nil
}

// Timed makes n calls with workers concurrent callers and returns calls/s
// and the latencies' median and 99th percentile in ms; it stops at the
// first error, which it returns.
func Timed(n, workers int, call func(worker, i int) error) (rate, p50, p99 float64, err error) {
	lat := make([]time.Duration, n)
	start := time.Now()
	if err := ParallelErr(n, workers, func(w, i int) error {
		t0 := time.Now()
		if err := call(w, i); err != nil {
			return err
		}
		lat[i] = time.Since(t0)
		return nil
	}); err != nil {
		return 0, 0, 0, err
	}
	total := time.Since(start)
	p50, p99 = P50P99(lat)
	return float64(n) / total.Seconds(), p50, p99, nil
}

// WaitHealthy waits up to timeout until a GET of u answers 200.
func WaitHealthy(u string, timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(u); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return fmt.Errorf("%s not healthy after %s", u, timeout)
}

// P50P99 sorts lat and returns its median and 99th percentile in ms (0, 0
// when it is empty).
func P50P99(lat []time.Duration) (p50, p99 float64) {
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	return pct(0.50), pct(0.99)
}

// Stop interrupts a started server and waits for it, killing it after 10 s.
func Stop(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
	}
}

// DeviceIdentity issues, under the MDM identity CA ca (with caKey), the
// identity certificate of one device: its own RSA-2048 key (an identity
// belongs to one device, by certificate and by key) and CN = the device id
// (the identity must name the device).
func DeviceIdentity(ca *x509.Certificate, caKey crypto.Signer, device string) ([]byte, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	return x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: device},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		ca, &key.PublicKey, caKey)
}

// VaultBinary returns $SMIMECA_VAULT_BIN (the scripts set it from
// scripts/vault.sh), or where scripts/vault.sh puts Vault.
func VaultBinary() string {
	if b := os.Getenv("SMIMECA_VAULT_BIN"); b != "" {
		return b
	}
	return vaultproc.DefaultBinary()
}
