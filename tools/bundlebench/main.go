// Command bundlebench measures GetUserBundle against the real Vault for
// users with 1, 10 and 50 escrowed certificates at 1 and 16 concurrent
// callers, counts the Vault requests one call makes (from Vault's own audit
// log), and measures in the same run the in-process cost of re-wrapping one
// PKCS#12 — the work a bundle cannot avoid per certificate.
//
// Run it through `make bench-bundle` (scripts/bench-bundle.sh).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/vaultproc"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"github.com/smimeca/smimeca/tools/benchutil"
)

func main() {
	bin := flag.String("smimeca", "bin/smimeca", "smimeca binary")
	calls := flag.Int("calls", 200, "calls per cell")
	flag.Parse()
	if err := run(*bin, *calls); err != nil {
		fmt.Fprintln(os.Stderr, "bundlebench:", err)
		os.Exit(1)
	}
}

func run(bin string, calls int) error {
	ctx := context.Background()
	work, err := os.MkdirTemp("", "bundlebench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	vp, err := vaultproc.Start(ctx, benchutil.VaultBinary(), filepath.Join(work, "vault"), benchutil.FreeAddr(), nil)
	if err != nil {
		return err
	}
	defer vp.Stop()
	root, _ := vp.Client()
	if err := escrow.Setup(ctx, root, escrow.Config{}); err != nil {
		return err
	}
	auditPath := filepath.Join(work, "vault-audit.log")
	if err := root.Sys().EnableAuditWithOptionsWithContext(ctx, "file", &vault.EnableAuditOptions{Type: "file", Options: map[string]string{"file_path": auditPath}}); err != nil {
		return err
	}
	tok, err := vp.ScopedToken(ctx, "smimeca", "transit", "smimeca-escrow")
	if err != nil {
		return err
	}
	tokFile := filepath.Join(work, "token")
	os.WriteFile(tokFile, []byte(tok), 0o600)
	vc, _ := escrow.Connect(ctx, escrow.VaultConfig{Address: vp.Addr, Token: tok})
	store := escrow.New(vc.Logical(), escrow.Config{})

	sizes := []int{1, 10, 50}
	fmt.Fprintln(os.Stderr, "escrowing 61 certificates…")
	caKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Bench CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour * 3650), KeyUsage: x509.KeyUsageCertSign}
	var sampleCert *x509.Certificate
	for _, n := range sizes {
		user := fmt.Sprintf("u%d@example.com", n)
		for i := 0; i < n; i++ {
			sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
			tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: user}, EmailAddresses: []string{user},
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Duration(30+i*30) * 24 * time.Hour),
				KeyUsage: x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
			der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
			if err != nil {
				return err
			}
			c, _ := x509.ParseCertificate(der)
			sampleCert = c
			kder, _ := x509.MarshalPKCS8PrivateKey(key)
			if _, _, err := store.Put(ctx, user, policy.EscrowedKey{Escrowed: policy.CertificateMetadata(c), CertDER: der, KeyPKCS8: kder}); err != nil {
				return err
			}
		}
	}

	// In-process limit: re-wrapping one PKCS#12 (3DES/SHA-1, iOS default).
	const rewraps = 200
	start := time.Now()
	for i := 0; i < rewraps; i++ {
		if _, err := pfxconnector.Rewrap(key, sampleCert, nil, pfxconnector.Legacy); err != nil {
			return err
		}
	}
	rewrapMS := float64(time.Since(start).Microseconds()) / 1000 / rewraps

	// A device identity CA that issues each device its own identity:
	// bundles are encrypted to the registered identity (PKCS#1 v1.5,
	// AES-256-CBC).
	identityCA := filepath.Join(work, "mdm-ca.pem")
	os.WriteFile(identityCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mustCreate(caTmpl, caTmpl, &caKey.PublicKey, caKey)}), 0o600)

	data := filepath.Join(work, "smimeca")
	grpcAddr := benchutil.FreeAddr()
	srv := exec.Command(bin, "serve", "--data", data, "--http-addr", benchutil.FreeAddr(), "--grpc-addr", grpcAddr, "--ops-addr", benchutil.FreeAddr(),
		"--vault-addr", vp.Addr, "--vault-token-file", tokFile, "--log-level", "error", "--device-identity-ca", identityCA)
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Signal(os.Interrupt); srv.Wait() }()
	if err := benchutil.WaitTCP(grpcAddr); err != nil {
		return err
	}
	admin, err := benchutil.Dial(grpcAddr, filepath.Join(data, "credentials", "admin"))
	if err != nil {
		return err
	}
	defer admin.Close()
	devices := pb.NewDevicesClient(admin)
	for _, n := range sizes {
		for d := -1; d < 16; d++ {
			id := fmt.Sprintf("dev-%d", d)
			if d < 0 {
				id = "probe"
			}
			identity, err := benchutil.DeviceIdentity(caTmpl, caKey, id)
			if err != nil {
				return err
			}
			if _, err := devices.RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: fmt.Sprintf("u%d@example.com", n), DeviceId: id, IdentityCertificate: identity}); err != nil {
				return err
			}
		}
	}
	conn, err := benchutil.Dial(grpcAddr, filepath.Join(data, "credentials", "profile"))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewProfileBundlesClient(conn)

	// Vault requests of one call, from Vault's audit log.
	before := countRequests(auditPath)
	if _, err := client.GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "u50@example.com", DeviceId: "probe"}); err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond)
	after := countRequests(auditPath)
	perCall := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			perCall[k] = d
		}
	}

	fmt.Printf("machine: %d CPUs, go %s; real Vault (file storage) and smimeca on the same machine; %d calls per cell\n\n", runtime.NumCPU(), runtime.Version(), calls)
	fmt.Printf("in-process limit: re-wrapping one PKCS#12 (RSA-2048, 3DES/SHA-1) costs %.2f ms of CPU\n\n", rewrapMS)
	var reqs []string
	for k, v := range perCall {
		reqs = append(reqs, fmt.Sprintf("%s ×%d", k, v))
	}
	sort.Strings(reqs)
	fmt.Printf("Vault requests of one GetUserBundle for a user with 50 certificates: %s\n\n", strings.Join(reqs, ", "))
	fmt.Println("| certificates | callers | calls/s | p50 ms | p99 ms | calls/s vs re-wrap limit (cores ÷ n re-wraps) |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|")
	for _, n := range sizes {
		for _, c := range []int{1, 16} {
			rate, p50, p99, err := load(client, fmt.Sprintf("u%d@example.com", n), calls, c)
			if err != nil {
				return err
			}
			limit := float64(runtime.GOMAXPROCS(0)) * 1000 / (float64(n) * rewrapMS)
			fmt.Printf("| %d | %d | %.1f | %.2f | %.2f | %.0f %% |\n", n, c, rate, p50, p99, 100*rate/limit)
		}
	}
	return nil
}

func load(client pb.ProfileBundlesClient, user string, calls, c int) (float64, float64, float64, error) {
	return benchutil.Timed(calls, c, func(w, _ int) error {
		_, err := client.GetUserBundle(context.Background(), &pb.GetUserBundleRequest{User: user, DeviceId: fmt.Sprintf("dev-%d", w)})
		return err
	})
}

// countRequests counts audit-log requests by operation and mount path.
func countRequests(path string) map[string]int {
	out := map[string]int{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e struct {
			Type    string `json:"type"`
			Request struct {
				Operation string `json:"operation"`
				Path      string `json:"path"`
			} `json:"request"`
		}
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Type != "request" {
			continue
		}
		p := e.Request.Path
		switch {
		case strings.Contains(p, "/data/users/"):
			p = "KV " + e.Request.Operation
		case strings.Contains(p, "/decrypt/"):
			p = "Transit decrypt"
		case strings.Contains(p, "/encrypt/"):
			p = "Transit encrypt"
		}
		out[p]++
	}
	return out
}

// mustCreate signs a certificate or exits.
func mustCreate(tmpl, parent *x509.Certificate, pub any, key *rsa.PrivateKey) []byte {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bundlebench:", err)
		os.Exit(1)
	}
	return der
}
