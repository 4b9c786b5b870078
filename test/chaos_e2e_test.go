package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	smallscep "github.com/smallstep/scep"
	scepx509 "github.com/smallstep/scep/x509util"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"google.golang.org/grpc"

	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
	"github.com/smimeca/smimeca/tools/benchutil"
)

// scepDevice is one enrolling device: its key, self-signed certificate and
// the PKCSReq it sends (built once, so that a resend is the same request).
type scepDevice struct {
	user, id string
	key      *rsa.PrivateKey
	cert     *x509.Certificate
	msg      []byte
}

func newSCEPDevice(t *testing.T, key *rsa.PrivateKey, user, id, challenge string, ra *x509.Certificate) *scepDevice {
	t.Helper()
	return newSCEPDeviceFor(t, key, user, id, x509.CertificateRequest{Subject: pkix.Name{CommonName: id}}, challenge, ra)
}

// newSCEPDeviceFor is newSCEPDevice with the CSR's names from req.
func newSCEPDeviceFor(t *testing.T, key *rsa.PrivateKey, user, id string, req x509.CertificateRequest, challenge string, ra *x509.Certificate) *scepDevice {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: id},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	crt, _ := x509.ParseCertificate(der)
	csrDER, err := scepx509.CreateCertificateRequest(rand.Reader, &scepx509.CertificateRequest{
		CertificateRequest: req, ChallengePassword: challenge}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)
	m, err := smallscep.NewCSRRequest(csr, &smallscep.PKIMessage{MessageType: smallscep.PKCSReq,
		Recipients: []*x509.Certificate{ra}, SignerKey: key, SignerCert: crt})
	if err != nil {
		t.Fatal(err)
	}
	return &scepDevice{user: user, id: id, key: key, cert: crt, msg: m.Raw}
}

// adminClients dials s with the admin credentials (closed with the test).
func (s *server) adminClients(t *testing.T) (pb.DevicesClient, pb.EnrollmentClient, *grpc.ClientConn) {
	t.Helper()
	conn, err := benchutil.Dial(s.grpcAddr, filepath.Join(s.data, "credentials", "admin"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewDevicesClient(conn), pb.NewEnrollmentClient(conn), conn
}

// enrolling registers the user's device, creates its challenge and returns
// the device with its PKCSReq built.
func enrolling(t *testing.T, devs pb.DevicesClient, enr pb.EnrollmentClient, key *rsa.PrivateKey, user, id string, ra *x509.Certificate) *scepDevice {
	t.Helper()
	ctx := context.Background()
	if _, err := devs.RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: user, DeviceId: id}); err != nil {
		t.Fatal(err)
	}
	ch, err := enr.CreateChallenge(ctx, &pb.CreateChallengeRequest{User: user, DeviceId: id})
	if err != nil {
		t.Fatal(err)
	}
	return newSCEPDevice(t, key, user, id, ch.GetChallenge(), ra)
}

// enrol sends the device's PKCSReq and returns the issued certificate, or
// nil when there was no successful answer.
func (d *scepDevice) enrol(url string, ra *x509.Certificate) *x509.Certificate {
	resp, err := http.Post(url+"?operation=PKIOperation", "application/x-pki-message", bytes.NewReader(d.msg))
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil
	}
	rep, err := smallscep.ParsePKIMessage(body, smallscep.WithCACerts([]*x509.Certificate{ra}))
	if err != nil || rep.PKIStatus != smallscep.SUCCESS {
		return nil
	}
	if err := rep.DecryptPKIEnvelope(d.cert, d.key); err != nil {
		return nil
	}
	return rep.CertRepMessage.Certificate
}

// TestKillDuringEnrolment kills smimeca serve (SIGKILL) at a random point
// while 16 clients enrol, restarts it on the same data, and checks that
// nothing was lost or doubled: every certificate a client received is in
// the inventory and in the CA's tables; no serial is there twice; no device
// holds two certificates from its one challenge; and resending every
// request that got no answer completes every enrolment (a lost answer is
// answered again with the same certificate, an unused challenge is used).
func TestKillDuringEnrolment(t *testing.T) {
	s := newServer(t)
	const n, clients = 96, 16
	ctx := context.Background()
	devs, enr, _ := s.adminClients(t)
	ra := raCert(t, s)
	keys := make([]*rsa.PrivateKey, 8)
	for i := range keys {
		keys[i], _ = rsa.GenerateKey(rand.Reader, 2048)
	}
	var devices []*scepDevice
	for i := 0; i < n; i++ {
		devices = append(devices, enrolling(t, devs, enr, keys[i%len(keys)], fmt.Sprintf("u%d@example.com", i%12), fmt.Sprintf("phone-%d", i), ra))
	}

	url := s.baseURL + "/scep"
	got := make([]*x509.Certificate, n)
	var next, answered atomic.Int64
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if got[i] = devices[i].enrol(url, ra); got[i] != nil {
					answered.Add(1)
				}
			}
		}()
	}
	// Kill at a random point of the load: after 5 to 80 answered
	// enrolments.
	target := int64(5 + mrand.IntN(76))
	for deadline := time.Now().Add(60 * time.Second); answered.Load() < target && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
	wg.Wait()
	before := answered.Load()
	t.Logf("killed at %d answered enrolments; %d of %d answered in all", target, before, n)

	s.start()
	// Resend every request that got no answer: exactly as a device retries.
	for i, d := range devices {
		if got[i] == nil {
			if got[i] = d.enrol(url, ra); got[i] == nil {
				t.Errorf("%s of %s: the retry after the restart got no certificate", d.id, d.user)
			}
		}
	}
	_, enr, _ = s.adminClients(t)
	seen := map[string]bool{}
	for i, d := range devices {
		list, err := enr.ListCertificates(ctx, &pb.ListCertificatesRequest{User: d.user, DeviceId: d.id})
		if err != nil {
			t.Fatal(err)
		}
		certs := list.GetCertificates()
		if len(certs) != 1 {
			t.Errorf("%s of %s holds %d certificates from one challenge, want 1", d.id, d.user, len(certs))
			continue
		}
		if got[i] != nil && certs[0].GetSerial() != got[i].SerialNumber.String() {
			t.Errorf("%s received serial %s, the inventory holds %s", d.id, got[i].SerialNumber, certs[0].GetSerial())
		}
		if seen[certs[0].GetSerial()] {
			t.Errorf("serial %s issued twice", certs[0].GetSerial())
		}
		seen[certs[0].GetSerial()] = true
	}
	// The CA's own tables know every certificate: revoking succeeds (an
	// unknown serial would be "not in the CA database").
	for i := 0; i < n; i += 7 {
		if got[i] == nil {
			continue
		}
		if _, err := enr.RevokeCertificate(ctx, &pb.RevokeCertificateRequest{Serial: got[i].SerialNumber.String()}); err != nil {
			t.Errorf("the CA does not know %s: %v", got[i].SerialNumber, err)
		}
	}
}

func raCert(t *testing.T, s *server) *x509.Certificate {
	t.Helper()
	resp, err := http.Get(s.baseURL + "/scep?operation=GetCACert")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	certs, err := smallscep.CACerts(b)
	if err != nil || len(certs) == 0 {
		t.Fatalf("GetCACert: %v", err)
	}
	return certs[0]
}

// TestKillDuringImport runs a manifest import of 48 PFX files for 8 users
// against the embedded Vault and kills, in the middle of it, first the
// Vault (SIGKILL: imports get UNAVAILABLE, the supervisor brings Vault
// back), then smimeca serve itself (restarted on the same data). Each time
// re-running the manifest completes it, and at the end every escrowed key
// is whole: each user's break-glass bundle opens every one of their files.
func TestKillDuringImport(t *testing.T) {
	vaultAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := newServer(t, "--embedded-vault", "--embedded-vault-addr", vaultAddr, "--allow-break-glass")
	is := testpki.NewIssuer(t)
	in := t.TempDir()
	const users, perUser = 8, 6
	var rows []string
	for i := 0; i < users*perUser; i++ {
		user := fmt.Sprintf("imp%d@example.com", i%users)
		k := testpki.RSAKey(t, 2048, i%4)
		crt := is.UserCert(t, k, testpki.CertOptions{Emails: []string{user}})
		f, pw := writePFX(t, in, fmt.Sprintf("f%02d", i), is.PFX(t, pkcs12.LegacyDES, k, crt, "pass-"+fmt.Sprint(i)), "pass-"+fmt.Sprint(i))
		rows = append(rows, fmt.Sprintf("%s,%s,%s", user, f, pw))
	}
	manifest := filepath.Join(in, "manifest.csv")
	os.WriteFile(manifest, []byte(strings.Join(rows, "\n")+"\n"), 0o600)
	importRun := func(concurrency string) *exec.Cmd {
		cmd := exec.Command(smimecaBin(t), "pfx", "import", "--manifest", manifest, "--concurrency", concurrency,
			"--server", s.grpcAddr, "--credentials", filepath.Join(s.data, "credentials", "admin"))
		cmd.Env = cleanEnv()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	escrowed := func() int {
		n := 0
		for u := 0; u < users; u++ {
			n += len(s.pfxList(t, fmt.Sprintf("imp%d@example.com", u)).Certificates)
		}
		return n
	}
	// 1. Vault killed mid-import (one file at a time, so that it is).
	imp := importRun("1")
	time.Sleep(time.Duration(100+mrand.IntN(200)) * time.Millisecond)
	conf := filepath.Join(s.data, "vault", "config.hcl")
	if r := run(t, 10e9, "pkill", "-KILL", "-f", "server -config "+conf); r.code != 0 {
		t.Fatalf("pkill the embedded Vault: %+v", r)
	}
	// Bundle calls meanwhile either succeed (the restarted Vault answered)
	// or get UNAVAILABLE: never another error (a bundle reads the user's
	// entry and decrypts its keys in one batch, so it cannot be partial).
	s.register("imp0@example.com", "check")
	for i := 0; i < 3; i++ {
		r := run(t, 60e9, smimecaBin(t), "bundle", "get", "--out", filepath.Join(t.TempDir(), "b"), "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "admin"), "--user", "imp0@example.com", "--device", "check",
			"--break-glass", "--reason", "fault test")
		if r.code != 0 && !strings.Contains(r.stderr, "Unavailable") {
			t.Errorf("a bundle during the Vault crash: %+v, want success or UNAVAILABLE", r)
		}
	}
	if err := imp.Wait(); err == nil {
		t.Log("the import completed through the Vault crash (the client's retries reached the restarted Vault)")
	}
	s.waitHealth(t, http.StatusOK)
	t.Logf("after the Vault crash %d of %d files were escrowed", escrowed(), users*perUser)
	mustOK(t, "manifest re-run after the Vault crash", s.cli("pfx", "import", "--manifest", manifest, "--concurrency", "4"))
	if n := escrowed(); n != users*perUser {
		t.Fatalf("after the re-run %d files are escrowed, want %d", n, users*perUser)
	}

	// 2. smimeca killed mid-import: the users' escrow purged and the
	// manifest run again.
	for u := 0; u < users; u++ {
		mustOK(t, "purge", s.cli("pfx", "purge", "--user", fmt.Sprintf("imp%d@example.com", u)))
	}
	imp = importRun("1")
	time.Sleep(time.Duration(100+mrand.IntN(200)) * time.Millisecond)
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
	if err := imp.Wait(); err == nil {
		t.Log("the import finished before the crash reached it")
	}
	s.start()
	t.Logf("after the smimeca crash %d of %d files were escrowed", escrowed(), users*perUser)
	mustOK(t, "manifest re-run after the smimeca crash", s.cli("pfx", "import", "--manifest", manifest, "--concurrency", "4"))
	if n := escrowed(); n != users*perUser {
		t.Fatalf("after the re-run %d files are escrowed, want %d", n, users*perUser)
	}
	// Every key is whole: the break-glass bundle of each user re-wraps all.
	for u := 0; u < users; u++ {
		user := fmt.Sprintf("imp%d@example.com", u)
		s.register(user, "check")
		b := s.bundle(t, filepath.Join(t.TempDir(), "b"), "--user", user, "--device", "check",
			"--credentials", filepath.Join(s.data, "credentials", "admin"), "--break-glass", "--reason", "fault test")
		if len(b.Encryption) != perUser {
			t.Errorf("%s: %d keys in the bundle, want %d", user, len(b.Encryption), perUser)
		}
	}
}

// fill writes a file in dir until the disk is full, and returns it.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	for { // the last bytes
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
	return p
}

// TestDiskFull runs smimeca with its data on a small file system that
// fills up: enrolments fail with a clear error (HTTP 500, "no space" in
// the log), nothing is half-written, and once space returns the same
// requests succeed and the database is whole.
func TestDiskFull(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.MkdirAll(mnt, 0o700)
	if r := run(t, 10e9, "mount", "-t", "tmpfs", "-o", "size=16M", "tmpfs", mnt); r.code != 0 {
		t.Fatalf("mount a 16 MiB tmpfs (the test runs as root, as make test does): %s", r.stderr)
	}
	t.Cleanup(func() { run(t, 10e9, "umount", "-l", mnt) })
	s := newServer(t)
	s.stop()
	// The same installation, moved onto the small file system (with a
	// token, its keys stay in the token, which never gives a key to a new
	// CA).
	mustOK(t, "move the data directory", run(t, 60e9, "cp", "-a", s.data, filepath.Join(mnt, "data")))
	s.data = filepath.Join(mnt, "data")
	s.start()
	ctx := context.Background()
	devs, enr, _ := s.adminClients(t)
	ra := raCert(t, s)
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	var devices []*scepDevice
	for i := 0; i < 12; i++ {
		devices = append(devices, enrolling(t, devs, enr, key, "full@example.com", fmt.Sprintf("d%d", i), ra))
	}
	url := s.baseURL + "/scep"
	if devices[0].enrol(url, ra) == nil {
		t.Fatal("enrolment with space left failed")
	}
	filler := fill(t, mnt)
	failed := 0
	for _, d := range devices[1:] {
		if d.enrol(url, ra) == nil {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("every enrolment succeeded on a full disk (the test did not fill it)")
	}
	if !strings.Contains(s.log.String(), "no space left on device") {
		t.Errorf("the log does not say the disk is full")
	}
	os.Remove(filler)
	for i, d := range devices {
		if d.enrol(url, ra) == nil {
			t.Errorf("device %d: enrolment after space returned failed", i)
		}
	}
	list, err := enr.ListCertificates(ctx, &pb.ListCertificatesRequest{User: "full@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetCertificates()) != len(devices) {
		t.Errorf("%d certificates for %d devices after the disk was full", len(list.GetCertificates()), len(devices))
	}
	// The database survives a restart intact.
	s.restart()
	if r := s.cli("cert", "list", "--user", "full@example.com"); r.code != 0 || strings.Count(r.stdout, "full@example.com") != len(devices) {
		t.Errorf("after a restart: %+v", r)
	}
}
