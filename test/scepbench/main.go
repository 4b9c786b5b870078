// Command scepbench measures SCEP enrolment throughput of smimeca against
// Debian's scepserver (micromdm) on the same machine in one run, and the
// in-process rate of the private-key operations an enrolment cannot avoid.
//
// All device keys, CSRs and PKCSReq messages are built before timing, so the
// timed part is the servers' work plus HTTP on loopback. Every response is
// checked to be a CertRep SUCCESS signed by the server's RA.
//
// Run it through `make bench-scep` (scripts/bench-scep.sh).
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smallstep/pkcs7"
	smallscep "github.com/smallstep/scep"
	scepx509 "github.com/smallstep/scep/x509util"

	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"github.com/smimeca/smimeca/test/benchutil"
)

func main() {
	bin := flag.String("smimeca", "bin/smimeca", "smimeca binary")
	peer := flag.String("scepserver", "scepserver", "Debian's scepserver binary (empty: measure smimeca alone, for A/B runs of smimeca changes)")
	n := flag.Int("n", 300, "enrolments per run")
	conc := flag.String("c", "1,16", "comma-separated client concurrencies")
	keys := flag.Int("keys", 16, "distinct device keys (messages are unique anyway)")
	flag.StringVar(&issuerKeyType, "issuer-key-type", "EC", "smimeca's issuing CA key type: EC (P-256, the fast configuration) or RSA (3072, the default since stock clients need it)")
	flag.BoolVar(&static, "static", false, "run smimeca in the labs static-challenge mode: every enrolment with the shared secret for one user, so all certificates land on one device record (the worst case for a per-device inventory)")
	flag.Parse()
	if err := run(*bin, *peer, *n, *keys, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "scepbench:", err)
		os.Exit(1)
	}
}

// static selects the labs static-challenge mode (-static).
var static bool

// issuerKeyType is smimeca's --issuer-key-type (-issuer-key-type).
var issuerKeyType string

const (
	staticSecret = "bench-static-secret-0123456789"
	staticUser   = "lab@example.com"
)

type target struct {
	name    string
	url     string
	ra      []*x509.Certificate
	cmd     *exec.Cmd
	recipie []*x509.Certificate
}

func run(bin, peerBin string, n, nkeys int, concList string) error {
	pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
	concs, err := benchutil.Concurrencies(concList)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "scepbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fmt.Fprintf(os.Stderr, "generating %d device keys…\n", nkeys)
	devs := make([]*device, nkeys)
	for i := range devs {
		if devs[i], err = newDevice(); err != nil {
			return err
		}
	}

	// smimeca
	sm, challenges, err := startSmimeca(bin, work, n*len(concs)+20)
	if err != nil {
		return err
	}
	defer benchutil.Stop(sm.cmd)
	// scepserver with an RSA-2048 CA (its default is 4096, which would make it
	// slower for a reason that has nothing to do with the server).
	targets := []*target{sm}
	if peerBin != "" {
		ps, err := startScepserver(peerBin, work)
		if err != nil {
			return err
		}
		defer benchutil.Stop(ps.cmd)
		targets = append(targets, ps)
	}

	// The limit is measured before and after the load and averaged: on a
	// shared machine one 2-second window can be off by 15 %.
	limitBefore := cryptoLimit(2 * time.Second)

	type row struct {
		name           string
		conc           int
		rate, p50, p99 float64
		failed, shed   int
		cpuMS          float64
		clientMS       float64
	}
	var rows []row
	ci := 0
	for _, c := range concs {
		for _, t := range targets {
			msgs := make([][]byte, n)
			for i := range msgs {
				d := devs[i%len(devs)]
				var ch string
				switch {
				case t.name == "smimeca" && static:
					ch = staticSecret
				case t.name == "smimeca":
					ch = challenges[ci]
					ci++
				default:
					ch = "bench-secret"
				}
				if msgs[i], err = d.pkcsReq(t.recipie, ch, fmt.Sprintf("bench-%d-%d-%d", c, i, time.Now().UnixNano())); err != nil {
					return err
				}
			}
			// warm-up
			for i := 0; i < 5 && t.name == "scepserver"; i++ {
				m, _ := devs[0].pkcsReq(t.recipie, "bench-secret", fmt.Sprintf("warm-%d-%d", c, i))
				if err := enrol(t, m); err != nil {
					return fmt.Errorf("%s warm-up: %w", t.name, err)
				}
			}
			cpu0 := procCPU(t.cmd)
			rate, p50, p99, failed, shed, clientCPU, err := load(t, msgs, c)
			cpuMS := float64(procCPU(t.cmd)-cpu0) / float64(time.Millisecond) / float64(max(1, n-failed-shed))
			clientMS := float64(clientCPU) / float64(time.Millisecond) / float64(n)
			if err != nil {
				return fmt.Errorf("%s c=%d: %w", t.name, c, err)
			}
			rows = append(rows, row{t.name, c, rate, p50, p99, failed, shed, cpuMS, clientMS})
			fmt.Fprintf(os.Stderr, "%-11s c=%-3d %7.1f enrol/s  p50 %6.2f ms  p99 %6.2f ms  failed %d  shed %d  server CPU %.2f ms/enrolment\n", t.name, c, rate, p50, p99, failed, shed, cpuMS)
		}
	}

	limitAfter := cryptoLimit(2 * time.Second)
	limit := (limitBefore + limitAfter) / 2

	mode := "one registered device per enrolment, each with its own one-time challenge"
	if static {
		mode = "smimeca in the static-challenge mode: every certificate for " + staticUser + " on one device record"
	}
	fmt.Printf("machine: %d CPUs (GOMAXPROCS %d), %s, go %s; n=%d enrolments per cell; %s\n\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOARCH, runtime.Version(), n, mode)
	cryptoMS := float64(runtime.GOMAXPROCS(0)) * 1000 / limit
	fmt.Printf("crypto limit (in-process, all cores): %.0f enrolments/s (%.2f ms of CPU each; %.0f before the load, %.0f after) = per enrolment one RSA-2048 decrypt (pkcsPKIEnvelope key), one RSA-2048 sign (CertRep), one %s sign (certificate)\n\n", limit, cryptoMS, limitBefore, limitAfter, map[string]string{"EC": "ECDSA P-256", "RSA": "RSA-3072"}[issuerKeyType])
	fmt.Println("| server | clients | enrolments/s | p50 ms | p99 ms | failed | shed (503) | server CPU ms/enrolment | load-generator CPU ms/enrolment | crypto ÷ server CPU | vs scepserver | vs crypto limit |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		vsPeer, vsLimit := "", fmt.Sprintf("%.0f %%", 100*r.rate/limit)
		if r.name == "smimeca" {
			for _, p := range rows {
				if p.name == "scepserver" && p.conc == r.conc {
					vsPeer = fmt.Sprintf("%.2f×", r.rate/p.rate)
				}
			}
		}
		fmt.Printf("| %s | %d | %.1f | %.2f | %.2f | %d/%d | %d | %.2f | %.2f | %.0f %% | %s | %s |\n", r.name, r.conc, r.rate, r.p50, r.p99, r.failed, n, r.shed, r.cpuMS, r.clientMS, 100*cryptoMS/r.cpuMS, vsPeer, vsLimit)
	}
	return nil
}

// load sends msgs with c concurrent clients and returns successful
// enrolments/s, p50/p99 latency in ms of the successful ones, and the number
// of failed enrolments. A failure of smimeca aborts the run; the peer's
// failures are counted and reported.
func load(t *target, msgs [][]byte, c int) (float64, float64, float64, int, int, time.Duration, error) {
	lat := make([]time.Duration, 0, len(msgs))
	bodies := make([][]byte, len(msgs))
	var latMu sync.Mutex
	var failed, shed atomic.Int64
	var firstErr atomic.Value
	start, cpu0 := time.Now(), selfCPU()
	benchutil.Parallel(len(msgs), c, func(_, i int) bool {
		t0 := time.Now()
		if err := post(t, msgs[i], bodies, i); err != nil {
			switch {
			case errors.Is(err, errShed):
				shed.Add(1)
			case t.name == "smimeca":
				firstErr.CompareAndSwap(nil, err)
				return false
			default:
				failed.Add(1)
			}
			return true
		}
		d := time.Since(t0)
		latMu.Lock()
		lat = append(lat, d)
		latMu.Unlock()
		return true
	})
	total, clientCPU := time.Since(start), selfCPU()-cpu0
	if e := firstErr.Load(); e != nil {
		return 0, 0, 0, 0, 0, 0, e.(error)
	}
	// Check every answer after the timed window, so that the load
	// generator's signature checks do not take CPU from the server.
	for i, b := range bodies {
		if b == nil {
			continue
		}
		if err := checkCertRep(t, b); err != nil {
			if t.name == "smimeca" {
				return 0, 0, 0, 0, 0, 0, fmt.Errorf("response %d: %w", i, err)
			}
			failed.Add(1)
		}
	}
	if len(lat) == 0 {
		return 0, 0, 0, int(failed.Load()), int(shed.Load()), clientCPU, nil
	}
	p50, p99 := benchutil.P50P99(lat)
	return float64(len(lat)) / total.Seconds(), p50, p99, int(failed.Load()), int(shed.Load()), clientCPU, nil
}

var httpClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 60 * time.Second}

// post sends one PKIOperation and keeps the raw answer in bodies[i].
func post(t *target, msg []byte, bodies [][]byte, i int) error {
	resp, err := httpClient.Post(t.url+"?operation=PKIOperation", "application/x-pki-message", bytes.NewReader(msg))
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" {
		return errShed
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, body)
	}
	bodies[i] = body
	return nil
}

// errShed is a request the server did not admit (503 with Retry-After):
// load shedding, counted apart from failures.
var errShed = errors.New("shed")

// checkCertRep verifies that body is a CertRep SUCCESS signed by t's RA.
func checkCertRep(t *target, body []byte) error {
	rep, err := smallscep.ParsePKIMessage(body, smallscep.WithCACerts(t.ra))
	if err != nil {
		return fmt.Errorf("parse CertRep: %w", err)
	}
	if rep.PKIStatus != smallscep.SUCCESS {
		return fmt.Errorf("CertRep %s failInfo %s", rep.PKIStatus, rep.FailInfo)
	}
	return nil
}

func enrol(t *target, msg []byte) error {
	bodies := make([][]byte, 1)
	if err := post(t, msg, bodies, 0); err != nil {
		return err
	}
	return checkCertRep(t, bodies[0])
}

type device struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
}

func newDevice() (*device, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	return &device{key: key, cert: c}, err
}

func (d *device) pkcsReq(recipients []*x509.Certificate, challenge, cn string) ([]byte, error) {
	tmpl := x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}
	if challenge == staticSecret {
		tmpl.EmailAddresses = []string{staticUser} // with the static secret the device names its address
	}
	der, err := scepx509.CreateCertificateRequest(rand.Reader, &scepx509.CertificateRequest{
		CertificateRequest: tmpl,
		ChallengePassword:  challenge,
	}, d.key)
	if err != nil {
		return nil, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	m, err := smallscep.NewCSRRequest(csr, &smallscep.PKIMessage{
		MessageType: smallscep.PKCSReq, Recipients: recipients, SignerKey: d.key, SignerCert: d.cert,
	})
	if err != nil {
		return nil, err
	}
	return m.Raw, nil
}

func waitHTTP(url string) error {
	for i := 0; i < 300; i++ {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("server did not start: " + url)
}

func getCACerts(url string) ([]*x509.Certificate, error) {
	resp, err := http.Get(url + "?operation=GetCACert")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.Header.Get("Content-Type") == "application/x-x509-ca-cert" {
		return x509.ParseCertificates(b)
	}
	return smallscep.CACerts(b)
}

func startSmimeca(bin, work string, nChallenges int) (*target, []string, error) {
	data := filepath.Join(work, "smimeca")
	httpAddr, grpcAddr := benchutil.FreeAddr(), benchutil.FreeAddr()
	opsAddr := benchutil.FreeAddr()
	// -issuer-key-type EC by default (not the RSA-3072 default): the
	// configuration for fleets whose clients pick the RA out of GetCACert
	// (iOS, macOS); the crypto limit below measures the same key type.
	args := []string{"serve", "--data", data, "--http-addr", httpAddr, "--grpc-addr", grpcAddr, "--ops-addr", opsAddr, "--log-level", "warn", "--issuer-key-type", issuerKeyType}
	if static {
		args = append(args, "--static-challenge", staticSecret, "--allowed-domains", "example.com")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	url := "http://" + httpAddr + "/scep"
	if err := waitHTTP("http://" + opsAddr + "/healthz"); err != nil {
		return nil, nil, err
	}
	certs, err := getCACerts(url)
	if err != nil {
		return nil, nil, err
	}
	// certs[0] is the RA; encrypt to it alone (the issuing CA is ECDSA).
	t := &target{name: "smimeca", url: url, ra: certs[:1], cmd: cmd, recipie: certs[:1]}

	conn, err := benchutil.Dial(grpcAddr, filepath.Join(data, "credentials", "admin"))
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	if static {
		return t, nil, nil
	}
	client, devices := pb.NewEnrollmentClient(conn), pb.NewDevicesClient(conn)
	fmt.Fprintf(os.Stderr, "registering %d devices and creating a one-time challenge for each…\n", nChallenges)
	challenges := make([]string, nChallenges)
	for i := range challenges {
		if _, err := devices.RegisterDevice(context.Background(), &pb.RegisterDeviceRequest{
			User: fmt.Sprintf("user%d@example.com", i), DeviceId: fmt.Sprintf("bench-%d", i)}); err != nil {
			return nil, nil, err
		}
		r, err := client.CreateChallenge(context.Background(), &pb.CreateChallengeRequest{
			User: fmt.Sprintf("user%d@example.com", i), DeviceId: fmt.Sprintf("bench-%d", i)})
		if err != nil {
			return nil, nil, err
		}
		challenges[i] = r.GetChallenge()
	}
	return t, challenges, nil
}

func startScepserver(bin, work string) (*target, error) {
	depot := filepath.Join(work, "depot")
	if out, err := exec.Command(bin, "ca", "-init", "-depot", depot, "-keySize", "2048").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("scepserver ca -init: %v: %s", err, out)
	}
	addr := benchutil.FreeAddr()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "-depot", depot, "-port", port, "-challenge", "bench-secret", "-allowrenew", "0")
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	url := "http://127.0.0.1:" + port + "/scep"
	if err := waitHTTP(url + "?operation=GetCACaps"); err != nil {
		return nil, err
	}
	certs, err := getCACerts(url)
	if err != nil {
		return nil, err
	}
	return &target{name: "scepserver", url: url, ra: certs, cmd: cmd, recipie: certs}, nil
}

// procCPU returns the user+system CPU time the process has used so far.
func procCPU(cmd *exec.Cmd) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are the
	// 14th and 15th fields overall, in clock ticks (USER_HZ = 100).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// selfCPU returns this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cryptoLimit measures, on all cores, how many times per second this machine
// can do the private-key work one smimeca enrolment needs.
func cryptoLimit(d time.Duration) float64 {
	ra, _ := rsa.GenerateKey(rand.Reader, 2048)
	var issuer crypto.Signer
	if issuerKeyType == "RSA" {
		issuer, _ = rsa.GenerateKey(rand.Reader, 3072)
	} else {
		issuer, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	cek := make([]byte, 32)
	rand.Read(cek)
	//lint:ignore SA1019 SCEP's pkcsPKIEnvelope uses rsaEncryption; this measures what the server must do
	wrapped, _ := rsa.EncryptPKCS1v15(rand.Reader, &ra.PublicKey, cek)
	digest := sha256.Sum256([]byte("certificate"))
	var count atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				//lint:ignore SA1019 the RA's decryption of a SCEP pkcsPKIEnvelope, as the server does it
				if _, err := rsa.DecryptPKCS1v15(nil, ra, wrapped); err != nil {
					panic(err)
				}
				if _, err := rsa.SignPKCS1v15(nil, ra, crypto.SHA256, digest[:]); err != nil {
					panic(err)
				}
				if _, err := issuer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					panic(err)
				}
				count.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	return float64(count.Load()) / time.Since(start).Seconds()
}
