// Command importbench measures bulk PFX import into the real Vault: it
// generates N PFX files before timing, starts a real Vault (internal/vaultproc)
// and smimeca, imports them with `smimeca pfx import --manifest`, and prints
// PFX/s and smimeca's peak RSS next to the two limits measured in the same
// run on the same machine: the PKCS#12 decode rate alone (in-process, all
// cores) and the Vault write rate alone (escrow.Store.Put of the same
// records, same concurrency, no PFX, no gRPC).
//
// Run it through `make bench-import` (scripts/bench-import.sh).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/vaultproc"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/tools/benchutil"
)

func main() {
	bin := flag.String("smimeca", "bin/smimeca", "smimeca binary")
	n := flag.Int("n", 10000, "PFX files")
	users := flag.Int("users", 1000, "distinct users (n/users certificates each)")
	conc := flag.Int("c", 8, "import concurrency")
	flag.Parse()
	if err := run(*bin, *n, *users, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "importbench:", err)
		os.Exit(1)
	}
}

type file struct {
	user, path string
	data       []byte
}

func run(bin string, n, users, conc int) error {
	work, err := os.MkdirTemp("", "importbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	const password = "bench-pfx-password"

	fmt.Fprintf(os.Stderr, "generating %d PFX files for %d users…\n", n, users)
	files, err := generate(work, n, users, password)
	if err != nil {
		return err
	}
	pwFile := filepath.Join(work, "pw")
	os.WriteFile(pwFile, []byte(password), 0o600)

	ctx := context.Background()
	vaultAddr := benchutil.FreeAddr()
	vp, err := vaultproc.Start(ctx, benchutil.VaultBinary(), filepath.Join(work, "vault"), vaultAddr, nil)
	if err != nil {
		return err
	}
	defer vp.Stop()
	root, _ := vp.Client()
	if err := escrow.Setup(ctx, root, escrow.Config{}); err != nil {
		return err
	}
	tok, err := vp.ScopedToken(ctx, "smimeca", "transit", "smimeca-escrow")
	if err != nil {
		return err
	}
	tokFile := filepath.Join(work, "token")
	os.WriteFile(tokFile, []byte(tok), 0o600)

	// Limit 1: PKCS#12 decode alone, all cores.
	decodeRate := decodeLimit(files[:min(len(files), 2000)], password)

	// Limit 2: Vault write alone (separate users so it does not help the
	// timed run), same concurrency.
	vc, err := escrow.Connect(ctx, escrow.VaultConfig{Address: vp.Addr, Token: tok})
	if err != nil {
		return err
	}
	// Same certificates per user as the timed run, so entries grow alike.
	sub := files[:min(len(files), 2000)]
	writeRate, err := vaultLimit(ctx, escrow.New(vc.Logical(), escrow.Config{}), sub, max(1, len(sub)*users/n), password, conc)
	if err != nil {
		return err
	}

	// smimeca, via the CLI, as an admin would.
	data := filepath.Join(work, "smimeca")
	httpAddr, grpcAddr := benchutil.FreeAddr(), benchutil.FreeAddr()
	srv := exec.Command(bin, "serve", "--data", data, "--http-addr", httpAddr, "--grpc-addr", grpcAddr, "--ops-addr", benchutil.FreeAddr(),
		"--vault-addr", vp.Addr, "--vault-token-file", tokFile, "--log-level", "error")
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Signal(os.Interrupt); srv.Wait() }()
	if err := benchutil.WaitTCP(grpcAddr); err != nil {
		return err
	}
	first := min(n/10, 1000)
	imp := func(part []file, name string) (time.Duration, error) {
		manifest := filepath.Join(work, name)
		var b strings.Builder
		for _, f := range part {
			fmt.Fprintf(&b, "%s,%s,%s,\n", f.user, f.path, pwFile)
		}
		os.WriteFile(manifest, []byte(b.String()), 0o600)
		start := time.Now()
		cmd := exec.Command(bin, "pfx", "import", "--manifest", manifest, "--concurrency", strconv.Itoa(conc),
			"--server", grpcAddr, "--credentials", filepath.Join(data, "credentials", "admin"), "--quiet")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("pfx import: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), fmt.Sprintf("imported %d,", len(part))) {
			return 0, fmt.Errorf("unexpected report: %s", out)
		}
		return time.Since(start), nil
	}
	d1, err := imp(files[:first], "m1.csv")
	if err != nil {
		return err
	}
	rss1 := peakRSS(srv.Process.Pid)
	d2, err := imp(files[first:], "m2.csv")
	if err != nil {
		return err
	}
	rss2 := peakRSS(srv.Process.Pid)
	rate := float64(n) / (d1 + d2).Seconds()
	lower := min(decodeRate, writeRate)

	fmt.Printf("machine: %d CPUs, go %s; %d PFX (go-pkcs12 Modern2023: PBES2/AES-256, SHA-256 MAC, RSA-2048) for %d users, import concurrency %d\n\n",
		runtime.NumCPU(), runtime.Version(), n, users, conc)
	fmt.Println("| measure | value |")
	fmt.Println("|---|---:|")
	fmt.Printf("| smimeca `pfx import --manifest` (CLI → gRPC → decode, rules → Transit + KV CAS) | %.0f PFX/s |\n", rate)
	fmt.Printf("| limit: PKCS#12 decode alone (in-process, %d cores) | %.0f PFX/s |\n", runtime.GOMAXPROCS(0), decodeRate)
	fmt.Printf("| limit: Vault write alone (escrow.Store.Put, concurrency %d) | %.0f PFX/s |\n", conc, writeRate)
	fmt.Printf("| ratio to the lower limit | %.0f %% |\n", 100*rate/lower)
	fmt.Printf("| smimeca peak RSS after %d files | %.1f MiB |\n", first, float64(rss1)/1024)
	fmt.Printf("| smimeca peak RSS after %d files | %.1f MiB |\n", n, float64(rss2)/1024)
	return nil
}

func generate(dir string, n, users int, password string) ([]file, error) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	ca, _ := x509.ParseCertificate(caDER)
	// RSA generation would dominate; certificates are unique, keys repeat.
	keys := make([]*rsa.PrivateKey, 16)
	for i := range keys {
		keys[i], _ = rsa.GenerateKey(rand.Reader, 2048)
	}
	files := make([]file, n)
	var firstErr atomic.Value
	benchutil.Parallel(n, runtime.GOMAXPROCS(0), func(_, i int) bool {
		user := fmt.Sprintf("user%04d@example.com", i%users)
		k := keys[i%len(keys)]
		sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: user}, EmailAddresses: []string{user},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Duration(365+i%700) * 24 * time.Hour),
			KeyUsage: x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			firstErr.CompareAndSwap(nil, err)
			return false
		}
		c, _ := x509.ParseCertificate(der)
		pfx, err := pkcs12.Modern2023.Encode(k, c, []*x509.Certificate{ca}, password)
		if err != nil {
			firstErr.CompareAndSwap(nil, err)
			return false
		}
		p := filepath.Join(dir, fmt.Sprintf("f%05d.p12", i))
		if err := os.WriteFile(p, pfx, 0o600); err != nil {
			firstErr.CompareAndSwap(nil, err)
			return false
		}
		files[i] = file{user: user, path: p, data: pfx}
		return true
	})
	if e := firstErr.Load(); e != nil {
		return nil, e.(error)
	}
	return files, nil
}

func decodeLimit(files []file, password string) float64 {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < runtime.GOMAXPROCS(0); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(files) {
					return
				}
				if _, err := pfxconnector.Decode(files[i].data, password); err != nil {
					panic(err)
				}
			}
		}()
	}
	wg.Wait()
	return float64(len(files)) / time.Since(start).Seconds()
}

func vaultLimit(ctx context.Context, s *escrow.Store, files []file, users int, password string, conc int) (float64, error) {
	recs := make([]policy.EscrowedKey, len(files))
	for i, f := range files {
		d, err := pfxconnector.Decode(f.data, password)
		if err != nil {
			return 0, err
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(d.Key)
		recs[i] = policy.EscrowedKey{Escrowed: policy.CertificateMetadata(d.Cert), CertDER: d.Cert.Raw, KeyPKCS8: kder}
	}
	var firstErr atomic.Value
	start := time.Now()
	benchutil.Parallel(len(recs), conc, func(_, i int) bool {
		if _, _, err := s.Put(ctx, fmt.Sprintf("limit-%d@example.com", i%users), recs[i]); err != nil {
			firstErr.CompareAndSwap(nil, err)
			return false
		}
		return true
	})
	if e := firstErr.Load(); e != nil {
		return 0, e.(error)
	}
	return float64(len(recs)) / time.Since(start).Seconds(), nil
}

// peakRSS returns VmHWM of a process in KiB.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}
