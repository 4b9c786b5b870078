package test

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testpg"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// newPostgres returns the DSN of a new database of its own on the test
// binary's one throw-away PostgreSQL (testpg: scripts/postgres.sh, Debian's
// package, as the unprivileged postgres user when run as root; TestMain
// stops it).
func newPostgres(t *testing.T) string {
	t.Helper()
	return testpg.DSN(t)
}

// newNodes starts n smimeca nodes (with extra flags) on one PostgreSQL
// database and one CA: the
// first makes the CA; the others start on a copy of its CA directory and
// first-start credentials (as nodes sharing their keys through files
// mounted read-only, or the same token, would).
func newNodes(t *testing.T, n int, dsn string, extra ...string) []*server {
	t.Helper()
	return newNodesWith(t, n, dsn, nil, extra...)
}

// newNodesWith is newNodes with perNode(i) (nil: none) added to node i's
// flags: what differs between nodes, such as a listen address.
func newNodesWith(t *testing.T, n int, dsn string, perNode func(i int) []string, extra ...string) []*server {
	t.Helper()
	if perNode == nil {
		perNode = func(int) []string { return nil }
	}
	first := newServer(t, append(append([]string{"--db", dsn}, extra...), perNode(0)...)...)
	first.db = dsn
	nodes := []*server{first}
	shared := first.extra[:len(first.extra)-len(perNode(0))]
	for i := 1; i < n; i++ {
		s := nextNode(t, first, append(slices.Clone(shared), perNode(i)...))
		s.start()
		t.Cleanup(s.stop)
		nodes = append(nodes, s)
	}
	return nodes
}

// nextNode is a node (not started) beside first, on a copy of its CA
// directory and first-start credentials, with flags extra.
func nextNode(t *testing.T, first *server, extra []string) *server {
	t.Helper()
	s := &server{t: t, data: filepath.Join(t.TempDir(), "data"), log: &syncBuffer{}, env: first.env, token: first.token, mdm: first.mdm, db: first.db,
		httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), grpcAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), opsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		extra: extra}
	s.baseURL = "http://" + s.httpAddr
	if err := os.MkdirAll(s.data, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"ca", "credentials"} {
		mustOK(t, "copy "+d, run(t, 30*time.Second, "cp", "-a", filepath.Join(first.data, d), filepath.Join(s.data, d)))
	}
	return s
}

// TestChallengeRaceAcrossNodes: three nodes on one PostgreSQL database.
// The same one-time challenge, in PKCSReqs from three devices sent to the
// three nodes at the same instant, gives exactly one certificate, 30 times
// over; what one node issued, every node lists; Debian's scepclient enrols
// on the second node with a challenge the first made, and that challenge is
// then refused on every node.
func TestChallengeRaceAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 3, newPostgres(t))
	devs, enr, _ := nodes[0].adminClients(t)
	ra := raCert(t, nodes[0])
	keys := []*rsa.PrivateKey{testpki.RSAKey(t, 2048, 0), testpki.RSAKey(t, 2048, 1), testpki.RSAKey(t, 2048, 2)}
	for round := 0; round < 30; round++ {
		user := fmt.Sprintf("race%d@example.com", round)
		if _, err := devs.RegisterDevice(context.Background(), &pb.RegisterDeviceRequest{User: user, DeviceId: "phone"}); err != nil {
			t.Fatal(err)
		}
		ch, err := enr.CreateChallenge(context.Background(), &pb.CreateChallengeRequest{User: user, DeviceId: "phone"})
		if err != nil {
			t.Fatal(err)
		}
		senders := make([]*scepDevice, len(nodes))
		for i := range senders {
			senders[i] = newSCEPDevice(t, keys[i], user, "phone", ch.GetChallenge(), ra)
		}
		got := make([]*x509.Certificate, len(nodes))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, s := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				got[i] = senders[i].enrol(s.baseURL+"/scep", ra)
			}()
		}
		close(start)
		wg.Wait()
		won := 0
		for _, c := range got {
			if c != nil {
				won++
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d certificates from one challenge, want 1", round, won)
		}
		for i, s := range nodes {
			list := mustOK(t, "cert list", s.cli("cert", "list", "--user", user, "-o", "json"))
			if n := strings.Count(list, `"serial"`); n != 1 {
				t.Errorf("round %d: node %d lists %d certificates for %s:\n%s", round, i, n, user, list)
			}
		}
	}
	// A loser's answer is the refusal of a used challenge, not a database
	// error: its serialization failure was retried and saw the challenge gone.
	for i, s := range nodes {
		if strings.Contains(s.log.String(), "SQLSTATE") {
			t.Errorf("node %d logged a database error:\n%s", i, s.log.String())
		}
	}
	challenge := nodes[0].challenge("late@example.com", "phone")
	mustOK(t, "scepclient on node 2", nodes[1].scepclient(filepath.Join(t.TempDir(), "a"), challenge))
	for i, s := range nodes {
		if r := s.scepclient(filepath.Join(t.TempDir(), "b"), challenge); r.code == 0 {
			t.Errorf("node %d accepted a used challenge", i)
		}
	}
}

// crlOf fetches s's CRL and parses it.
func crlOf(t *testing.T, s *server) *x509.RevocationList {
	t.Helper()
	resp, err := http.Get(s.baseURL + "/crl")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	der, _ := io.ReadAll(resp.Body)
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatalf("CRL of %s: %v", s.baseURL, err)
	}
	return crl
}

// TestCRLAcrossNodes: a revocation made through any node — `cert revoke`
// (step-ca's revocation) or a device's retirement (smimeca's own, in the
// retirement's transaction) — is in the CRL every node serves next; after
// revocations on all nodes at once, every node serves the same CRL, and no
// CRL number is ever served with two contents (nodes may generate at the
// same time; only a newer CRL replaces the stored one).
func TestCRLAcrossNodes(t *testing.T) {
	t.Parallel()
	nodes := newNodes(t, 3, newPostgres(t))
	enrol := func(s *server, user string) string {
		dir := filepath.Join(t.TempDir(), "dev")
		mustOK(t, "scepclient", s.scepclient(dir, s.challenge(user, "phone")))
		return serialOf(t, filepath.Join(dir, "client.pem"))
	}
	numbers := map[string][]byte{} // CRL number → its signed list
	inCRL := func(s *server, serials ...string) bool {
		crl := crlOf(t, s)
		if prev, ok := numbers[crl.Number.String()]; ok && !bytes.Equal(prev, crl.RawTBSRevocationList) {
			t.Fatalf("CRL number %s served with two contents", crl.Number)
		}
		numbers[crl.Number.String()] = crl.RawTBSRevocationList
		listed := map[string]bool{}
		for _, e := range crl.RevokedCertificateEntries {
			listed[strings.ToUpper(e.SerialNumber.Text(16))] = true
		}
		for _, sn := range serials {
			if !listed[strings.TrimLeft(strings.ToUpper(sn), "0")] {
				return false
			}
		}
		return true
	}
	a := enrol(nodes[0], "crl-a@example.com")
	b := enrol(nodes[1], "crl-b@example.com")
	crlOf(t, nodes[2]) // every node has served a CRL before the revocations
	mustOK(t, "cert revoke on node 2", nodes[1].cli("cert", "revoke", "--serial", "0x"+a, "--reason", "keyCompromise"))
	for i, s := range nodes {
		if !inCRL(s, a) {
			t.Errorf("node %d's CRL lacks %s, revoked through node 2", i, a)
		}
	}
	mustOK(t, "device retire on node 3", nodes[2].cli("device", "retire", "--user", "crl-b@example.com", "--device", "phone", "--reason", "lost"))
	for i, s := range nodes {
		if !inCRL(s, a, b) {
			t.Errorf("node %d's CRL lacks %s, revoked by a retirement on node 3", i, b)
		}
	}
	// Revocations on every node at once, then every node's CRL.
	var serials []string
	for i := range 6 {
		serials = append(serials, enrol(nodes[i%3], fmt.Sprintf("crl-%d@example.com", i)))
	}
	var wg sync.WaitGroup
	for i, sn := range serials {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := nodes[i%3].cli("cert", "revoke", "--serial", "0x"+sn); r.code != 0 {
				t.Errorf("cert revoke %s on node %d (exit %d): %s", sn, i%3+1, r.code, r.stderr)
			}
		}()
	}
	wg.Wait()
	var last string
	for i, s := range nodes {
		if !inCRL(s, append(serials, a, b)...) {
			t.Errorf("node %d's CRL lacks a revocation of the concurrent burst", i)
		}
		n := crlOf(t, s).Number.String()
		if last != "" && n != last {
			t.Errorf("node %d serves CRL number %s, node %d %s", i, n, i-1, last)
		}
		last = n
	}
}

// TestClusterTool runs `make cluster`'s tool (tools/cluster): PostgreSQL, a
// 3-node Vault Raft cluster and three smimeca nodes behind its round-robin
// front. Through the front, Debian's scepclient enrols three devices (one
// per node in turn), the CLI escrows a PFX and `smimeca bundle get` fetches
// it for a device with an MDM identity; with one node killed (SIGKILL) the
// front keeps working: enrolments and bundles through it still succeed. An
// interrupt stops it all.
func TestClusterTool(t *testing.T) {
	t.Parallel()
	clusterBin := filepath.Join(t.TempDir(), "cluster")
	mustOK(t, "build tools/cluster", run(t, 120*time.Second, "go", "build", "-o", clusterBin, "../tools/cluster"))
	httpFront, grpcFront := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("smimeca-cluster-test-%d", time.Now().UnixNano()))
	t.Cleanup(func() { os.RemoveAll(dir) })
	mdm := t.TempDir()
	mustOK(t, "device identity CA", run(t, 60*time.Second, tool(t, "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
		"-keyout", filepath.Join(mdm, "mdm-ca.key"), "-out", filepath.Join(mdm, "mdm-ca.pem"), "-subj", "/CN=Test MDM Device Identity CA", "-days", "30"))
	cmd := exec.Command(clusterBin, "-smimeca", smimecaBin(t), "-http", httpFront, "-grpc", grpcFront, "-dir", dir, "-for", "5m",
		"-device-identity-ca", filepath.Join(mdm, "mdm-ca.pem"))
	cmd.Dir = ".."
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out.String(), "smimeca cluster ready") {
		if time.Now().After(deadline) || strings.Contains(out.String(), "cluster:") {
			t.Fatalf("the cluster did not come up:\n%s", out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	front := &server{t: t, data: filepath.Join(dir, "node1"), grpcAddr: grpcFront, baseURL: "http://" + httpFront, mdm: mdm}
	for i := range 3 {
		ch := front.challenge(fmt.Sprintf("front%d@example.com", i), "phone")
		mustOK(t, "scepclient through the front", front.scepclient(filepath.Join(t.TempDir(), "dev"), ch))
	}
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	pw := randomPassword(t)
	file, pwFile := writePFX(t, t.TempDir(), "front", is.PFX(t, nil, key, is.UserCert(t, key, testpki.CertOptions{Emails: []string{"front0@example.com"}}), pw), pw)
	if r := front.cli("pfx", "import", "--user", "front0@example.com", "--password-file", pwFile, file); r.code != 0 || !strings.Contains(r.stdout, "imported 1") {
		t.Fatalf("import through the front: %+v", r)
	}
	front.registerWithIdentity("front0@example.com", "tablet")
	bundleThroughFront := func(what string) {
		t.Helper()
		if b := front.bundle(t, filepath.Join(t.TempDir(), "bundle"), "--user", "front0@example.com", "--device", "tablet"); len(b.Encryption) != 1 {
			t.Errorf("%s: the bundle holds %d encryption certificates, want 1", what, len(b.Encryption))
		}
	}
	bundleThroughFront("bundle get through the front")
	// One node killed: the front passes to the others.
	if r := run(t, 10*time.Second, "pkill", "-KILL", "-f", "serve --data "+filepath.Join(dir, "node2")+" "); r.code != 0 {
		t.Fatalf("kill node 2: %+v", r)
	}
	for i := range 3 {
		ch := front.challenge(fmt.Sprintf("after-kill%d@example.com", i), "phone")
		mustOK(t, "scepclient through the front, one node down", front.scepclient(filepath.Join(t.TempDir(), "dev"), ch))
	}
	bundleThroughFront("bundle get with one node down")
	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the cluster tool exited with %v:\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		t.Error("the cluster tool did not stop on an interrupt")
	}
}

// TestClusterFaults: three smimeca nodes on PostgreSQL and a 3-node Vault
// Raft cluster. While 16 clients enrol through all three nodes and a
// manifest import runs through the first, the second node is killed
// (SIGKILL) and then the Vault leader: clients whose request got no answer
// send it again to the next node, and every enrolment completes — every
// certificate a client received is in the inventory, once per device, no
// serial twice; re-running the manifest completes the import, every file
// escrowed once.
func TestClusterFaults(t *testing.T) {
	ctx := context.Background()
	vc, tokenFile := startVaultCluster(t)
	nodes := newNodes(t, 3, newPostgres(t), "--vault-addr", vc.Addrs(), "--vault-token-file", tokenFile)
	devs, enr, _ := nodes[0].adminClients(t)
	ra := raCert(t, nodes[0])
	const n, clients = 160, 16
	keys := make([]*rsa.PrivateKey, 8)
	for i := range keys {
		keys[i] = testpki.RSAKey(t, 2048, i)
	}
	var devices []*scepDevice
	for i := range n {
		devices = append(devices, enrolling(t, devs, enr, keys[i%len(keys)], fmt.Sprintf("f%d@example.com", i%12), fmt.Sprintf("phone-%d", i), ra))
	}
	// A manifest import through node 1 (never killed), one file at a time.
	is := testpki.NewIssuer(t)
	in := t.TempDir()
	const users, perUser = 4, 10
	var rows []string
	for i := range users * perUser {
		user := fmt.Sprintf("vimp%d@example.com", i%users)
		k := testpki.RSAKey(t, 2048, i%4)
		crt := is.UserCert(t, k, testpki.CertOptions{Emails: []string{user}})
		f, pw := writePFX(t, in, fmt.Sprintf("v%02d", i), is.PFX(t, nil, k, crt, fmt.Sprint("pass-", i)), fmt.Sprint("pass-", i))
		rows = append(rows, fmt.Sprintf("%s,%s,%s", user, f, pw))
	}
	manifest := filepath.Join(in, "manifest.csv")
	os.WriteFile(manifest, []byte(strings.Join(rows, "\n")+"\n"), 0o600)
	imp := exec.Command(smimecaBin(t), "pfx", "import", "--manifest", manifest, "--concurrency", "1",
		"--server", nodes[0].grpcAddr, "--credentials", filepath.Join(nodes[0].data, "credentials", "admin"))
	imp.Env = cleanEnv()

	// A client sends its request to a node and, without an answer, to the
	// next one, as a device retries behind a load balancer.
	got := make([]*x509.Certificate, n)
	enrolAny := func(i int) *x509.Certificate {
		for try := range 6 {
			if c := devices[i].enrol(nodes[(i+try)%len(nodes)].baseURL+"/scep", ra); c != nil {
				return c
			}
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	var next, answered atomic.Int64
	var wg sync.WaitGroup
	if err := imp.Start(); err != nil {
		t.Fatal(err)
	}
	importDone := make(chan error, 1)
	go func() { importDone <- imp.Wait() }()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if got[i] = enrolAny(i); got[i] != nil {
					answered.Add(1)
				}
			}
		}()
	}
	// Under both loads: one smimeca node killed, then the Vault leader.
	target := int64(5 + mrand.IntN(40))
	for deadline := time.Now().Add(60 * time.Second); answered.Load() < target && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	killed := nodes[1]
	killed.cmd.Process.Kill()
	killed.cmd.Wait()
	killed.cmd = nil
	time.Sleep(time.Duration(100+mrand.IntN(300)) * time.Millisecond)
	enrolling, importing := answered.Load() < n, true
	select {
	case err := <-importDone:
		importDone <- err
		importing = false
	default:
	}
	firstLeader := killVaultLeader(t, vc)
	t.Logf("node 2 killed after %d answered enrolments, then the Vault leader (enrolments still running: %v, import still running: %v)", target, enrolling, importing)
	wg.Wait()
	if err := <-importDone; err == nil {
		t.Log("the import completed through the leader's death (its requests waited for the election)")
	} else {
		t.Logf("the import stopped at the leader's death: %v", err)
	}

	seen := map[string]bool{}
	for i, d := range devices {
		if got[i] == nil {
			t.Errorf("%s of %s: no node answered", d.id, d.user)
			continue
		}
		list, err := enr.ListCertificates(ctx, &pb.ListCertificatesRequest{User: d.user, DeviceId: d.id})
		if err != nil {
			t.Fatal(err)
		}
		certs := list.GetCertificates()
		if len(certs) != 1 || certs[0].GetSerial() != got[i].SerialNumber.String() {
			t.Errorf("%s of %s received %s; the inventory holds %d certificates", d.id, d.user, got[i].SerialNumber, len(certs))
			continue
		}
		if seen[certs[0].GetSerial()] {
			t.Errorf("serial %s issued twice", certs[0].GetSerial())
		}
		seen[certs[0].GetSerial()] = true
	}
	mustOK(t, "manifest re-run after the Vault leader's death", nodes[2].cli("pfx", "import", "--manifest", manifest, "--concurrency", "4"))
	escrowed := 0
	for u := range users {
		escrowed += len(nodes[0].pfxList(t, fmt.Sprintf("vimp%d@example.com", u)).Certificates)
	}
	if escrowed != users*perUser {
		t.Fatalf("%d files escrowed, want %d", escrowed, users*perUser)
	}
	// The killed Vault node rejoins as a follower; then the leader elected
	// after the first death dies too, and the escrow still lists everything
	// and takes a new import (the request waits for the election and moves
	// to a node that answers).
	if err := vc.Restart(ctx, firstLeader); err != nil {
		t.Fatal(err)
	}
	killVaultLeader(t, vc)
	if l := nodes[0].pfxList(t, "vimp0@example.com"); len(l.Certificates) != perUser {
		t.Fatalf("after the second leader's death the escrow lists %d certificates, want %d", len(l.Certificates), perUser)
	}
	k := testpki.RSAKey(t, 2048, 5)
	crt := is.UserCert(t, k, testpki.CertOptions{Emails: []string{"vimp0@example.com"}})
	pw := randomPassword(t)
	f, pwFile := writePFX(t, in, "after-second-kill", is.PFX(t, nil, k, crt, pw), pw)
	mustOK(t, "import after the second leader's death", nodes[2].cli("pfx", "import", "--user", "vimp0@example.com", "--password-file", pwFile, f))
	if l := nodes[0].pfxList(t, "vimp0@example.com"); len(l.Certificates) != perUser+1 {
		t.Fatalf("after the import the escrow lists %d certificates, want %d", len(l.Certificates), perUser+1)
	}
}
