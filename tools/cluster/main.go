// Command cluster runs smimeca as several nodes on loopback, on the
// engines a scaled-out installation uses: a throw-away PostgreSQL
// (scripts/postgres.sh) for the CA's database, a 3-node Vault cluster with
// Raft storage (internal/vaultproc) for the escrow, N `smimeca serve` nodes
// sharing one CA (the first node's CA directory and first-start credentials
// copied to the others, as files mounted read-only would be), and a
// round-robin front: HTTP (SCEP, CRL, OCSP) through Go's
// httputil.ReverseProxy, gRPC passed through at the TCP level (mutual TLS
// ends at the nodes). It prints how to point clients at the front, then
// runs until interrupted (or for -for).
//
// Run it through `make cluster`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/freeport"
	"github.com/smimeca/smimeca/internal/vaultproc"
	"github.com/smimeca/smimeca/tools/benchutil"
)

func main() {
	bin := flag.String("smimeca", "bin/smimeca", "smimeca binary")
	nodes := flag.Int("nodes", 3, "smimeca nodes")
	httpFront := flag.String("http", "127.0.0.1:18080", "the front's HTTP address (SCEP, CRL, OCSP)")
	grpcFront := flag.String("grpc", "127.0.0.1:19443", "the front's gRPC address")
	dir := flag.String("dir", "", "working directory (default: a new one under /tmp)")
	runFor := flag.Duration("for", 0, "stop after this long (0: until interrupted)")
	identityCA := flag.String("device-identity-ca", "", "the nodes' --device-identity-ca (PEM of the MDM's device identity CA), for bundles")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *runFor > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *runFor)
		defer cancel()
	}
	if err := run(ctx, *bin, *nodes, *httpFront, *grpcFront, *dir, *identityCA); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, n int, httpFront, grpcFront, dir, identityCA string) error {
	if dir == "" {
		d, err := os.MkdirTemp("", "smimeca-cluster")
		if err != nil {
			return err
		}
		dir = d
	}
	// PostgreSQL's directory must be reachable by the postgres user.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	pgDir := filepath.Join(dir, "postgres")
	out, err := exec.Command("scripts/postgres.sh", pgDir, strconv.Itoa(freePort())).Output()
	if err != nil {
		return fmt.Errorf("scripts/postgres.sh: %w", err)
	}
	defer exec.Command("scripts/postgres.sh", pgDir, "stop").Run()
	dsn := strings.TrimSpace(string(out))

	vc, err := vaultproc.StartCluster(ctx, benchutil.VaultBinary(), filepath.Join(dir, "vault"), 3, nil)
	if err != nil {
		return err
	}
	defer vc.Stop()
	leader, err := vc.WaitLeader(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	root, _ := vc.Client(leader, vc.RootToken)
	if err := escrow.Setup(ctx, root, escrow.Config{}); err != nil {
		return err
	}
	tok, err := vc.ScopedToken(ctx, "smimeca", "transit", "smimeca-escrow")
	if err != nil {
		return err
	}
	tokenFile := filepath.Join(dir, "vault-token")
	if err := os.WriteFile(tokenFile, []byte(tok), 0o600); err != nil {
		return err
	}

	public := "http://" + httpFront
	common := []string{"--db", dsn, "--public-url", public, "--vault-addr", vc.Addrs(), "--vault-token-file", tokenFile, "--log-format", "json"}
	if identityCA != "" {
		common = append(common, "--device-identity-ca", identityCA)
	}
	first := filepath.Join(dir, "node1")
	if out, err := exec.Command(bin, append([]string{"init", "--data", first}, common...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("smimeca init: %v: %s", err, out)
	}
	var httpAddrs, grpcAddrs []string
	for i := 1; i <= n; i++ {
		data := filepath.Join(dir, fmt.Sprintf("node%d", i))
		if i > 1 {
			if err := os.MkdirAll(data, 0o700); err != nil {
				return err
			}
			if out, err := exec.Command("cp", "-a", filepath.Join(first, "ca"), filepath.Join(data, "ca")).CombinedOutput(); err != nil {
				return fmt.Errorf("copy the CA: %v: %s", err, out)
			}
		}
		h, g, o := benchutil.FreeAddr(), benchutil.FreeAddr(), benchutil.FreeAddr()
		logf, err := os.Create(filepath.Join(dir, fmt.Sprintf("node%d.log", i)))
		if err != nil {
			return err
		}
		cmd := exec.Command(bin, append([]string{"serve", "--data", data, "--http-addr", h, "--grpc-addr", g, "--ops-addr", o}, common...)...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return err
		}
		defer benchutil.Stop(cmd)
		if err := benchutil.WaitHealthy("http://"+o+"/healthz", time.Minute); err != nil {
			return fmt.Errorf("node %d: %w (log: %s)", i, err, logf.Name())
		}
		if i == 1 {
			// The others start on node 1's first-start credentials,
			// registered in the shared database.
			for j := 2; j <= n; j++ {
				d := filepath.Join(dir, fmt.Sprintf("node%d", j))
				os.MkdirAll(d, 0o700)
				if out, err := exec.Command("cp", "-a", filepath.Join(first, "credentials"), filepath.Join(d, "credentials")).CombinedOutput(); err != nil {
					return fmt.Errorf("copy the credentials: %v: %s", err, out)
				}
			}
		}
		httpAddrs, grpcAddrs = append(httpAddrs, h), append(grpcAddrs, g)
	}

	hl, err := net.Listen("tcp", httpFront)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: roundRobin(httpAddrs), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(hl)
	defer srv.Close()
	gl, err := net.Listen("tcp", grpcFront)
	if err != nil {
		return err
	}
	defer gl.Close()
	go tcpRoundRobin(gl, grpcAddrs)

	fmt.Printf(`smimeca cluster ready in %s
  nodes:       %d (logs %s/node*.log), HTTP %s, gRPC %s
  front:       SCEP %s/scep · gRPC %s (round robin)
  PostgreSQL:  %s
  Vault:       %s (Raft, 3 nodes)
  clients:     export SMIMECA_SERVER=%s SMIMECA_CREDENTIALS=%s/credentials/admin
               scepclient -server-url %s/scep -challenge "$(smimeca challenge create …)" …
`, dir, n, dir, strings.Join(httpAddrs, " "), strings.Join(grpcAddrs, " "), public, grpcFront, dsn, vc.Addrs(), grpcFront, first, public)
	<-ctx.Done()
	return nil
}

func freePort() int {
	p, err := freeport.Port()
	if err != nil {
		return 25432
	}
	return p
}

// roundRobin proxies each HTTP request to the next node, and to the one
// after when a node does not answer.
func roundRobin(addrs []string) http.Handler {
	var next atomic.Uint64
	proxies := make([]*httputil.ReverseProxy, len(addrs))
	for i, a := range addrs {
		proxies[i] = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: a})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := int(next.Add(1)) % len(addrs)
		// Try the nodes in turn until one accepts a connection.
		for k := range addrs {
			a := addrs[(i+k)%len(addrs)]
			if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
				c.Close()
				proxies[(i+k)%len(addrs)].ServeHTTP(w, r)
				return
			}
		}
		http.Error(w, "no smimeca node answers", http.StatusBadGateway)
	})
}

// tcpRoundRobin passes each connection to the next node that accepts one.
func tcpRoundRobin(l net.Listener, addrs []string) {
	var next int
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		next++
		go func(c net.Conn, start int) {
			defer c.Close()
			for k := range addrs {
				up, err := net.DialTimeout("tcp", addrs[(start+k)%len(addrs)], time.Second)
				if err != nil {
					continue
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
				return
			}
		}(c, next)
	}
}
