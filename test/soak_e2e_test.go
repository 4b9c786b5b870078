package test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	smallscep "github.com/smallstep/scep"
	scepx509 "github.com/smallstep/scep/x509util"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// liveHeap returns the server's live heap in KiB right after a garbage
// collection (pprof's heap profile with gc=1 runs one and reports
// HeapAlloc): where a leak shows, unlike RSS, which also holds the
// garbage GOGC=400 lets accumulate and the memory map of the database. It
// takes the least of three readings 200 ms apart, so that a transient
// that happens to be in flight at one of them (a CRL regeneration after
// revocations holds a few MiB, growing with the revoked certificates)
// does not read as growth.
func liveHeap(t *testing.T, opsAddr string) int {
	t.Helper()
	least := -1
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		if n := heapAlloc(t, opsAddr); least < 0 || n < least {
			least = n
		}
	}
	return least
}

func heapAlloc(t *testing.T, opsAddr string) int {
	t.Helper()
	b := heapProfile(t, opsAddr, "gc=1&debug=1")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "# HeapAlloc = "); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n >> 10
		}
	}
	t.Fatalf("no HeapAlloc in the heap profile: %.200s", b)
	return 0
}

// saveHeapProfile writes the server's heap profile (after a garbage
// collection) to path, for `go tool pprof -base` between two samples.
func saveHeapProfile(t *testing.T, opsAddr, path string) {
	t.Helper()
	if err := os.WriteFile(path, heapProfile(t, opsAddr, "gc=1"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// heapProfile fetches the server's heap profile with the query (gc=1 runs
// a collection first) from the ops listener.
func heapProfile(t *testing.T, opsAddr, query string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + opsAddr + "/debug/pprof/heap?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// procStats reads a process's anonymous resident memory (KiB: heap,
// stacks; not the file-backed memory map of the database, which grows with
// the data by design), its total resident memory and its open files.
func procStats(t *testing.T, pid int) (anonKiB, rssKiB, files int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			rssKiB, _ = strconv.Atoi(strings.Fields(l)[1])
		}
		if strings.HasPrefix(l, "RssAnon:") {
			anonKiB, _ = strconv.Atoi(strings.Fields(l)[1])
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return anonKiB, rssKiB, len(fds)
}

// renewal builds a RenewalReq for key, signed with the certificate it holds.
func renewal(t *testing.T, key *rsa.PrivateKey, cur *x509.Certificate, ra *x509.Certificate) []byte {
	t.Helper()
	der, err := scepx509.CreateCertificateRequest(rand.Reader, &scepx509.CertificateRequest{
		CertificateRequest: x509.CertificateRequest{Subject: pkix.Name{CommonName: "renew"}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	m, err := smallscep.NewCSRRequest(csr, &smallscep.PKIMessage{MessageType: smallscep.RenewalReq,
		Recipients: []*x509.Certificate{ra}, SignerKey: key, SignerCert: cur})
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

// TestSoak runs a mixed load — enrol a new device, renew it, import a PFX
// (deleting the user's oldest beyond four), fetch a break-glass bundle,
// revoke — for $SMIMECA_SOAK (default 20 s;
// make soak runs 10 minutes) and checks that the server's open files stay
// flat and its live heap after a garbage collection does not keep growing:
// the last quarter's peak may not exceed the second quarter's by more than
// half (or 16 MiB). RSS is reported: it also holds garbage (GOGC=400), the
// peaks of regenerating a CRL that grows with every revocation, and the
// memory map of a database that grows with every certificate.
func TestSoak(t *testing.T) {
	d := 20 * time.Second
	if v := os.Getenv("SMIMECA_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatalf("SMIMECA_SOAK=%q: %v", v, err)
		}
	}
	v := testvault.Start(t)
	// All the load comes from one address: the per-IP rate would refuse it.
	s := escrowServer(t, v, "--ops-pprof", "--scep-rate-per-ip", "0", "--allow-break-glass")
	ctx := context.Background()
	devs, enr, conn := s.adminClients(t)
	esc, bundles := pb.NewEscrowAdminClient(conn), pb.NewProfileBundlesClient(conn)
	ra := raCert(t, s)
	url := s.baseURL + "/scep"
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	is := testpki.NewIssuer(t)
	ukey := testpki.RSAKey(t, 2048, 0)

	type sample struct{ live, anon, rss, files int }
	var samples []sample
	start := time.Now()
	nextSample := start
	ops := 0
	imported := map[string][]string{}
	for i := 0; time.Since(start) < d; i++ {
		user, id := fmt.Sprintf("soak%d@example.com", i%20), fmt.Sprintf("dev-%d", i)
		crt := enrolling(t, devs, enr, key, user, id, ra).enrol(url, ra)
		if crt == nil {
			t.Fatalf("enrolment %d failed", i)
		}
		renewed := (&scepDevice{key: key, cert: crt, msg: renewal(t, key, crt, ra)}).enrol(url, ra)
		if renewed == nil {
			t.Fatalf("renewal %d failed", i)
		}
		if i%2 == 0 {
			pfx := is.PFX(t, pkcs12.LegacyDES, ukey, is.UserCert(t, ukey, testpki.CertOptions{Emails: []string{user}}), "pw")
			res, err := esc.ImportPfx(ctx, &pb.ImportPfxRequest{User: user, Pfx: pfx, PasswordSource: &pb.ImportPfxRequest_Password{Password: "pw"}})
			if err != nil {
				t.Fatalf("import %d: %v", i, err)
			}
			// Each user keeps at most 4: the oldest is deleted (and its
			// KV versions destroyed).
			imported[user] = append(imported[user], res.GetCertificate().GetSha256())
			if len(imported[user]) > 4 {
				if _, err := esc.DeleteUserCertificate(ctx, &pb.DeleteUserCertificateRequest{User: user, Thumbprint: imported[user][0]}); err != nil {
					t.Fatalf("delete %d: %v", i, err)
				}
				imported[user] = imported[user][1:]
			}
			if _, err := bundles.GetUserBundle(ctx, &pb.GetUserBundleRequest{User: user, DeviceId: id,
				Format: pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12, BreakGlass: true, BreakGlassReason: "soak"}); err != nil {
				t.Fatalf("bundle %d: %v", i, err)
			}
		}
		if _, err := enr.RevokeCertificate(ctx, &pb.RevokeCertificateRequest{Serial: renewed.SerialNumber.String()}); err != nil {
			t.Fatalf("revoke %d: %v", i, err)
		}
		ops++
		if time.Now().After(nextSample) {
			anon, rss, files := procStats(t, s.cmd.Process.Pid)
			samples = append(samples, sample{liveHeap(t, s.opsAddr), anon, rss, files})
			if dir := os.Getenv("SMIMECA_SOAK_PROFILES"); dir != "" {
				saveHeapProfile(t, s.opsAddr, fmt.Sprintf("%s/heap-%02d.pb.gz", dir, len(samples)))
			}
			nextSample = nextSample.Add(d / 20)
		}
	}
	if len(samples) < 8 {
		t.Fatalf("only %d samples in %s", len(samples), d)
	}
	q := len(samples) / 4
	peak := func(from, to int) (live, anon, rss, files int) {
		for _, x := range samples[from:to] {
			live, anon, rss, files = max(live, x.live), max(anon, x.anon), max(rss, x.rss), max(files, x.files)
		}
		return
	}
	live2, anon2, rss2, files2 := peak(q, 2*q)
	live4, anon4, rss4, files4 := peak(3*q, len(samples))
	t.Logf("%s, %d rounds (each: enrol, renew, revoke; every other: import, delete, bundle): live heap after GC %d → %d KiB; anonymous RSS %d → %d KiB, total RSS %d → %d KiB; open files %d → %d",
		d, ops, live2, live4, anon2, anon4, rss2, rss4, files2, files4)
	// smimeca runs with GOGC=400, so its heap takes a while to settle:
	// allow a quarter or 32 MiB, whichever is more. A leak of 10 KiB per
	// round passes that within the 10 minutes of make soak.
	if live4 > live2+max(live2/2, 16<<10) {
		t.Errorf("the live heap keeps growing: %d KiB in the second quarter, %d KiB in the last", live2, live4)
	}
	if files4 > files2+4 {
		t.Errorf("open files keep growing: %d in the second quarter, %d in the last", files2, files4)
	}
}
