// Command ocspbench measures smimeca's OCSP responder against OpenSSL's
// (`openssl ocsp -index … -port`, Debian) in the same run, on the same
// certificates and the same delegated signing key: requests/s and p50/p99
// latency at each client concurrency, for serials the CA issued (smimeca
// answers them from its per-serial cache; OpenSSL signs every answer) and
// for serials it never issued (both sign an "unknown" each time). Every
// answer is parsed and its signature and status checked after the timed
// window. Prints a markdown table.
package main

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/smimeca/smimeca/tools/benchutil"
)

func main() {
	bin := flag.String("smimeca", "bin/smimeca", "smimeca binary")
	opensslBin := flag.String("openssl", "openssl", "openssl binary (its ocsp responder is the peer)")
	scepclient := flag.String("scepclient", "scepclient", "Debian's scepclient (enrols the certificates asked about)")
	n := flag.Int("n", 20000, "requests per cell")
	conc := flag.String("c", "1,16", "comma-separated client concurrencies")
	ncerts := flag.Int("certs", 32, "certificates enrolled and asked about")
	flag.Parse()
	if err := run(*bin, *opensslBin, *scepclient, *n, *ncerts, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "ocspbench:", err)
		os.Exit(1)
	}
}

type target struct {
	name string
	url  string
}

func run(bin, opensslBin, scepclient string, n, ncerts int, concList string) error {
	concs, err := benchutil.Concurrencies(concList)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "ocspbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	data := filepath.Join(work, "smimeca")
	httpAddr, grpcAddr := benchutil.FreeAddr(), benchutil.FreeAddr()
	// Every client of the benchmark is on one address: no per-IP limit.
	sm := exec.Command(bin, "serve", "--data", data, "--http-addr", httpAddr, "--grpc-addr", grpcAddr,
		"--ops-addr", benchutil.FreeAddr(), "--log-level", "error", "--scep-rate-per-ip", "0", "--scep-max-per-ip", "0")
	sm.Stderr = os.Stderr
	if err := sm.Start(); err != nil {
		return err
	}
	defer benchutil.Stop(sm)
	if err := benchutil.WaitTCP(httpAddr); err != nil {
		return err
	}
	if err := benchutil.WaitTCP(grpcAddr); err != nil {
		return err
	}
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(bin, append(args, "--server", grpcAddr, "--credentials", filepath.Join(data, "credentials", "admin"))...).Output()
		if err != nil {
			return "", fmt.Errorf("smimeca %v: %w", args, err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	base := "http://" + httpAddr
	caDir := filepath.Join(data, "ca")
	ra, err := readCert(filepath.Join(caDir, "scep_ra.crt"))
	if err != nil {
		return err
	}
	issuer, err := readCert(filepath.Join(caDir, "intermediate_ca.crt"))
	if err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "enrolling %d certificates with scepclient…\n", ncerts)
	raFP := fmt.Sprintf("%X", sha256.Sum256(ra.Raw))
	var certs []*x509.Certificate
	for i := 0; i < ncerts; i++ {
		dir := filepath.Join(work, fmt.Sprintf("dev%d", i))
		os.MkdirAll(dir, 0o700)
		user := fmt.Sprintf("user%d@example.com", i)
		if _, err := cli("device", "register", "--user", user, "--device", "bench"); err != nil {
			return err
		}
		challenge, err := cli("challenge", "create", "--user", user, "--device", "bench")
		if err != nil {
			return err
		}
		out, err := exec.Command(scepclient, "-server-url", base+"/scep", "-private-key", filepath.Join(dir, "key.pem"),
			"-certificate", filepath.Join(dir, "client.pem"), "-challenge", challenge, "-ca-fingerprint", raFP).CombinedOutput()
		if err != nil {
			return fmt.Errorf("scepclient: %v: %s", err, out)
		}
		c, err := readCert(filepath.Join(dir, "client.pem"))
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	// The same request a client sends: SHA-1 CertID (OpenSSL's default).
	known := make([][]byte, len(certs))
	for i, c := range certs {
		if known[i], err = ocsp.CreateRequest(c, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1}); err != nil {
			return err
		}
	}

	// OpenSSL's responder: an index of the same certificates, the same
	// delegated signer, one process per core.
	index := filepath.Join(work, "index.txt")
	var idx bytes.Buffer
	for _, c := range certs {
		fmt.Fprintf(&idx, "V\t%s\t\t%X\tunknown\t/CN=%s\n", c.NotAfter.UTC().Format("060102150405Z"), c.SerialNumber, c.Subject.CommonName)
	}
	if err := os.WriteFile(index, idx.Bytes(), 0o600); err != nil {
		return err
	}
	sslAddr := benchutil.FreeAddr()
	_, port, _ := strings.Cut(sslAddr, ":")
	ossl := exec.Command(opensslBin, "ocsp", "-index", index, "-port", port, "-rsigner", filepath.Join(caDir, "ocsp_signer.crt"),
		"-rkey", filepath.Join(caDir, "ocsp_signer.key"), "-CA", filepath.Join(caDir, "intermediate_ca.crt"),
		"-nmin", "1440", "-multi", strconv.Itoa(runtime.NumCPU()), "-ignore_err")
	ossl.Stdout, ossl.Stderr = io.Discard, io.Discard
	ossl.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // -multi forks workers
	if err := ossl.Start(); err != nil {
		return err
	}
	defer func() { syscall.Kill(-ossl.Process.Pid, syscall.SIGTERM); ossl.Wait() }()
	if err := benchutil.WaitTCP(sslAddr); err != nil {
		return err
	}

	type row struct {
		name, serials  string
		conc           int
		rate, p50, p99 float64
		failed         int
	}
	var rows []row
	targets := []target{{"smimeca", base + "/ocsp"}, {"openssl ocsp", "http://" + sslAddr + "/"}}
	for _, serials := range []string{"issued", "never issued"} {
		for _, c := range concs {
			for _, t := range targets {
				reqs, want := known, ocsp.Good
				if serials == "never issued" {
					reqs, want = make([][]byte, 256), ocsp.Unknown
					for i := range reqs {
						sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
						fake := *certs[0]
						fake.SerialNumber = sn.Add(sn, big.NewInt(1))
						if reqs[i], err = ocsp.CreateRequest(&fake, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1}); err != nil {
							return err
						}
					}
				}
				load(t, reqs, min(n, 2000), c) // warm-up
				rate, p50, p99, failed := load(t, reqs, n, c)
				bad := check(t, reqs, issuer, want)
				rows = append(rows, row{t.name, serials, c, rate, p50, p99, failed + bad})
				fmt.Fprintf(os.Stderr, "%-12s %-12s c=%-3d %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  failed %d\n", t.name, serials, c, rate, p50, p99, failed+bad)
			}
		}
	}
	fmt.Printf("machine: %d CPUs, %s, go %s; %d requests per cell over %d certificates (SHA-1 CertID, POST, keep-alive); OpenSSL %s with -multi %d and the same delegated ECDSA P-256 signer\n\n",
		runtime.NumCPU(), runtime.GOARCH, runtime.Version(), n, ncerts, opensslVersion(opensslBin), runtime.NumCPU())
	fmt.Println("| responder | serials | clients | requests/s | p50 ms | p99 ms | failed | vs openssl ocsp |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		vs := ""
		if r.name == "smimeca" {
			for _, p := range rows {
				if p.name != "smimeca" && p.conc == r.conc && p.serials == r.serials {
					vs = fmt.Sprintf("%.2f×", r.rate/p.rate)
				}
			}
		}
		fmt.Printf("| %s | %s | %d | %.0f | %.2f | %.2f | %d/%d | %s |\n", r.name, r.serials, r.conc, r.rate, r.p50, r.p99, r.failed, n, vs)
	}
	return nil
}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 30 * time.Second}

// post sends one request and returns the answer's body.
func post(t target, req []byte) ([]byte, error) {
	resp, err := client.Post(t.url, "application/ocsp-request", bytes.NewReader(req))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return b, err
}

// load sends n requests (cycling through reqs) from c clients and returns
// answers/s, p50 and p99 in ms, and the number of failed requests.
func load(t target, reqs [][]byte, n, c int) (float64, float64, float64, int) {
	lat := make([]time.Duration, n)
	ok := make([]bool, n)
	var failed atomic.Int64
	start := time.Now()
	benchutil.Parallel(n, c, func(_, i int) bool {
		t0 := time.Now()
		if _, err := post(t, reqs[i%len(reqs)]); err != nil {
			failed.Add(1)
		} else {
			lat[i], ok[i] = time.Since(t0), true
		}
		return true
	})
	total := time.Since(start)
	var good []time.Duration
	for i, d := range lat {
		if ok[i] {
			good = append(good, d)
		}
	}
	if len(good) == 0 {
		return 0, 0, 0, int(failed.Load())
	}
	p50, p99 := benchutil.P50P99(good)
	return float64(len(good)) / total.Seconds(), p50, p99, int(failed.Load())
}

// check asks once more for every request and counts answers that do not
// verify (signature by a responder the issuer certified) or do not say want.
func check(t target, reqs [][]byte, issuer *x509.Certificate, want int) int {
	bad := 0
	for _, r := range reqs {
		body, err := post(t, r)
		if err != nil {
			bad++
			continue
		}
		resp, err := ocsp.ParseResponse(body, issuer)
		if err != nil || resp.Status != want {
			bad++
		}
	}
	return bad
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

func opensslVersion(bin string) string {
	out, _ := exec.Command(bin, "version").Output()
	f := strings.Fields(string(out))
	if len(f) > 1 {
		return f[1]
	}
	return "?"
}
