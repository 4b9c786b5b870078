// Command scalebench measures whether smimeca's cost stays flat in the size
// of its stores: SCEP enrolments/s at 16 clients and GetUserBundle p50/p99,
// first on fresh stores, then after filling them with a fleet's worth of
// history — by default 1 000 000 issued certificates over 250 000 devices in
// the CA database and 250 000 users × 4 escrowed certificates in Vault —
// for the embedded bbolt database and for PostgreSQL, in one run. A full
// store is compared with a twin that stayed fresh, measured right after it.
// On the full PostgreSQL store it also measures several nodes against one,
// and it reports the CPU each component spends per operation, for the
// sizing model in BENCHMARKS.md.
//
// The stores are filled through smimeca's own store code, not through its
// network API (which would take hours for a million RSA enrolments): for
// the CA database the loader opens the database as serve does and, per
// certificate, signs it with the CA's issuing key (ca.Authority.Sign) and
// commits it with its device-inventory row (nosqlstore.RecordIssued), after
// registering the device (nosqlstore.PutDevice) — the transactions an
// enrolment commits, minus the challenge; for Vault it escrows each user's
// history with escrow.Store.PutMany (one Transit batch encrypt, one KV write
// per user), the store an import writes through. The measured servers
// then read exactly those records. To keep the fill in minutes, the
// issuing key is ECDSA P-256 (serve's --issuer-key-type EC), the devices'
// public keys come from a pool of 64 RSA-2048 keys, and the escrowed
// certificates share a pool of 16 private keys (each certificate is
// distinct); none of this changes a record's size or a lookup's path.
//
// Run it through `make bench-scale` (scripts/bench-scale.sh).
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for the database size
	smallscep "github.com/smallstep/scep"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/internal/vaultproc"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"github.com/smimeca/smimeca/tools/benchutil"
)

// publicURL is the base URL every server and the loader put into
// certificates, so that loaded and enrolled certificates are the same size.
const publicURL = "http://smimeca.scale.test"

// freshAgain is the state of a store's twin that stayed fresh, measured
// right after the full store; full cells are compared with it.
const freshAgain = "fresh, again"

// benchUsers are the users whose bundles are measured; each has
// -escrowed certificates, fresh or full.
const benchUsers = 16

type config struct {
	bin                              string
	stores                           []string
	certs, devices, users, escrowed  int
	n, rounds, calls, clients, nodes int
	loaders                          int
	work, pgOpts                     string
}

func main() {
	var cfg config
	var stores string
	flag.StringVar(&cfg.bin, "smimeca", "bin/smimeca", "smimeca binary")
	flag.StringVar(&stores, "stores", "bbolt,postgres", "CA databases to measure: bbolt and/or postgres")
	flag.IntVar(&cfg.certs, "certs", 1_000_000, "issued certificates to load into each CA database")
	flag.IntVar(&cfg.devices, "devices", 250_000, "devices they are spread over (one user each)")
	flag.IntVar(&cfg.users, "users", 250_000, "users to escrow certificates for in Vault")
	flag.IntVar(&cfg.escrowed, "escrowed", 4, "escrowed certificates per user (also the measured users' bundle size)")
	flag.IntVar(&cfg.n, "n", 800, "enrolments per round")
	flag.IntVar(&cfg.rounds, "rounds", 3, "rounds per cell (medians are reported)")
	flag.IntVar(&cfg.calls, "calls", 400, "GetUserBundle calls per round")
	flag.IntVar(&cfg.clients, "c", 16, "concurrent clients")
	flag.IntVar(&cfg.nodes, "nodes", 3, "smimeca nodes for the multi-node cell on the full PostgreSQL store (≤ 1: none)")
	flag.IntVar(&cfg.loaders, "loaders", 16, "concurrent writers of the loader")
	flag.StringVar(&cfg.pgOpts, "pg-opts", "-c shared_buffers=2GB -c max_wal_size=16GB -c checkpoint_timeout=30min",
		"PostgreSQL settings: a cache that holds the indexes of a million certificates, and checkpoints far enough apart that a cell is not measured across one (each page's first change after a checkpoint writes the whole page to the WAL)")
	flag.StringVar(&cfg.work, "dir", "", "working directory (default: a new one under /tmp, removed at the end)")
	flag.Parse()
	cfg.stores = strings.Split(stores, ",")
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "scalebench:", err)
		os.Exit(1)
	}
}

// cell is one measurement: a store in one state with some nodes.
type cell struct {
	store, state string
	nodes        int
	enrolRate    float64 // median enrolments/s
	enrolP50     float64
	enrolP99     float64
	failed, shed int
	bundleRate   float64
	bundleP50    float64
	bundleP99    float64
	rssMiB       float64 // peak RSS of a node (the largest), mapped database pages included
	anonMiB      float64 // peak anonymous RSS of a node (heap, stacks: what the process allocated)
	dbBytes      int64
	// pgCommits and pgRollbacks count PostgreSQL's transactions during
	// the cell (pg_stat_database): rollbacks are mostly serialization
	// failures, each retried.
	pgCommits, pgRollbacks int64
	// enrolCPU and bundleCPU are the CPU ms one enrolment and one bundle
	// cost each component (medians over the rounds).
	enrolCPU, bundleCPU cpuSnap
	// walKiB and fpi are the WAL PostgreSQL writes per enrolment: KiB and
	// full-page images.
	walKiB, fpi float64
}

// components whose CPU time is measured, as the model in BENCHMARKS.md
// needs them.
var components = []string{"smimeca", "postgres", "vault"}

// cpuSnap is CPU time in ms by component.
type cpuSnap map[string]float64

// snapCPU reads the CPU time (user + system) so far of the nodes, of every
// vault process, of this process, and of the whole machine. PostgreSQL's
// share is the machine's minus the others': its backends come and go with
// the connections (database/sql keeps two idle), so their own counters
// leave with them.
func snapCPU(nodes []*node) cpuSnap {
	out := cpuSnap{}
	ours := map[int]bool{}
	for _, nd := range nodes {
		ours[nd.cmd.Process.Pid] = true
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		switch name := strings.TrimSpace(string(comm)); {
		case ours[pid]:
			out["smimeca"] += procCPU(pid)
		case name == "vault":
			out["vault"] += procCPU(pid)
		case pid == os.Getpid():
			out["self"] += procCPU(pid)
		}
	}
	// The machine: the first line of /proc/stat, in ticks, all but idle
	// and iowait.
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		for i, v := range f[1:] {
			if i == 3 || i == 4 {
				continue
			}
			t, _ := strconv.ParseFloat(v, 64)
			out["machine"] += t * 10
		}
	}
	out["postgres"] = out["machine"] - out["smimeca"] - out["vault"] - out["self"]
	return out
}

// procCPU is a process's CPU time (user + system) in ms.
func procCPU(pid int) float64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command: utime and stime are the
	// 12th and 13th, in clock ticks (100 per second).
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) * 10
}

// per returns the CPU ms per operation between before and s, for ops
// operations. A process that exited in between makes its component's
// figure an underestimate; none does during a cell.
func (s cpuSnap) per(before cpuSnap, ops int) cpuSnap {
	out := cpuSnap{}
	for _, k := range components {
		out[k] = max(0, s[k]-before[k]) / float64(ops)
	}
	return out
}

func medianCPU(xs []cpuSnap) cpuSnap {
	out := cpuSnap{}
	for _, k := range components {
		var v []float64
		for _, x := range xs {
			v = append(v, x[k])
		}
		out[k] = median(v)
	}
	return out
}

// bench holds what every cell shares.
type bench struct {
	cfg        config
	vault      *vaultproc.Cluster
	vaultAddr  string
	tokenFile  string
	identityCA string // PEM file
	identity   []byte // DER: the loaded devices' MDM identity certificate
	// mdmCA and mdmKey issue each measured bundle device its own identity.
	mdmCA   *x509.Certificate
	mdmKey  crypto.Signer
	devKeys []*benchutil.Device
	pg      map[string]string // store → DSN
	next    int               // unique names across cells
}

func run(cfg config) error {
	ctx := context.Background()
	work := cfg.work
	if work == "" {
		d, err := os.MkdirTemp("", "scalebench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		work = d
	}
	// PostgreSQL runs as the postgres user when we are root: it must reach
	// its directory.
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	b := &bench{cfg: cfg, pg: map[string]string{}}

	logf("starting Vault (integrated storage, one node)…")
	vc, err := vaultproc.StartCluster(ctx, benchutil.VaultBinary(), filepath.Join(work, "vault"), 1, nil)
	if err != nil {
		return err
	}
	defer vc.Stop()
	b.vault, b.vaultAddr = vc, vc.Addrs()
	root, err := vc.Client(0, vc.RootToken)
	if err != nil {
		return err
	}
	if err := escrow.Setup(ctx, root, escrow.Config{}); err != nil {
		return err
	}
	tok, err := vc.ScopedToken(ctx, "smimeca", "transit", "smimeca-escrow")
	if err != nil {
		return err
	}
	b.tokenFile = filepath.Join(work, "vault-token")
	if err := os.WriteFile(b.tokenFile, []byte(tok), 0o600); err != nil {
		return err
	}
	logical, _, err := escrow.ConnectLogical(ctx, escrow.VaultConfig{Address: b.vaultAddr, Token: tok})
	if err != nil {
		return err
	}
	store := escrow.New(logical, escrow.Config{})

	if err := b.makeIdentity(work); err != nil {
		return err
	}
	logf("making %d device keys…", 64)
	for range 64 {
		d, err := benchutil.NewDevice()
		if err != nil {
			return err
		}
		b.devKeys = append(b.devKeys, d)
	}
	esc, err := newEscrowMaker()
	if err != nil {
		return err
	}
	for u := range benchUsers {
		if _, err := store.PutMany(ctx, benchUser(u), esc.history(benchUser(u), cfg.escrowed)); err != nil {
			return err
		}
	}

	// Each store has a twin that stays fresh, measured right after the
	// full store: the ratio compares two cells minutes apart, not an hour
	// (this shared machine's speed drifts more than the effect measured).
	var cells []*cell
	dirs := map[string]string{}
	twin := func(s string) string { return s + "/fresh" }
	for _, s := range cfg.stores {
		dirs[s], dirs[twin(s)] = filepath.Join(work, s), filepath.Join(work, s+"-fresh")
		if s == "postgres" {
			pgDir := filepath.Join(work, "pgdata")
			cmd := exec.Command("scripts/postgres.sh", pgDir, strconv.Itoa(freePort()))
			cmd.Env = append(os.Environ(), "PG_OPTS="+cfg.pgOpts)
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("scripts/postgres.sh: %w", err)
			}
			defer exec.Command("scripts/postgres.sh", pgDir, "stop").Run()
			b.pg[s] = strings.TrimSpace(string(out))
			b.pg[twin(s)] = strings.Replace(b.pg[s], "/smimeca?", "/smimeca_fresh?", 1)
		} else if s != "bbolt" {
			return fmt.Errorf("-stores: %q is neither bbolt nor postgres", s)
		}
		for _, k := range []string{s, twin(s)} {
			args := append([]string{"init", "--data", filepath.Join(dirs[k], "node1")}, b.storeArgs(k)...)
			if out, err := exec.Command(cfg.bin, args...).CombinedOutput(); err != nil {
				return fmt.Errorf("smimeca init: %v: %s", err, out)
			}
		}
		c, err := b.measure(s, s, "fresh", dirs[s], 1)
		if err != nil {
			return fmt.Errorf("%s fresh: %w", s, err)
		}
		cells = append(cells, c)
	}

	logf("escrowing %d users × %d certificates in Vault…", cfg.users, cfg.escrowed)
	escrowRate, err := loadEscrow(ctx, store, esc, cfg)
	if err != nil {
		return err
	}
	loadRates := map[string]float64{}
	for _, s := range cfg.stores {
		logf("%s: loading %d certificates over %d devices…", s, cfg.certs, cfg.devices)
		if loadRates[s], err = b.loadCA(ctx, s, filepath.Join(dirs[s], "node1")); err != nil {
			return fmt.Errorf("%s load: %w", s, err)
		}
		for _, k := range []string{s, twin(s)} {
			if err := b.settle(k); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
		}
		c, err := b.measure(s, s, "full", dirs[s], 1)
		if err != nil {
			return fmt.Errorf("%s full: %w", s, err)
		}
		again, err := b.measure(twin(s), s, freshAgain, dirs[twin(s)], 1)
		if err != nil {
			return fmt.Errorf("%s fresh again: %w", s, err)
		}
		cells = append(cells, c, again)
		if s == "postgres" && cfg.nodes > 1 {
			c, err := b.measure(s, s, "full", dirs[s], cfg.nodes)
			if err != nil {
				return fmt.Errorf("%s full, %d nodes: %w", s, cfg.nodes, err)
			}
			cells = append(cells, c)
		}
	}
	vaultBytes, _ := dirSize(filepath.Join(work, "vault"))
	report(cfg, cells, loadRates, escrowRate, vaultBytes)
	return nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func benchUser(i int) string { return fmt.Sprintf("bench-%d@example.com", i) }

// storeArgs are serve's and init's flags for store key s.
func (b *bench) storeArgs(s string) []string {
	args := []string{"--issuer-key-type", "EC", "--public-url", publicURL,
		"--vault-addr", b.vaultAddr, "--vault-token-file", b.tokenFile, "--device-identity-ca", b.identityCA}
	if dsn := b.pg[s]; dsn != "" {
		args = append(args, "--db", dsn)
	}
	return args
}

// makeIdentity creates the MDM's device identity CA and the identity
// certificate the loaded devices are stored with (written to the store
// directly, as data to scan; the measured bundle devices register their own
// through the API).
func (b *bench) makeIdentity(work string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Scale MDM identity CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	b.identityCA = filepath.Join(work, "mdm-ca.pem")
	if err := os.WriteFile(b.identityCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		return err
	}
	if b.mdmCA, err = x509.ParseCertificate(caDER); err != nil {
		return err
	}
	b.mdmKey = key
	b.identity, err = x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "scale device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment | x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		caTmpl, &key.PublicKey, key)
	return err
}

// escrowMaker makes distinct escrowed encryption certificates cheaply: an
// ECDSA CA signs them for a pool of RSA keys.
type escrowMaker struct {
	caKey  *ecdsa.PrivateKey
	ca     *x509.Certificate
	keys   []*rsa.PrivateKey
	pkcs8s [][]byte
}

func newEscrowMaker() (*escrowMaker, error) {
	m := &escrowMaker{}
	var err error
	if m.caKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	m.ca = &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Scale escrow CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour), KeyUsage: x509.KeyUsageCertSign}
	for range 16 {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		p8, _ := x509.MarshalPKCS8PrivateKey(k)
		m.keys, m.pkcs8s = append(m.keys, k), append(m.pkcs8s, p8)
	}
	return m, nil
}

// history returns n escrowed encryption certificates of user, one per
// year of renewals.
func (m *escrowMaker) history(user string, n int) []policy.EscrowedKey {
	out := make([]policy.EscrowedKey, 0, n)
	for i := range n {
		sn, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		k := int(sn.Int64()&0xffff) % len(m.keys)
		start := time.Now().AddDate(i-n, 0, 0)
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: user},
			EmailAddresses: []string{user}, NotBefore: start, NotAfter: start.AddDate(1, 0, 0),
			KeyUsage: x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}},
			m.ca, &m.keys[k].PublicKey, m.caKey)
		if err != nil {
			panic(err)
		}
		c, _ := x509.ParseCertificate(der)
		out = append(out, policy.EscrowedKey{Escrowed: policy.CertificateMetadata(c), CertDER: der, KeyPKCS8: m.pkcs8s[k]})
	}
	return out
}

// loadEscrow escrows cfg.users × cfg.escrowed certificates and returns the
// certificates escrowed per second.
func loadEscrow(ctx context.Context, store *escrow.Store, esc *escrowMaker, cfg config) (float64, error) {
	var done atomic.Int64
	start := time.Now()
	stopProgress := progress("escrowed users", cfg.users, &done)
	err := benchutil.ParallelErr(cfg.users, cfg.loaders, func(_, i int) error {
		user := fmt.Sprintf("user%d@example.com", i)
		_, err := store.PutMany(ctx, user, esc.history(user, cfg.escrowed))
		done.Add(1)
		return err
	})
	stopProgress()
	if err != nil {
		return 0, err
	}
	return float64(cfg.users*cfg.escrowed) / time.Since(start).Seconds(), nil
}

// progress logs done/total every 30 s until the returned func is called.
func progress(what string, total int, done *atomic.Int64) func() {
	stop := make(chan struct{})
	start := time.Now()
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				d := done.Load()
				logf("  %s: %d/%d (%.0f/s)", what, d, total, float64(d)/time.Since(start).Seconds())
			}
		}
	}()
	return func() { close(stop) }
}

// loadCA fills store s's CA database (the node's data dir dir) through the
// CA and the policy store, as serve opens them, and returns certificates
// per second.
func (b *bench) loadCA(ctx context.Context, s, dir string) (float64, error) {
	var database *datastore.Database
	var err error
	if dsn := b.pg[s]; dsn != "" {
		// The loader alone does not wait for each commit's WAL flush
		// (a crash would lose its last transactions, not corrupt any):
		// the servers measured afterwards commit synchronously.
		database, err = datastore.OpenPostgres(dsn + "&synchronous_commit=off")
	} else {
		database, err = datastore.OpenBolt(filepath.Join(dir, "db", "smimeca.db"))
	}
	if err != nil {
		return 0, err
	}
	defer database.Close()
	keys, err := keystore.Open("", filepath.Join(dir, "ca"), "")
	if err != nil {
		return 0, err
	}
	defer keys.Close()
	auth, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), IssuerKeyType: ca.KeyTypeEC, BaseURL: publicURL, Keys: keys}, database.DB)
	if err != nil {
		return 0, err
	}
	defer auth.Close()
	store, err := nosqlstore.New(database.DB.DB)
	if err != nil {
		return 0, err
	}
	csrs := make([]*x509.CertificateRequest, len(b.devKeys))
	for i, d := range b.devKeys {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device"}}, d.Key)
		if err != nil {
			return 0, err
		}
		if csrs[i], err = x509.ParseCertificateRequest(der); err != nil {
			return 0, err
		}
	}
	cfg := b.cfg
	perDevice := (cfg.certs + cfg.devices - 1) / cfg.devices
	var done atomic.Int64
	start := time.Now()
	stopProgress := progress("certificates", cfg.certs, &done)
	err = benchutil.ParallelErr(cfg.devices, cfg.loaders, func(_, i int) error {
		user, id := fmt.Sprintf("user%d@example.com", i%cfg.users), fmt.Sprintf("device-%d", i)
		now := time.Now()
		if err := store.PutDevice(ctx, policy.Device{User: user, ID: id, State: policy.DeviceActive, Identity: b.identity,
			CreatedAt: now, CreatedBy: "scalebench"}); err != nil {
			return err
		}
		for k := 0; k < perDevice && i*perDevice+k < cfg.certs; k++ {
			nb := now.AddDate(0, 0, 90*(k-perDevice))
			iss, err := auth.Sign(ctx, csrs[(i+k)%len(csrs)], ca.Template{CommonName: user, Emails: []string{user},
				KeyUsage: []string{"digitalSignature"}, ExtKeyUsage: []string{"emailProtection"}, NotBefore: nb, NotAfter: nb.AddDate(1, 0, 0)})
			if err != nil {
				return err
			}
			leaf := iss.Chain[0]
			if err := store.RecordIssued(ctx, policy.Issued{Serial: leaf.SerialNumber.String(), User: user, Device: id,
				NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, IssuedAt: nb, SHA256: policy.CertificateMetadata(leaf).SHA256},
				policy.Commit{CA: iss.Record, At: nb}); err != nil {
				return err
			}
			done.Add(1)
		}
		return nil
	})
	stopProgress()
	if err != nil {
		return 0, err
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}

// node is one running smimeca server.
type node struct {
	cmd        *exec.Cmd
	scepURL    string
	grpc, data string
}

// startNodes starts n nodes of store s; node1 is dir/node1, the others get
// copies of its CA and credentials (the keys a deployment shares).
func (b *bench) startNodes(s, dir string, n int) ([]*node, error) {
	var nodes []*node
	stopAll := func() {
		for _, nd := range nodes {
			benchutil.Stop(nd.cmd)
		}
	}
	for i := 1; i <= n; i++ {
		data := filepath.Join(dir, fmt.Sprintf("node%d", i))
		if i > 1 {
			os.RemoveAll(data)
			os.MkdirAll(data, 0o700)
			for _, sub := range []string{"ca", "credentials"} {
				if out, err := exec.Command("cp", "-a", filepath.Join(dir, "node1", sub), filepath.Join(data, sub)).CombinedOutput(); err != nil {
					stopAll()
					return nil, fmt.Errorf("copy %s: %v: %s", sub, err, out)
				}
			}
		}
		h, g, o := benchutil.FreeAddr(), benchutil.FreeAddr(), benchutil.FreeAddr()
		// Every client of the benchmark is on one address: no per-IP limit.
		args := append([]string{"serve", "--data", data, "--http-addr", h, "--grpc-addr", g, "--ops-addr", o, "--log-level", "error",
			"--scep-rate-per-ip", "0", "--scep-max-per-ip", "0"}, b.storeArgs(s)...)
		cmd := exec.Command(b.cfg.bin, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			stopAll()
			return nil, err
		}
		nodes = append(nodes, &node{cmd: cmd, scepURL: "http://" + h + "/scep", grpc: g, data: data})
		if err := benchutil.WaitHealthy("http://"+o+"/healthz", 2*time.Minute); err != nil {
			stopAll()
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
	}
	return nodes, nil
}

// measure starts n nodes of store key s (the store named store, in the
// given state) and measures enrolments and bundles over cfg.rounds rounds.
func (b *bench) measure(s, store, state, dir string, n int) (*cell, error) {
	cfg := b.cfg
	logf("%s %s, %d node(s): measuring…", store, state, n)
	b.next++
	tag := b.next
	nodes, err := b.startNodes(s, dir, n)
	if err != nil {
		return nil, err
	}
	stopped := false
	stop := func() {
		if !stopped {
			for _, nd := range nodes {
				benchutil.Stop(nd.cmd)
			}
			stopped = true
		}
	}
	defer stop()
	ra, err := benchutil.GetCACerts(nodes[0].scepURL)
	if err != nil {
		return nil, err
	}
	ra = ra[:1] // the RA; the issuing CA is ECDSA
	admin, err := benchutil.Dial(nodes[0].grpc, filepath.Join(nodes[0].data, "credentials", "admin"))
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	devices, enrol := pb.NewDevicesClient(admin), pb.NewEnrollmentClient(admin)
	ctx := context.Background()

	// Bundle callers: each of the clients has its own device of a
	// measured user.
	for w := range cfg.clients {
		id := fmt.Sprintf("bundle-%d-%d", tag, w)
		ident, err := benchutil.DeviceIdentity(b.mdmCA, b.mdmKey, id)
		if err != nil {
			return nil, err
		}
		if _, err := devices.RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: benchUser(w % benchUsers),
			DeviceId: id, IdentityCertificate: ident}); err != nil {
			return nil, fmt.Errorf("register a bundle device: %w", err)
		}
	}
	profConns := make([]pb.ProfileBundlesClient, n)
	for i, nd := range nodes {
		conn, err := benchutil.Dial(nd.grpc, filepath.Join(nodes[0].data, "credentials", "profile"))
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		profConns[i] = pb.NewProfileBundlesClient(conn)
	}

	c := &cell{store: store, state: state, nodes: n}
	commits0, rollbacks0 := b.pgTx(s)
	stopSampling := sampleAnon(nodes, &c.anonMiB)
	var rates, p50s, p99s, brates, bp50s, bp99s []float64
	var enrolCPU, bundleCPU []cpuSnap
	var wals, fpis []float64
	for r := range cfg.rounds {
		msgs := make([][]byte, cfg.n)
		for i := range msgs {
			b.next++
			user, id := fmt.Sprintf("enrol-%d@example.com", b.next), fmt.Sprintf("enrol-%d", b.next)
			if _, err := devices.RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: user, DeviceId: id}); err != nil {
				return nil, err
			}
			ch, err := enrol.CreateChallenge(ctx, &pb.CreateChallengeRequest{User: user, DeviceId: id})
			if err != nil {
				return nil, err
			}
			if msgs[i], err = b.devKeys[i%len(b.devKeys)].PKCSReq(ra, ch.GetChallenge(), id); err != nil {
				return nil, err
			}
		}
		cpu0 := snapCPU(nodes)
		wal0, fpi0 := b.pgWAL(s)
		rate, p50, p99, failed, shed, err := enrolLoad(nodes, ra, msgs, cfg.clients)
		enrolCPU = append(enrolCPU, snapCPU(nodes).per(cpu0, cfg.n))
		wal1, fpi1 := b.pgWAL(s)
		wals, fpis = append(wals, float64(wal1-wal0)/1024/float64(cfg.n)), append(fpis, float64(fpi1-fpi0)/float64(cfg.n))
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", r, err)
		}
		rates, p50s, p99s = append(rates, rate), append(p50s, p50), append(p99s, p99)
		c.failed += failed
		c.shed += shed
		cpu0 = snapCPU(nodes)
		brate, bp50, bp99, err := bundleLoad(profConns, tag, cfg.calls, cfg.clients)
		bundleCPU = append(bundleCPU, snapCPU(nodes).per(cpu0, cfg.calls))
		if err != nil {
			return nil, fmt.Errorf("round %d bundles: %w", r, err)
		}
		brates, bp50s, bp99s = append(brates, brate), append(bp50s, bp50), append(bp99s, bp99)
	}
	c.enrolRate, c.enrolP50, c.enrolP99 = median(rates), median(p50s), median(p99s)
	c.bundleRate, c.bundleP50, c.bundleP99 = median(brates), median(bp50s), median(bp99s)
	c.enrolCPU, c.bundleCPU = medianCPU(enrolCPU), medianCPU(bundleCPU)
	c.walKiB, c.fpi = median(wals), median(fpis)
	stopSampling()
	for _, nd := range nodes {
		if kb := procStatusKiB(nd.cmd.Process.Pid, "VmHWM"); float64(kb)/1024 > c.rssMiB {
			c.rssMiB = float64(kb) / 1024
		}
	}
	if commits, rollbacks := b.pgTx(s); commits > 0 {
		c.pgCommits, c.pgRollbacks = commits-commits0, rollbacks-rollbacks0
	}
	stop()
	if c.dbBytes, err = b.dbSize(s, dir); err != nil {
		return nil, err
	}
	logf("  %.0f enrolments/s (p50 %.1f ms, p99 %.1f ms), bundles %.0f/s (p50 %.1f ms, p99 %.1f ms), RSS %.0f MiB (anonymous %.0f MiB), database %.1f MiB, PostgreSQL transactions %d committed / %d rolled back",
		c.enrolRate, c.enrolP50, c.enrolP99, c.bundleRate, c.bundleP50, c.bundleP99, c.rssMiB, c.anonMiB, float64(c.dbBytes)/(1<<20), c.pgCommits, c.pgRollbacks)
	return c, nil
}

// enrolLoad sends every message once, spread over the nodes, with c
// clients, and checks that each answer is a CertRep SUCCESS from the RA.
func enrolLoad(nodes []*node, ra []*x509.Certificate, msgs [][]byte, c int) (rate, p50, p99 float64, failed, shed int, err error) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}, Timeout: 60 * time.Second}
	lat := make([]time.Duration, 0, len(msgs))
	bodies := make([][]byte, len(msgs))
	var mu sync.Mutex
	var nFailed, nShed atomic.Int64
	start := time.Now()
	benchutil.Parallel(len(msgs), c, func(_, i int) bool {
		t0 := time.Now()
		resp, err := client.Post(nodes[i%len(nodes)].scepURL+"?operation=PKIOperation", "application/x-pki-message", strings.NewReader(string(msgs[i])))
		if err != nil {
			nFailed.Add(1)
			return true
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			nFailed.Add(1)
		case resp.StatusCode == http.StatusServiceUnavailable:
			nShed.Add(1)
		case resp.StatusCode != http.StatusOK:
			nFailed.Add(1)
		default:
			bodies[i] = body
			mu.Lock()
			lat = append(lat, time.Since(t0))
			mu.Unlock()
		}
		return true
	})
	total := time.Since(start)
	ok := 0
	for _, body := range bodies {
		if body == nil {
			continue
		}
		rep, err := smallscep.ParsePKIMessage(body, smallscep.WithCACerts(ra))
		if err != nil || rep.PKIStatus != smallscep.SUCCESS {
			nFailed.Add(1)
			continue
		}
		ok++
	}
	if ok == 0 {
		return 0, 0, 0, 0, 0, fmt.Errorf("no enrolment succeeded (%d failed, %d shed)", nFailed.Load(), nShed.Load())
	}
	p50, p99 = benchutil.P50P99(lat)
	return float64(ok) / total.Seconds(), p50, p99, int(nFailed.Load()), int(nShed.Load()), nil
}

// bundleLoad makes calls GetUserBundle calls with c callers, each for its
// own device of a measured user, spread over the nodes.
func bundleLoad(clients []pb.ProfileBundlesClient, tag, calls, c int) (rate, p50, p99 float64, err error) {
	return benchutil.Timed(calls, c, func(w, i int) error {
		resp, err := clients[i%len(clients)].GetUserBundle(context.Background(), &pb.GetUserBundleRequest{
			User: benchUser(w % benchUsers), DeviceId: fmt.Sprintf("bundle-%d-%d", tag, w)})
		if err == nil && len(resp.GetEncryptionCertificates()) == 0 {
			err = errors.New("a bundle without encryption certificates")
		}
		return err
	})
}

// sampleAnon records the largest anonymous RSS of any node in *peak (MiB)
// every 100 ms until the returned func is called.
func sampleAnon(nodes []*node, peak *float64) func() {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			for _, nd := range nodes {
				if mib := float64(procStatusKiB(nd.cmd.Process.Pid, "RssAnon")) / 1024; mib > *peak {
					*peak = mib
				}
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(stop); <-done }
}

// procStatusKiB is field (VmHWM: peak resident set; RssAnon: anonymous
// resident memory) of a process's /proc status, 0 when unknown.
func procStatusKiB(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}

// dbSize is the size of store s's database: the bbolt file, or
// PostgreSQL's pg_database_size.
func (b *bench) dbSize(s, dir string) (int64, error) {
	if b.pg[s] == "" {
		fi, err := os.Stat(filepath.Join(dir, "node1", "db", "smimeca.db"))
		if err != nil {
			return 0, err
		}
		return fi.Size(), nil
	}
	var n int64
	err := b.withPG(s, func(db *sql.DB) error {
		return db.QueryRow("SELECT pg_database_size(current_database())").Scan(&n)
	})
	return n, err
}

// withPG runs fn on a connection to store s's PostgreSQL database; for
// bbolt (no DSN) it does nothing.
func (b *bench) withPG(s string, fn func(*sql.DB) error) error {
	dsn := b.pg[s]
	if dsn == "" {
		return nil
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	return fn(db)
}

// settle does for PostgreSQL what an operator does after a bulk load:
// VACUUM (ANALYZE) — otherwise autovacuum works through the fresh tables
// while a cell is measured — and a CHECKPOINT. bbolt needs nothing.
func (b *bench) settle(s string) error {
	return b.withPG(s, func(db *sql.DB) error {
		logf("%s: VACUUM (ANALYZE) and CHECKPOINT after the load…", s)
		for _, q := range []string{"VACUUM (ANALYZE)", "CHECKPOINT"} {
			if _, err := db.Exec(q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	})
}

// pgTx returns PostgreSQL's committed and rolled-back transactions so far
// in store s's database (0, 0 for bbolt).
func (b *bench) pgTx(s string) (commits, rollbacks int64) {
	b.withPG(s, func(db *sql.DB) error {
		db.QueryRow("SELECT pg_stat_force_next_flush()").Scan(new(any))
		return db.QueryRow("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()").Scan(&commits, &rollbacks)
	})
	return commits, rollbacks
}

// pgWAL returns the WAL PostgreSQL has written so far: bytes and full-page
// images (0, 0 for bbolt).
func (b *bench) pgWAL(s string) (bytes, fpi int64) {
	var walBytes float64
	b.withPG(s, func(db *sql.DB) error {
		return db.QueryRow("SELECT wal_bytes::float8, wal_fpi FROM pg_stat_wal").Scan(&walBytes, &fpi)
	})
	return int64(walBytes), fpi
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n, err
}

func freePort() int {
	a := benchutil.FreeAddr()
	p, _ := strconv.Atoi(a[strings.LastIndexByte(a, ':')+1:])
	return p
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func report(cfg config, cells []*cell, loadRates map[string]float64, escrowRate float64, vaultBytes int64) {
	fmt.Printf("machine: %d CPUs, go %s; smimeca, Vault (Raft, one node) and PostgreSQL on the same machine\n", runtime.NumCPU(), runtime.Version())
	fmt.Printf("full = %d certificates over %d devices in the CA database, %d users × %d escrowed certificates in Vault; %d rounds of %d enrolments and %d GetUserBundle calls (%d certificates each) at %d clients per cell, medians\n\n",
		cfg.certs, cfg.devices, cfg.users, cfg.escrowed, cfg.rounds, cfg.n, cfg.calls, cfg.escrowed, cfg.clients)
	fmt.Printf("fresh: measured first, Vault holding only the measured users; %s: a twin store that stayed fresh, measured right after the full one with the full Vault — full vs fresh compares with it\n\n", freshAgain)
	fmt.Println("| store | state | nodes | enrolments/s | p50 ms | p99 ms | failed / shed | full vs fresh | bundles/s | bundle p50 ms | bundle p99 ms | full vs fresh | peak RSS MiB (anonymous) | database MiB | PostgreSQL commits / rollbacks |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	fresh := map[string]*cell{}
	for _, c := range cells {
		if c.state == freshAgain {
			fresh[c.store] = c
		}
	}
	for _, c := range cells {
		ve, vb := "", ""
		if f := fresh[c.store]; f != nil && c.state == "full" {
			ve = fmt.Sprintf("%.0f %%", 100*c.enrolRate/f.enrolRate)
			vb = fmt.Sprintf("%.0f %%", 100*c.bundleRate/f.bundleRate)
		}
		tx := ""
		if c.pgCommits > 0 {
			tx = fmt.Sprintf("%d / %d", c.pgCommits, c.pgRollbacks)
		}
		fmt.Printf("| %s | %s | %d | %.0f | %.1f | %.1f | %d / %d | %s | %.0f | %.1f | %.1f | %s | %.0f (%.0f) | %.1f | %s |\n",
			c.store, c.state, c.nodes, c.enrolRate, c.enrolP50, c.enrolP99, c.failed, c.shed, ve, c.bundleRate, c.bundleP50, c.bundleP99, vb, c.rssMiB, c.anonMiB, float64(c.dbBytes)/(1<<20), tx)
	}
	fmt.Println()
	fmt.Println("CPU per operation (ms, medians; PostgreSQL: the machine's busy time minus smimeca's, Vault's and the load generator's, so it includes the kernel's work for all of them):")
	fmt.Println()
	fmt.Println("| store | state | nodes | enrolment: smimeca | PostgreSQL | Vault | bundle: smimeca | PostgreSQL | Vault | PostgreSQL WAL per enrolment: KiB | full-page images |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, c := range cells {
		fmt.Printf("| %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.1f |\n", c.store, c.state, c.nodes,
			c.enrolCPU["smimeca"], c.enrolCPU["postgres"], c.enrolCPU["vault"], c.bundleCPU["smimeca"], c.bundleCPU["postgres"], c.bundleCPU["vault"], c.walKiB, c.fpi)
	}
	fmt.Println()
	for _, s := range cfg.stores {
		var f, full *cell
		for _, c := range cells {
			if c.store == s && c.nodes == 1 {
				switch c.state {
				case "fresh":
					f = c
				case "full":
					full = c
				}
			}
		}
		if f != nil && full != nil {
			fmt.Printf("%s: loaded at %.0f certificates/s; %.2f KiB of database per certificate ((full − fresh) ÷ %d, device rows included)\n",
				s, loadRates[s], float64(full.dbBytes-f.dbBytes)/float64(cfg.certs)/1024, cfg.certs)
		}
	}
	fmt.Printf("Vault: escrowed at %.0f certificates/s; its storage holds %.1f MiB, %.2f KiB per escrowed certificate\n",
		escrowRate, float64(vaultBytes)/(1<<20), float64(vaultBytes)/float64(cfg.users*cfg.escrowed)/1024)
}
