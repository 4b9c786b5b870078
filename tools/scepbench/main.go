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
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smallstep/pkcs7"
	smallscep "github.com/smallstep/scep"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/ca/keystore/libcrypto"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"github.com/smimeca/smimeca/tools/benchutil"
)

func main() {
	bin := flag.String("smimeca", "bin/smimeca", "smimeca binary")
	peer := flag.String("scepserver", "scepserver", "Debian's scepserver binary (empty: measure smimeca alone, for A/B runs of smimeca changes)")
	n := flag.Int("n", 300, "enrolments per run")
	conc := flag.String("c", "1,16", "comma-separated client concurrencies")
	keys := flag.Int("keys", 16, "distinct device keys (messages are unique anyway)")
	flag.StringVar(&issuerKeyType, "issuer-key-type", "EC", "smimeca's issuing CA key type: EC (P-256, smimeca's default) or RSA (3072)")
	flag.StringVar(&backendList, "kms", "softkms,softhsm", "smimeca's key stores to measure, each with its own server: softkms (key files) and/or softhsm (a SoftHSM2 token made by scripts/softhsm.sh, through PKCS#11); a +notlog suffix (softkms+notlog) runs that server with --audit-tlog=false, beside the one with it")
	flag.StringVar(&pprofDir, "pprof", "", "write a CPU profile of each smimeca server during its last cell into this directory (smimeca-<kms>.pprof; the servers run with --ops-pprof)")
	flag.IntVar(&runs, "runs", 1, "rounds of every cell; ratios are reported as the median and the spread over the rounds")
	flag.BoolVar(&static, "static", false, "run smimeca in the labs static-challenge mode: every enrolment with the shared secret for one user, so all certificates land on one device record (the worst case for a per-device inventory)")
	flag.Parse()
	if err := run(*bin, *peer, *n, *keys, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "scepbench:", err)
		os.Exit(1)
	}
}

// static selects the labs static-challenge mode (-static).
var static bool

// backendList (-kms), runs (-runs) and pprofDir (-pprof): which key
// stores, how many rounds, where CPU profiles go.
var (
	backendList string
	runs        int
	pprofDir    string
)

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
	// backend is smimeca's key store ("" for scepserver); challenges are
	// its one-time challenges, next the first unused.
	backend    string
	challenges []string
	next       int
	// serials counts every issued serial, to find one issued twice.
	serials map[string]int
	// ops is smimeca's ops listener (pprof with -pprof).
	ops string
}

func (t *target) smimeca() bool { return t.backend != "" }

func run(bin, peerBin string, n, nkeys int, concList string) error {
	pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
	concs, err := benchutil.Concurrencies(concList)
	if err != nil {
		return err
	}
	backends := strings.Split(backendList, ",")
	work, err := os.MkdirTemp("", "scepbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	fmt.Fprintf(os.Stderr, "generating %d device keys…\n", nkeys)
	devs := make([]*benchutil.Device, nkeys)
	for i := range devs {
		if devs[i], err = benchutil.NewDevice(); err != nil {
			return err
		}
	}

	var targets []*target
	for _, b := range backends {
		sm, err := startSmimeca(bin, filepath.Join(work, b), n*len(concs)*runs+20, b)
		if err != nil {
			return fmt.Errorf("smimeca with %s: %w", b, err)
		}
		defer benchutil.Stop(sm.cmd)
		targets = append(targets, sm)
	}
	// scepserver with an RSA-2048 CA (its default is 4096, which would make it
	// slower for a reason that has nothing to do with the server). Its file
	// depot slows it as it fills (≈400 → ≈200 enrolments/s at 16 clients
	// over five rounds of 2 000), so every round gets a fresh one: the
	// ratios are against scepserver at its fastest, while smimeca keeps its
	// database across rounds.
	var peer *target
	if peerBin != "" {
		if peer, err = startScepserver(peerBin, filepath.Join(work, "depot-0")); err != nil {
			return err
		}
		defer func() { benchutil.Stop(peer.cmd) }()
		targets = append(targets, peer)
	}

	// Each backend's limit is measured before and after the load and
	// averaged: on a shared machine one 2-second window can be off by 15 %.
	limits := map[string]float64{}
	for _, b := range backends {
		b = strings.TrimSuffix(b, notlog)
		if _, done := limits[b]; done {
			continue
		}
		l, err := cryptoLimit(b, filepath.Join(work, "limit-"+b), 2*time.Second)
		if err != nil {
			return err
		}
		limits[b] = l
	}

	type cell struct {
		rates, p50s, p99s, cpuMS, clientMS, vsPeer, vsLimit []float64
		failed, shed                                        int
	}
	cells := map[string]*cell{}
	key := func(name string, c int) string { return fmt.Sprintf("%s/%d", name, c) }
	for r := 0; r < runs; r++ {
		if peer != nil && r > 0 {
			benchutil.Stop(peer.cmd)
			fresh, err := startScepserver(peerBin, filepath.Join(work, fmt.Sprintf("depot-%d", r)))
			if err != nil {
				return err
			}
			*peer = *fresh
		}
		for _, c := range concs {
			rates := map[string]float64{}
			for _, t := range targets {
				msgs, owners := make([][]byte, n), make([]*benchutil.Device, n)
				for i := range msgs {
					owners[i] = devs[i%len(devs)]
					ch := "bench-secret"
					switch {
					case t.smimeca() && static:
						ch = staticSecret
					case t.smimeca():
						ch = t.challenges[t.next]
						t.next++
					}
					var emails []string
					if ch == staticSecret {
						emails = []string{staticUser} // with the static secret the device names its address
					}
					if msgs[i], err = owners[i].PKCSReq(t.recipie, ch, fmt.Sprintf("bench-%d-%d-%d", c, i, time.Now().UnixNano()), emails...); err != nil {
						return err
					}
				}
				// warm-up
				for i := 0; i < 5 && !t.smimeca(); i++ {
					m, _ := devs[0].PKCSReq(t.recipie, "bench-secret", fmt.Sprintf("warm-%d-%d", c, i))
					if err := enrol(t, devs[0], m); err != nil {
						return fmt.Errorf("%s warm-up: %w", t.name, err)
					}
				}
				cpu0 := procCPU(t.cmd)
				var profiled chan error
				if pprofDir != "" && t.smimeca() && r == runs-1 && c == concs[len(concs)-1] {
					profiled = make(chan error, 1)
					go func() { profiled <- profile(t) }()
				}
				rate, p50, p99, failed, shed, clientCPU, err := load(t, msgs, owners, c)
				if profiled != nil {
					if perr := <-profiled; perr != nil {
						return perr
					}
				}
				if err != nil {
					return fmt.Errorf("%s c=%d: %w", t.name, c, err)
				}
				cl := cells[key(t.name, c)]
				if cl == nil {
					cl = &cell{}
					cells[key(t.name, c)] = cl
				}
				cl.rates, cl.p50s, cl.p99s = append(cl.rates, rate), append(cl.p50s, p50), append(cl.p99s, p99)
				cl.cpuMS = append(cl.cpuMS, float64(procCPU(t.cmd)-cpu0)/float64(time.Millisecond)/float64(max(1, n-failed-shed)))
				cl.clientMS = append(cl.clientMS, float64(clientCPU)/float64(time.Millisecond)/float64(n))
				cl.failed, cl.shed = cl.failed+failed, cl.shed+shed
				if t.smimeca() {
					cl.vsLimit = append(cl.vsLimit, rate/limits[t.backend])
				}
				rates[t.name] = rate
				fmt.Fprintf(os.Stderr, "round %d  %-16s c=%-3d %7.1f enrol/s  p50 %6.2f ms  p99 %6.2f ms  failed %d  shed %d\n", r+1, t.name, c, rate, p50, p99, failed, shed)
			}
			for _, t := range targets {
				if peer, ok := rates["scepserver"]; ok && t.smimeca() && peer > 0 {
					cl := cells[key(t.name, c)]
					cl.vsPeer = append(cl.vsPeer, rates[t.name]/peer)
				}
			}
		}
	}
	var bases []string // the key stores, each once
	for _, b := range backends {
		if b = strings.TrimSuffix(b, notlog); !slices.Contains(bases, b) {
			bases = append(bases, b)
		}
	}
	for _, b := range bases {
		after, err := cryptoLimit(b, filepath.Join(work, "limit-"+b), 2*time.Second)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "crypto limit %s: %.0f before, %.0f after\n", b, limits[b], after)
		limits[b] = (limits[b] + after) / 2
	}

	mode := "one registered device per enrolment, each with its own one-time challenge"
	if static {
		mode = "smimeca in the static-challenge mode: every certificate for " + staticUser + " on one device record"
	}
	rsaImpl := "Go's crypto/rsa"
	if libcrypto.Enabled {
		rsaImpl = "OpenSSL (libcrypto tag)"
	}
	fmt.Printf("machine: %d CPUs (GOMAXPROCS %d), %s, go %s; n=%d enrolments per cell, %d round(s); %s; RSA key files through %s\n\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOARCH, runtime.Version(), n, runs, mode, rsaImpl)
	issuer := map[string]string{"EC": "ECDSA P-256", "RSA": "RSA-3072"}[issuerKeyType]
	for _, b := range bases {
		fmt.Printf("crypto limit, %s (in-process, all cores, through the same key store): %.0f enrolments/s (%.2f ms of CPU each) = per enrolment one RSA-2048 decrypt (pkcsPKIEnvelope key), one RSA-2048 sign (CertRep), one %s sign (certificate)\n",
			b, limits[b], float64(runtime.GOMAXPROCS(0))*1000/limits[b], issuer)
	}
	fmt.Println()
	fmt.Println("| server | clients | enrolments/s (median) | p50 ms | p99 ms | failed | shed (503) | serials issued twice | server CPU ms/enrolment | load-generator CPU ms/enrolment | vs scepserver: median (min–max) | vs own crypto limit: median (min–max) |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range concs {
		for _, t := range targets {
			cl := cells[key(t.name, c)]
			twice := "–"
			if t.smimeca() {
				d := 0
				for _, k := range t.serials {
					if k > 1 {
						d++
					}
				}
				twice = strconv.Itoa(d)
			}
			fmt.Printf("| %s | %d | %.1f | %.2f | %.2f | %d/%d | %d | %s | %.2f | %.2f | %s | %s |\n", t.name, c, median(cl.rates), median(cl.p50s), median(cl.p99s),
				cl.failed, n*runs, cl.shed, twice, median(cl.cpuMS), median(cl.clientMS), spread(cl.vsPeer, "×", 1), spread(cl.vsLimit, " %", 100))
		}
	}
	return nil
}

// profile fetches a 2-second CPU profile of t while it is under load into
// pprofDir (the cell must last longer: raise -n).
func profile(t *target) error {
	time.Sleep(300 * time.Millisecond)
	resp, err := http.Get("http://" + t.ops + "/debug/pprof/profile?seconds=2")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(pprofDir, strings.ReplaceAll(t.name, "/", "-")+".pprof"), b, 0o644)
}

// median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread formats xs·scale as "median (min–max)" with unit.
func spread(xs []float64, unit string, scale float64) string {
	if len(xs) == 0 {
		return ""
	}
	lo, hi := slices.Min(xs), slices.Max(xs)
	if len(xs) == 1 {
		return fmt.Sprintf("%.2f%s", xs[0]*scale, unit)
	}
	return fmt.Sprintf("%.2f%s (%.2f–%.2f)", median(xs)*scale, unit, lo*scale, hi*scale)
}

// load sends msgs with c concurrent clients and returns successful
// enrolments/s, p50/p99 latency in ms of the successful ones, and the number
// of failed enrolments. A failure of smimeca aborts the run; the peer's
// failures are counted and reported.
func load(t *target, msgs [][]byte, owners []*benchutil.Device, c int) (float64, float64, float64, int, int, time.Duration, error) {
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
			case t.smimeca():
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
		if err := checkCertRep(t, owners[i], b); err != nil {
			if t.smimeca() {
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

// checkCertRep verifies that body is a CertRep SUCCESS signed by t's RA
// and, for smimeca, opens it with the device's key and counts the issued
// certificate's serial.
func checkCertRep(t *target, d *benchutil.Device, body []byte) error {
	rep, err := smallscep.ParsePKIMessage(body, smallscep.WithCACerts(t.ra))
	if err != nil {
		return fmt.Errorf("parse CertRep: %w", err)
	}
	if rep.PKIStatus != smallscep.SUCCESS {
		return fmt.Errorf("CertRep %s failInfo %s", rep.PKIStatus, rep.FailInfo)
	}
	if !t.smimeca() {
		return nil
	}
	if err := rep.DecryptPKIEnvelope(d.Cert, d.Key); err != nil {
		return fmt.Errorf("open CertRep: %w", err)
	}
	t.serials[rep.CertRepMessage.Certificate.SerialNumber.String()]++
	return nil
}

func enrol(t *target, d *benchutil.Device, msg []byte) error {
	bodies := make([][]byte, 1)
	if err := post(t, msg, bodies, 0); err != nil {
		return err
	}
	return checkCertRep(t, d, bodies[0])
}

// notlog, after a -kms name, runs that server without the audit
// transparency log (--audit-tlog=false), to measure what the log costs.
const notlog = "+notlog"

func startSmimeca(bin, work string, nChallenges int, backend string) (*target, error) {
	name := "smimeca/" + backend
	noTlog := strings.HasSuffix(backend, notlog)
	backend = strings.TrimSuffix(backend, notlog)
	data := filepath.Join(work, "smimeca")
	httpAddr, grpcAddr := benchutil.FreeAddr(), benchutil.FreeAddr()
	opsAddr := benchutil.FreeAddr()
	// -issuer-key-type EC by default, as smimeca's; the crypto limit below
	// measures the same key type. Every client of the benchmark is on one
	// address: no per-IP limit.
	args := []string{"serve", "--data", data, "--http-addr", httpAddr, "--grpc-addr", grpcAddr, "--ops-addr", opsAddr, "--log-level", "warn", "--issuer-key-type", issuerKeyType,
		"--scep-rate-per-ip", "0", "--scep-max-per-ip", "0"}
	if pprofDir != "" {
		args = append(args, "--ops-pprof")
	}
	if noTlog {
		args = append(args, "--audit-tlog=false")
	}
	if static {
		args = append(args, "--static-challenge", staticSecret, "--allowed-domains", "example.com")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	switch backend {
	case "softkms":
		cmd.Args = append(cmd.Args, "--kms", "softkms")
	case "softhsm":
		tok, err := newToken(filepath.Join(work, "softhsm"))
		if err != nil {
			return nil, err
		}
		cmd.Args = append(cmd.Args, "--kms", tok.uri)
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.conf)
	default:
		return nil, fmt.Errorf("-kms %q: use softkms or softhsm", backend)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	url := "http://" + httpAddr + "/scep"
	if err := benchutil.WaitHTTP("http://" + opsAddr + "/healthz"); err != nil {
		return nil, err
	}
	certs, err := benchutil.GetCACerts(url)
	if err != nil {
		return nil, err
	}
	// certs[0] is the RA; encrypt to it alone, as to scepserver's one
	// certificate (a client that encrypts to the root too pays one more
	// RSA public-key operation, on its side).
	t := &target{name: name, backend: backend, url: url, ra: certs[:1], cmd: cmd, recipie: certs[:1], serials: map[string]int{}, ops: opsAddr}

	conn, err := benchutil.Dial(grpcAddr, filepath.Join(data, "credentials", "admin"))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if static {
		return t, nil
	}
	client, devices := pb.NewEnrollmentClient(conn), pb.NewDevicesClient(conn)
	fmt.Fprintf(os.Stderr, "registering %d devices and creating a one-time challenge for each…\n", nChallenges)
	challenges := make([]string, nChallenges)
	for i := range challenges {
		if _, err := devices.RegisterDevice(context.Background(), &pb.RegisterDeviceRequest{
			User: fmt.Sprintf("user%d@example.com", i), DeviceId: fmt.Sprintf("bench-%d", i)}); err != nil {
			return nil, err
		}
		r, err := client.CreateChallenge(context.Background(), &pb.CreateChallengeRequest{
			User: fmt.Sprintf("user%d@example.com", i), DeviceId: fmt.Sprintf("bench-%d", i)})
		if err != nil {
			return nil, err
		}
		challenges[i] = r.GetChallenge()
	}
	t.challenges = challenges
	return t, nil
}

func startScepserver(bin, depot string) (*target, error) {
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
	if err := benchutil.WaitHTTP(url + "?operation=GetCACaps"); err != nil {
		return nil, err
	}
	certs, err := benchutil.GetCACerts(url)
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

// token is a SoftHSM2 token made by scripts/softhsm.sh.
type token struct{ uri, conf string }

// newToken makes (once) a token under dir; run from the repository root,
// as make bench-scep does.
func newToken(dir string) (*token, error) {
	out, err := exec.Command("scripts/softhsm.sh", dir).Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/softhsm.sh: %w", err)
	}
	return &token{uri: strings.TrimSpace(string(out)), conf: filepath.Join(dir, "softhsm2.conf")}, nil
}

// limitKeys returns the RA (RSA-2048) and issuing keys the limit is
// measured with, through smimeca's own key store: key files in dir for
// softkms (OpenSSL's RSA when built with the libcrypto tag, as smimeca
// is), a token of their own in dir (PKCS#11) for softhsm.
func limitKeys(backend, dir string) (ra crypto.Decrypter, issuer crypto.Signer, closer func(), err error) {
	var keys keystore.Store
	if backend == "softkms" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, nil, err
		}
		keys = keystore.Files(dir)
	} else {
		tok, err := newToken(dir)
		if err != nil {
			return nil, nil, nil, err
		}
		os.Setenv("SOFTHSM2_CONF", tok.conf)
		if keys, err = keystore.Open(tok.uri, dir, ""); err != nil {
			return nil, nil, nil, err
		}
	}
	get := func(name keystore.Name, spec keystore.Spec) (crypto.Signer, error) {
		k, err := keys.Key(name)
		if errors.Is(err, fs.ErrNotExist) {
			k, err = keys.Create(name, spec)
		}
		return k, err
	}
	raKey, err := get(keystore.RA, keystore.Spec{Type: ca.KeyTypeRSA, Bits: 2048})
	if err == nil {
		spec := keystore.Spec{Type: ca.KeyTypeEC, Bits: 256}
		if issuerKeyType == "RSA" {
			spec = keystore.Spec{Type: ca.KeyTypeRSA, Bits: 3072}
		}
		issuer, err = get(keystore.Issuing, spec)
	}
	if err != nil {
		keys.Close()
		return nil, nil, nil, err
	}
	return raKey.(crypto.Decrypter), issuer, func() { keys.Close() }, nil
}

// cryptoLimit measures, on all cores, how many times per second this machine
// can do the private-key work one smimeca enrolment needs, through the key
// store backend names.
func cryptoLimit(backend, dir string, d time.Duration) (float64, error) {
	ra, issuer, closeKeys, err := limitKeys(backend, dir)
	if err != nil {
		return 0, err
	}
	defer closeKeys()
	cek := make([]byte, 32)
	rand.Read(cek)
	//lint:ignore SA1019 SCEP's pkcsPKIEnvelope uses rsaEncryption; this measures what the server must do
	wrapped, _ := rsa.EncryptPKCS1v15(rand.Reader, ra.Public().(*rsa.PublicKey), cek)
	//lint:ignore SA1019 as smallstep/pkcs7 asks the RA key for it
	opts := &rsa.PKCS1v15DecryptOptions{}
	digest := sha256.Sum256([]byte("certificate"))
	var count atomic.Int64
	var failed atomic.Value
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := ra.Decrypt(rand.Reader, wrapped, opts); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
				if _, err := ra.(crypto.Signer).Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
				if _, err := issuer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
				count.Add(1)
			}
		}()
	}
	start := time.Now()
	wg.Wait()
	if e := failed.Load(); e != nil {
		return 0, fmt.Errorf("crypto limit through %s: %w", backend, e.(error))
	}
	return float64(count.Load()) / time.Since(start).Seconds(), nil
}
