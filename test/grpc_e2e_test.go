package test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// grpcurlConnectTimeout bounds grpcurl's connection (seconds): a refused
// handshake — the tests' revoked and missing credentials — is retried
// until it passes (10 s by default); a loopback connection needs far less.
const grpcurlConnectTimeout = "4"

func (s *server) grpcurl(t *testing.T, role string, args ...string) result {
	t.Helper()
	full := []string{"-connect-timeout", grpcurlConnectTimeout, "-cacert", filepath.Join(s.data, "credentials", "admin", "ca.crt")}
	if role != "" {
		dir := filepath.Join(s.data, "credentials", role)
		full = append(full, "-cert", filepath.Join(dir, "client.crt"), "-key", filepath.Join(dir, "client.key"))
	}
	full = append(full, args...)
	return run(t, 60*time.Second, tool(t, "grpcurl"), full...)
}

// TestGRPCWithGrpcurl drives the API with grpcurl: reflection, health,
// roles, and a challenge created over gRPC that scepclient then uses.
func TestGRPCWithGrpcurl(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		s := newServer(t)
		addr := "localhost" + s.grpcAddr[strings.LastIndex(s.grpcAddr, ":"):]

		list := mustOK(t, "grpcurl list", s.grpcurl(t, "admin", addr, "list"))
		for _, svc := range []string{"smimeca.v1.Enrollment", "grpc.health.v1.Health"} {
			if !strings.Contains(list, svc) {
				t.Errorf("reflection does not list %s:\n%s", svc, list)
			}
		}
		if r := s.grpcurl(t, "", addr, "grpc.health.v1.Health/Check"); r.code == 0 || strings.Contains(r.stdout, "SERVING") {
			t.Errorf("a connection without a client certificate: %+v", r)
		}
		health := mustOK(t, "health with a credential", s.grpcurl(t, "profile", addr, "grpc.health.v1.Health/Check"))
		if !strings.Contains(health, "SERVING") {
			t.Errorf("health: %s", health)
		}

		req := `{"user":"frank@example.com","device_id":"ipad-7","ttl_seconds":3600}`
		r := s.grpcurl(t, "", "-d", req, addr, "smimeca.v1.Enrollment/CreateChallenge")
		if r.code == 0 || strings.Contains(r.stdout, "challenge") {
			t.Errorf("no client cert: %+v", r)
		}
		r = s.grpcurl(t, "profile", "-d", req, addr, "smimeca.v1.Enrollment/CreateChallenge")
		if r.code == 0 || !strings.Contains(r.stderr, "PermissionDenied") {
			t.Errorf("profile role: %+v", r)
		}
		r = s.grpcurl(t, "admin", "-d", `{"user":"frank@evil.org","device_id":"x"}`, addr, "smimeca.v1.Enrollment/CreateChallenge")
		if r.code == 0 || !strings.Contains(r.stderr, "InvalidArgument") || !strings.Contains(r.stderr, "allowed e-mail domains") {
			t.Errorf("domain outside policy: %+v", r)
		}

		r = s.grpcurl(t, "admin", "-d", req, addr, "smimeca.v1.Enrollment/CreateChallenge")
		if r.code == 0 || !strings.Contains(r.stderr, "NotFound") || !strings.Contains(r.stderr, "smimeca device register") {
			t.Errorf("challenge for an unregistered device: %+v", r)
		}
		mustOK(t, "RegisterDevice as admin", s.grpcurl(t, "admin", "-d", `{"user":"frank@example.com","device_id":"ipad-7"}`, addr, "smimeca.v1.Devices/RegisterDevice"))
		out := mustOK(t, "CreateChallenge", s.grpcurl(t, "admin", "-d", req, addr, "smimeca.v1.Enrollment/CreateChallenge"))
		var resp struct {
			Challenge string `json:"challenge"`
			User      string `json:"user"`
			ScepURL   string `json:"scepUrl"`
			ExpiresAt string `json:"expiresAt"`
		}
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if resp.ScepURL != s.baseURL+"/scep" || resp.User != "frank@example.com" {
			t.Errorf("response %+v", resp)
		}
		mustOK(t, "enrol with gRPC challenge", s.scepclient(filepath.Join(t.TempDir(), "d"), resp.Challenge))
		out = mustOK(t, "ListCertificates", s.grpcurl(t, "admin", "-d", `{"user":"frank@example.com","device_id":"ipad-7"}`, addr, "smimeca.v1.Enrollment/ListCertificates"))
		if !strings.Contains(out, "frank@example.com") {
			t.Errorf("list: %s", out)
		}
		r = s.grpcurl(t, "admin", "-d", `{"serial":"424242"}`, addr, "smimeca.v1.Enrollment/RevokeCertificate")
		if r.code == 0 || !strings.Contains(r.stderr, "NotFound") {
			t.Errorf("revoke unknown serial: %+v", r)
		}
	})
}

// TestCLIErrors checks exit codes and messages of the client commands.
func TestCLIErrors(t *testing.T) {
	t.Parallel()
	s := newServer(t)
	bin := smimecaBin(t)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"bogus"}, 2, "unknown command"},
		{[]string{"challenge", "create", "--user", "a@example.com"}, 2, "--device"},
		{[]string{"cert", "revoke", "--serial", "1", "--device", "x", "--server", s.grpcAddr}, 2, "exactly one"},
		{[]string{"cert", "list", "--user", "a@example.com", "-o", "yaml"}, 2, "table or json"},
		{[]string{"cert", "revoke", "--device", "x", "--server", s.grpcAddr}, 2, "needs --user"},
		{[]string{"device", "retire", "--user", "a@example.com", "--device", "x"}, 2, "--reason"},
		{[]string{"device", "register", "--user", "a@example.com", "--device", "x", "--identity-cert", "/nonexistent"}, 2, "--identity-cert"},
		{[]string{"challenge", "create", "--user", "a@example.com", "--device", "unregistered", "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "admin")}, 1, "smimeca device register"},
		{[]string{"bundle", "get", "--user", "a@example.com", "--device", "x", "--out", "/tmp/x", "--break-glass"}, 2, "--reason"},
		{[]string{"challenge", "create", "--user", "a@evil.org", "--device", "x", "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "admin")}, 1, "domain-not-allowed"},
		{[]string{"challenge", "create", "--user", "a@example.com", "--device", "x", "--server", s.grpcAddr,
			"--credentials", filepath.Join(s.data, "credentials", "profile")}, 1, "PermissionDenied"},
		{[]string{"challenge", "create", "--user", "a@example.com", "--device", "x", "--server", s.grpcAddr,
			"--credentials", "/nonexistent"}, 1, "load client credentials"},
		{[]string{"serve", "--public-url", "ftp://x"}, 2, "http(s)"},
	}
	for _, c := range cases {
		r := run(t, 30*time.Second, bin, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("smimeca %s: exit %d, stderr %q; want exit %d and %q", strings.Join(c.args, " "), r.code, r.stderr, c.code, c.want)
		}
	}
}
