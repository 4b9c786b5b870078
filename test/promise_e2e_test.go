package test

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testvault"
)

// TestNobodyButTheDevice reproduces, against a running server, the ways to
// a user's keys and signature the issue found, each as an attacker holding
// one credential would try it; every one must now end with nothing.
func TestNobodyButTheDevice(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	s := escrowServer(t, v)
	w := t.TempDir()
	addr := "localhost" + s.grpcAddr[strings.LastIndex(s.grpcAddr, ":"):]
	s.escrowOpenSSLPFX(t, w, "ceo@example.com")
	ceo := s.registerWithIdentity("ceo@example.com", "ceo-iphone")

	t.Run("the profile role signs as nobody", func(t *testing.T) {
		// GetUserBundle with the profile credential, raw over gRPC: no
		// challenge in the clear, and what it has enrols nothing.
		out := mustOK(t, "GetUserBundle", s.grpcurl(t, "profile", "-d", `{"user":"ceo@example.com","device_id":"ceo-iphone"}`, addr, "smimeca.v1.ProfileBundles/GetUserBundle"))
		if strings.Contains(out, `"challenge"`) || !strings.Contains(out, `"envelopedChallenge"`) {
			t.Fatalf("the profile credential's bundle: %s", out)
		}
		b := s.bundle(t, filepath.Join(w, "b"), "--user", "ceo@example.com", "--device", "ceo-iphone")
		env, _ := os.ReadFile(filepath.Join(w, "b", b.Signing.ChallengeFile))
		if r := s.scepclient(filepath.Join(w, "attacker"), base64.StdEncoding.EncodeToString(env)); r.code == 0 {
			t.Fatal("the envelope itself enrolled")
		}
		if r := s.cli("cert", "list", "--user", "ceo@example.com"); strings.Contains(r.stdout, "ceo-iphone") {
			t.Fatalf("a certificate was issued to the CEO's device: %s", r.stdout)
		}
	})

	t.Run("the registrar steers no key", func(t *testing.T) {
		attacker := s.makeIdentity(t.TempDir(), "ceo-iphone")
		r := s.cli("device", "register", "--user", "ceo@example.com", "--device", "ceo-iphone", "--identity-cert", attacker.cert)
		if r.code == 0 || !strings.Contains(r.stderr, "identity-change-needs-rekey") {
			t.Fatalf("re-registration with another identity: %+v", r)
		}
		// One identity, one device: not on another user's device either.
		r = s.cli("device", "register", "--user", "cfo@example.com", "--device", "ceo-iphone", "--identity-cert", ceo.cert)
		if r.code == 0 || !strings.Contains(r.stderr, "identity-in-use") || !strings.Contains(r.stderr, "ceo@example.com") {
			t.Fatalf("the CEO's identity on another user's device: %+v", r)
		}
		// The identity must name the device.
		r = s.cli("device", "register", "--user", "ceo@example.com", "--device", "spare", "--identity-cert", attacker.cert)
		if r.code == 0 || !strings.Contains(r.stderr, "does not name device") {
			t.Fatalf("an identity naming another device: %+v", r)
		}
		// A rekey by the registrar is audited and holds every release.
		mustOK(t, "rekey", s.cli("device", "rekey", "--user", "ceo@example.com", "--device", "ceo-iphone", "--identity-cert", attacker.cert,
			"--credentials", filepath.Join(s.data, "credentials", "admin")))
		b := run(t, 60e9, smimecaBin(t), "bundle", "get", "--out", filepath.Join(w, "stolen"), "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "profile"), "--user", "ceo@example.com", "--device", "ceo-iphone")
		if b.code == 0 || !strings.Contains(b.stderr, "identity-on-hold") {
			t.Fatalf("a bundle right after the rekey: %+v", b)
		}
		if _, err := os.Stat(filepath.Join(w, "stolen", "bundle.json")); err == nil {
			t.Fatal("keys were written for the rekeyed identity")
		}
		audit, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
		if !strings.Contains(string(audit), `"action":"device.rekey"`) || !strings.Contains(string(audit), "held until") {
			t.Errorf("the rekey is not in the audit trail with its hold")
		}
		// The profile role cannot lift the hold; an administrator can.
		if r := s.grpcurl(t, "profile", "-d", `{"user":"ceo@example.com","device_id":"ceo-iphone"}`, addr, "smimeca.v1.Devices/ConfirmDeviceIdentity"); r.code == 0 {
			t.Fatal("the profile role confirmed an identity")
		}
	})

	t.Run("revocation ends enrolment", func(t *testing.T) {
		challenge := s.challenge("ceo@example.com", "ipad")
		mustOK(t, "revoke", s.cli("cert", "revoke", "--user", "ceo@example.com", "--device", "ipad", "--reason", "keyCompromise"))
		if r := s.scepclient(filepath.Join(w, "after-revoke"), challenge); r.code == 0 {
			t.Fatal("a challenge handed out before the revocation enrolled after it")
		}
	})

	t.Run("credentials end", func(t *testing.T) {
		// The server renews the bootstrap profile credential (its file gone):
		// the predecessor is revoked, and refused in the handshake.
		old := filepath.Join(w, "old-profile")
		copyDir(t, filepath.Join(s.data, "credentials", "profile"), old)
		s.stop()
		os.RemoveAll(filepath.Join(s.data, "credentials", "profile"))
		s.start()
		if r := s.grpcurlWith(t, old, "-d", `{"user":"ceo@example.com","device_id":"ceo-iphone"}`, addr, "smimeca.v1.ProfileBundles/GetUserBundle"); r.code == 0 {
			t.Fatalf("the renewed credential's predecessor still works: %+v", r)
		}
		if r := s.grpcurlWith(t, old, addr, "list"); r.code == 0 {
			t.Fatalf("a revoked credential lists services by reflection: %+v", r)
		}
		mustOK(t, "the renewed profile credential", s.grpcurl(t, "profile", addr, "list"))
		mustOK(t, "revoke by name", s.cli("credentials", "revoke", "--name", "profile"))
		if r := s.grpcurl(t, "profile", addr, "list"); r.code == 0 {
			t.Fatalf("a credential revoked by name still connects: %+v", r)
		}
	})
}

// grpcurlWith calls grpcurl with the credential in dir.
func (s *server) grpcurlWith(t *testing.T, dir string, args ...string) result {
	t.Helper()
	full := append([]string{"-connect-timeout", grpcurlConnectTimeout, "-cacert", filepath.Join(dir, "ca.crt"), "-cert", filepath.Join(dir, "client.crt"), "-key", filepath.Join(dir, "client.key")}, args...)
	return run(t, 60*time.Second, tool(t, "grpcurl"), full...)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
}
