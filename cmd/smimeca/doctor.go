package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"go.step.sm/crypto/pemutil"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// finding is one doctor check's outcome.
type finding struct {
	name, detail, fix string
	ok                bool
}

// doctor checks a running installation end to end — the public HTTP
// endpoint (SCEP, CRL freshness), gRPC with the credentials, the
// dependencies the server reports on its ops listener (Vault, database,
// CA), the CA's keys (files or token) and disk space — and says what is wrong and
// how to fix it. Exit code 1 when anything is.
func doctor(args []string, stdout io.Writer) error {
	var cf clientFlags
	var dataDir, baseURL, crlURL, opsAddr, kms string
	var minFree int64
	var in intuneFlags
	f := newFlags("doctor")
	cf.register(f, "admin")
	defURL := "http://localhost:8080"
	if a := os.Getenv("SMIMECA_HTTP_ADDR"); a != "" {
		if hp, err := localURLHost(a); err == nil {
			defURL = "http://" + hp
		}
	}
	f.str(&dataDir, "data", "SMIMECA_DATA", "data", "data directory of the installation")
	f.str(&baseURL, "url", "SMIMECA_PUBLIC_URL", defURL, "public base URL of the server (SCEP, CRL)")
	f.str(&crlURL, "crl-url", "", "", "URL relying parties fetch the CRL from (default: <url>/crl)")
	f.str(&kms, "kms", "SMIMECA_KMS", keystore.KMSSoft, "the server's --kms: where the CA keys are (PIN also from $"+kmsPINEnv+")")
	f.str(&opsAddr, "ops-addr", "SMIMECA_OPS_ADDR", "127.0.0.1:9090", "the server's ops listener (health of Vault, database, CA)")
	f.fs.Int64Var(&minFree, "min-free-mib", 1024, "least free space on the data directory's file system, MiB")
	in.register(f)
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	credsSet := os.Getenv("SMIMECA_CREDENTIALS") != ""
	f.fs.Visit(func(fl *flag.Flag) { credsSet = credsSet || fl.Name == "credentials" })
	if !credsSet {
		cf.credentials = filepath.Join(dataDir, "credentials", "admin")
	}
	baseURL = strings.TrimRight(baseURL, "/")
	if crlURL == "" {
		crlURL = baseURL + ca.CRLPath
	}
	client := &http.Client{Timeout: 10 * time.Second}
	var out []finding
	out = append(out, checkSCEP(client, baseURL))
	out = append(out, checkCRL(client, crlURL, filepath.Join(dataDir, "ca", ca.IntermediateCertFile), time.Now()))
	out = append(out, checkGRPC(&cf))
	out = append(out, checkOps(client, opsAddr, dataDir)...)
	out = append(out, checkCAKeys(filepath.Join(dataDir, "ca"), kms, time.Now())...)
	out = append(out, checkDisk(dataDir, minFree<<20))
	if in.tenant != "" {
		out = append(out, checkIntune(&in))
	}
	bad := 0
	for _, x := range out {
		mark := "ok  "
		if !x.ok {
			mark, bad = "FAIL", bad+1
		}
		fmt.Fprintf(stdout, "%s  %-10s %s\n", mark, x.name, x.detail)
		if !x.ok && x.fix != "" {
			fmt.Fprintf(stdout, "      %-10s fix: %s\n", "", x.fix)
		}
	}
	if bad > 0 {
		return &clientError{fmt.Errorf("%d of %d checks failed", bad, len(out))}
	}
	return nil
}

func checkSCEP(c *http.Client, base string) finding {
	u := base + "/scep?operation=GetCACaps"
	resp, err := c.Get(u)
	if err != nil {
		return finding{name: "scep", detail: fmt.Sprintf("%s does not answer: %v", u, err),
			fix: "start the server (`make run` or `smimeca serve`), or pass --url with its public URL"}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "SCEPStandard") {
		return finding{name: "scep", detail: fmt.Sprintf("%s answers %s, not smimeca's capabilities", u, resp.Status),
			fix: "--url must name smimeca's public URL (a proxy in front of it must pass /scep through)"}
	}
	return finding{name: "scep", ok: true, detail: base + "/scep answers GetCACaps"}
}

func checkCRL(c *http.Client, u, issuerPath string, now time.Time) finding {
	resp, err := c.Get(u)
	if err != nil {
		return finding{name: "crl", detail: fmt.Sprintf("%s does not answer: %v", u, err),
			fix: "relying parties cannot check revocation: make the CRL distribution point reachable (--cert-base-url)"}
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	crl, err := x509.ParseRevocationList(der)
	if resp.StatusCode != http.StatusOK || err != nil {
		return finding{name: "crl", detail: fmt.Sprintf("%s answers %s with no readable CRL", u, resp.Status),
			fix: "the server log says why the CRL cannot be generated (the CA key, the database)"}
	}
	if issuer, err := pemutil.ReadCertificate(issuerPath); err == nil {
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			return finding{name: "crl", detail: fmt.Sprintf("the CRL at %s is not signed by this installation's issuing CA", u),
				fix: "the URL serves another CA's CRL: point --cert-base-url (and any mirror) at this server"}
		}
	}
	if !now.Before(crl.NextUpdate) {
		return finding{name: "crl", detail: fmt.Sprintf("the CRL at %s expired at %s (%s ago)", u, crl.NextUpdate.UTC().Format(time.RFC3339), now.Sub(crl.NextUpdate).Round(time.Minute)),
			fix: "smimeca regenerates its CRL on read: if a mirror or CDN serves this URL, refresh it from the server's /crl; if the server itself does, its log says why the CA cannot sign"}
	}
	return finding{name: "crl", ok: true, detail: fmt.Sprintf("%s is current (%d revoked, next update %s)", u, len(crl.RevokedCertificateEntries), crl.NextUpdate.UTC().Format(time.RFC3339))}
}

func checkGRPC(cf *clientFlags) finding {
	conn, err := cf.dial()
	if err != nil {
		return finding{name: "grpc", detail: err.Error(), fix: "pass --credentials with a directory holding client.crt, client.key and ca.crt"}
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		return finding{name: "grpc", detail: fmt.Sprintf("%s: %v", cf.server, status.Convert(err).Message()),
			fix: "start the server, or pass --server with its gRPC address (--grpc-addr)"}
	}
	_, err = pb.NewDevicesClient(conn).ListDevices(ctx, &pb.ListDevicesRequest{User: "doctor@invalid.example"})
	switch status.Code(err) {
	case codes.OK, codes.InvalidArgument, codes.NotFound, codes.PermissionDenied:
		return finding{name: "grpc", ok: true, detail: fmt.Sprintf("%s accepts the credentials in %s", cf.server, cf.credentials)}
	case codes.Unauthenticated:
		return finding{name: "grpc", detail: fmt.Sprintf("%s refuses the credentials in %s: %s", cf.server, cf.credentials, status.Convert(err).Message()),
			fix: "they are revoked or from another installation: issue new ones (`smimeca credentials issue`) with the admin credentials in DATA/credentials/admin"}
	default:
		return finding{name: "grpc", detail: fmt.Sprintf("%s: %v", cf.server, status.Convert(err).Message()), fix: "see the server log"}
	}
}

// depFixes says how to fix each dependency the ops listener reports.
var depFixes = map[string]string{
	"vault":    "escrow is down (imports and bundles answer UNAVAILABLE). With the embedded Vault (make run) smimeca restarts it: see DATA/vault/vault.log; with --vault-addr, check `vault status` and unseal it, and that smimeca's token is valid",
	"database": "the CA database cannot be read or written: check the file system of DATA/db (space, permissions) and the server log",
	"ca":       "the CA cannot sign its CRL: check the key files under DATA/ca and the server log",
	"intune":   "Intune does not answer smimeca: /scep/intune refuses every enrolment until it does. Check the app registration (tenant, client ID, secret or certificate not expired, Intune scep_challenge_provider and Graph Application.Read.All granted with admin consent) and outbound HTTPS to login.microsoftonline.com, graph.microsoft.com and *.manage.microsoft.com; `smimeca doctor --intune-tenant …` runs a dry validation",
}

func checkOps(c *http.Client, addr, dataDir string) []finding {
	u := "http://" + addr + "/healthz"
	resp, err := c.Get(u)
	if err != nil {
		return []finding{{name: "health", detail: fmt.Sprintf("the ops listener %s does not answer: %v", addr, err),
			fix: "pass --ops-addr with the server's --ops-addr (loopback, so run doctor on the server's machine)"}}
	}
	defer resp.Body.Close()
	var h struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&h); err != nil {
		return []finding{{name: "health", detail: u + " answers no health report", fix: "--ops-addr must name smimeca's ops listener"}}
	}
	names := make([]string, 0, len(h.Checks))
	for n := range h.Checks {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []finding
	for _, n := range names {
		if h.Checks[n] == "ok" {
			out = append(out, finding{name: n, ok: true, detail: "up"})
			continue
		}
		fix := strings.ReplaceAll(depFixes[n], "DATA", dataDir)
		out = append(out, finding{name: n, detail: "down: " + h.Checks[n], fix: fix})
	}
	if len(h.Checks) > 0 && h.Checks["vault"] == "" {
		out = append(out, finding{name: "vault", ok: true, detail: "not configured (no escrow)"})
	}
	return out
}

// checkCAFiles checks the CA's key files are private and its certificates
// not about to expire.
// caPairs are the CA certificates doctor checks, each with its key.
var caPairs = []struct {
	file string
	key  keystore.Name
}{{ca.RootCertFile, keystore.Root}, {ca.IntermediateCertFile, keystore.Issuing}, {ca.RACertFile, keystore.RA}}

// checkCAKeys opens the CA's key store as the server does (files, or the
// token with its PIN) and checks that the root, issuing and RA keys are
// there, match their certificates, and that those are valid.
func checkCAKeys(dir, kms string, now time.Time) []finding {
	keys, err := keystore.Open(kms, dir, os.Getenv(kmsPINEnv))
	if err != nil {
		return []finding{{name: "ca-keys", detail: err.Error(), fix: "pass --kms (or $SMIMECA_KMS, $" + kmsPINEnv + ") as the server has them"}}
	}
	defer keys.Close()
	var out []finding
	for _, p := range caPairs {
		c, err := pemutil.ReadCertificate(filepath.Join(dir, p.file))
		if err != nil {
			out = append(out, finding{name: "ca-keys", detail: fmt.Sprintf("%s: %v", p.file, err), fix: "pass --data with the server's data directory, or restore DATA/ca from its backup"})
			continue
		}
		k, err := keys.Key(p.key)
		switch {
		case errors.Is(err, fs.ErrNotExist) && p.key == keystore.Root:
			// The root key is offline; serve never needs it.
			continue
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, finding{name: "ca-keys", detail: fmt.Sprintf("no key %s for %s", keys.Location(p.key), p.file), fix: "pass --kms as the server has it, or restore the key"})
			continue
		case err != nil:
			out = append(out, finding{name: "ca-keys", detail: err.Error(), fix: "see the message"})
			continue
		}
		if pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(c.PublicKey) {
			out = append(out, finding{name: "ca-keys", detail: fmt.Sprintf("%s does not belong to %s", keys.Location(p.key), p.file), fix: "pass --kms as the server has it"})
		}
		switch left := c.NotAfter.Sub(now); {
		case left <= 0:
			out = append(out, finding{name: "ca-keys", detail: p.file + " has expired", fix: "the hierarchy must be renewed: no certificate it issues verifies"})
		case left < 60*24*time.Hour && p.file != ca.RACertFile:
			out = append(out, finding{name: "ca-keys", detail: fmt.Sprintf("%s expires in %d days", p.file, int(left.Hours()/24)), fix: "plan the CA's renewal now"})
		}
	}
	if len(out) == 0 {
		out = append(out, finding{name: "ca-keys", ok: true, detail: fmt.Sprintf("root, issuing and RA keys in %s match their valid certificates", keystore.RedactKMS(kms))})
	}
	return out
}

func checkDisk(dir string, minFree int64) finding {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return finding{name: "disk", detail: fmt.Sprintf("%s: %v", dir, err), fix: "pass --data with the server's data directory"}
	}
	free := int64(st.Bavail) * int64(st.Bsize)
	if free < minFree {
		return finding{name: "disk", detail: fmt.Sprintf("%d MiB free on the file system of %s", free>>20, dir),
			fix: "the database, audit log and Vault need room (enrolments fail cleanly when it runs out): free space or grow the volume"}
	}
	return finding{name: "disk", ok: true, detail: fmt.Sprintf("%d MiB free", free>>20)}
}
