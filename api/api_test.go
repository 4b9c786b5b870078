package api_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/api"
	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

type server struct {
	addr    string
	credDir string
	pool    *x509.CertPool
}

func startServer(t *testing.T) *server {
	t.Helper()
	c := testpki.NewCA(t, ca.KeyTypeEC)
	store, err := nosqlstore.New(c.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	domains, _ := policy.NewDomains([]string{"example.com"})
	e, err := policy.NewEnrollment(c, store, store, policy.Config{Domains: domains})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pki, err := ca.EnsureAPIPKI(dir, filepath.Join(dir, "credentials"), nil, map[string]string{
		"admin": api.RoleURI(api.RoleAdmin), "profile": api.RoleURI(api.RoleProfile),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(pki.TLSConfig(), api.DefaultAccess, api.Services{
		Enrollment: api.NewEnrollmentService(e, "http://scep.test/scep", nil),
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	pool := x509.NewCertPool()
	pool.AddCert(pki.CA)
	return &server{addr: ln.Addr().String(), credDir: filepath.Join(dir, "credentials"), pool: pool}
}

func (s *server) dial(t *testing.T, role string) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.pool, ServerName: "localhost"}
	if role != "" {
		pair, err := tls.LoadX509KeyPair(filepath.Join(s.credDir, role, ca.ClientCertFile), filepath.Join(s.credDir, role, ca.ClientKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("code %s (%v), want %s", st.Code(), err, code)
	}
	if !strings.Contains(st.Message(), contains) {
		t.Fatalf("message %q does not contain %q", st.Message(), contains)
	}
}

func TestRoles(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	req := &pb.CreateChallengeRequest{User: "alice@example.com", DeviceId: "dev-1"}

	_, err := pb.NewEnrollmentClient(s.dial(t, "")).CreateChallenge(ctx, req)
	wantCode(t, err, codes.Unauthenticated, "client certificate")

	_, err = pb.NewEnrollmentClient(s.dial(t, "profile")).CreateChallenge(ctx, req)
	wantCode(t, err, codes.PermissionDenied, "profile")

	admin := pb.NewEnrollmentClient(s.dial(t, "admin"))
	resp, err := admin.CreateChallenge(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetChallenge() == "" || resp.GetUser() != "alice@example.com" || resp.GetScepUrl() != "http://scep.test/scep" {
		t.Errorf("response %v", resp)
	}

	// Health needs no client certificate.
	h, err := healthpb.NewHealthClient(s.dial(t, "")).Check(ctx, &healthpb.HealthCheckRequest{Service: "smimeca.v1.Enrollment"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v %v", h, err)
	}
}

func TestErrorsSayWhatToFix(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	admin := pb.NewEnrollmentClient(s.dial(t, "admin"))
	_, err := admin.CreateChallenge(ctx, &pb.CreateChallengeRequest{User: "alice@evil.com", DeviceId: "d"})
	wantCode(t, err, codes.InvalidArgument, "domain-not-allowed")
	_, err = admin.CreateChallenge(ctx, &pb.CreateChallengeRequest{User: "alice@example.com"})
	wantCode(t, err, codes.InvalidArgument, "device id is empty")
	_, err = admin.CreateChallenge(ctx, &pb.CreateChallengeRequest{User: "alice@example.com", DeviceId: "d", TtlSeconds: -1})
	wantCode(t, err, codes.InvalidArgument, "ttl_seconds")
	_, err = admin.RevokeCertificate(ctx, &pb.RevokeCertificateRequest{Serial: "12345"})
	wantCode(t, err, codes.NotFound, "12345")
	_, err = admin.ListCertificates(ctx, &pb.ListCertificatesRequest{})
	wantCode(t, err, codes.InvalidArgument, "user or a device")
	list, err := admin.ListCertificates(ctx, &pb.ListCertificatesRequest{User: "nobody@example.com"})
	if err != nil || len(list.GetCertificates()) != 0 {
		t.Errorf("empty list: %v %v", list, err)
	}
}
