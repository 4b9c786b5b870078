package api_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/api"
	"github.com/smimeca/smimeca/api/apipki"
	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

type server struct {
	addr    string
	credDir string
	pool    *x509.CertPool
	ca      *testpki.CA
	pki     *apipki.PKI
}

// options are what a test server may be given beyond the defaults.
type options struct {
	identityCAs *x509.CertPool
	keys        policy.KeyStore
	escrow      pb.EscrowAdminServer
}

func startServer(t *testing.T) *server { return startServerWith(t, options{}) }

// fixture is the API's services on a real CA, store and policy, with the
// credentials of each role.
type fixture struct {
	ca       *testpki.CA
	pki      *apipki.PKI
	creds    *policy.Credentials
	services api.Services
	dir      string
}

func newFixture(t testing.TB, o options) *fixture {
	t.Helper()
	c := testpki.NewCA(t, ca.KeyTypeEC)
	store, err := nosqlstore.New(c.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	domains, _ := policy.NewDomains([]string{"example.com"})
	e, err := policy.New(c, store, policy.Config{Domains: domains, DeviceIdentityCAs: o.identityCAs})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pki, err := apipki.Ensure(dir, keystore.Files(dir), filepath.Join(dir, "credentials"), nil, api.Roles())
	if err != nil {
		t.Fatal(err)
	}
	cstore, err := nosqlstore.NewCredentialStore(c.DB.DB)
	if err != nil {
		t.Fatal(err)
	}
	creds := policy.NewCredentials(cstore, pki, api.Roles(), nil)
	for role, crt := range pki.Clients {
		if err := creds.Bootstrap(context.Background(), role, role, crt); err != nil {
			t.Fatal(err)
		}
	}
	profCert, profKey := c.ProfileSigner(t)
	return &fixture{ca: c, pki: pki, creds: creds, dir: dir, services: api.Services{
		Enrollment:  api.NewEnrollmentService(e, "http://scep.test/scep", nil),
		Devices:     api.NewDeviceService(e, nil),
		Credentials: api.NewCredentialService(creds, pki.CA, nil),
		Bundles: api.NewBundleService(policy.NewBundles(e, o.keys, c, "http://scep.test/scep", nil),
			&api.ProfileSigner{Cert: profCert, Key: profKey, Chain: []*x509.Certificate{c.Intermediate()}}, nil),
		Escrow: o.escrow,
	}}
}

func startServerWith(t *testing.T, o options) *server {
	t.Helper()
	f := newFixture(t, o)
	srv := api.NewServer(f.pki.TLSConfig(), api.NewAuthorizer(api.DefaultAccess, f.creds), f.services, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	pool := x509.NewCertPool()
	pool.AddCert(f.pki.CA)
	return &server{addr: ln.Addr().String(), credDir: filepath.Join(f.dir, "credentials"), pool: pool, ca: f.ca, pki: f.pki}
}

// dialWith connects with a client certificate and key.
func (s *server) dialWith(t *testing.T, pair tls.Certificate) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: s.pool, ServerName: "localhost", Certificates: []tls.Certificate{pair}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (s *server) dial(t *testing.T, role string) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.pool, ServerName: "localhost"}
	if role != "" {
		pair, err := tls.LoadX509KeyPair(filepath.Join(s.credDir, role, apipki.ClientCertFile), filepath.Join(s.credDir, role, apipki.ClientKeyFile))
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

	// No client certificate: no TLS connection at all (the message is the
	// server's alert or the broken connection, as TLS 1.3 timing has it).
	_, err := pb.NewEnrollmentClient(s.dial(t, "")).CreateChallenge(ctx, req)
	wantCode(t, err, codes.Unavailable, "")

	_, err = pb.NewEnrollmentClient(s.dial(t, "profile")).CreateChallenge(ctx, req)
	wantCode(t, err, codes.PermissionDenied, "profile")

	admin := pb.NewEnrollmentClient(s.dial(t, "admin"))
	_, err = admin.CreateChallenge(ctx, req)
	wantCode(t, err, codes.NotFound, "not registered")
	if _, err := pb.NewDevicesClient(s.dial(t, "registrar")).RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: "alice@example.com", DeviceId: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	resp, err := admin.CreateChallenge(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetChallenge() == "" || resp.GetUser() != "alice@example.com" || resp.GetScepUrl() != "http://scep.test/scep" {
		t.Errorf("response %v", resp)
	}

	// Health needs a credential of any role (probes use the ops listener).
	h, err := healthpb.NewHealthClient(s.dial(t, "profile")).Check(ctx, &healthpb.HealthCheckRequest{Service: "smimeca.v1.Enrollment"})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v %v", h, err)
	}
	_, err = healthpb.NewHealthClient(s.dial(t, "")).Check(ctx, &healthpb.HealthCheckRequest{})
	wantCode(t, err, codes.Unavailable, "")
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
	wantCode(t, err, codes.InvalidArgument, "give the user")
	_, err = admin.CreateChallenge(ctx, &pb.CreateChallengeRequest{User: "alice@example.com", DeviceId: "unregistered"})
	wantCode(t, err, codes.NotFound, "smimeca device register")
	devices := pb.NewDevicesClient(s.dial(t, "admin"))
	_, err = devices.RetireDevice(ctx, &pb.RetireDeviceRequest{User: "alice@example.com", DeviceId: "unregistered", Reason: "x"})
	wantCode(t, err, codes.NotFound, "unknown-device")
	_, err = devices.RetireDevice(ctx, &pb.RetireDeviceRequest{User: "alice@example.com", DeviceId: "d"})
	wantCode(t, err, codes.InvalidArgument, "reason is required")
	_, err = devices.RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: "alice@example.com", DeviceId: "d", IdentityCertificate: []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")})
	wantCode(t, err, codes.InvalidArgument, "--device-identity-ca")
	list, err := admin.ListCertificates(ctx, &pb.ListCertificatesRequest{User: "nobody@example.com"})
	if err != nil || len(list.GetCertificates()) != 0 {
		t.Errorf("empty list: %v %v", list, err)
	}
}

// Each role may call its own services only, as an attacker holding one
// credential would find out.
func TestRoleMatrix(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	for _, tc := range []struct {
		role string
		call func(*grpc.ClientConn) error
		want codes.Code
	}{
		{"registrar", func(c *grpc.ClientConn) error {
			_, err := pb.NewDevicesClient(c).RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: "a@example.com", DeviceId: "d"})
			return err
		}, codes.OK},
		{"registrar", func(c *grpc.ClientConn) error {
			_, err := pb.NewEnrollmentClient(c).CreateChallenge(ctx, &pb.CreateChallengeRequest{User: "a@example.com", DeviceId: "d"})
			return err
		}, codes.PermissionDenied},
		{"registrar", func(c *grpc.ClientConn) error {
			_, err := pb.NewProfileBundlesClient(c).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d"})
			return err
		}, codes.PermissionDenied},
		{"profile", func(c *grpc.ClientConn) error {
			_, err := pb.NewDevicesClient(c).RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: "a@example.com", DeviceId: "x"})
			return err
		}, codes.PermissionDenied},
		{"profile", func(c *grpc.ClientConn) error {
			_, err := pb.NewCredentialsClient(c).ListCredentials(ctx, &pb.ListCredentialsRequest{})
			return err
		}, codes.PermissionDenied},
		{"profile", func(c *grpc.ClientConn) error { // no identity: no challenge it could be sealed to
			_, err := pb.NewProfileBundlesClient(c).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d"})
			return err
		}, codes.FailedPrecondition},
		{"profile", func(c *grpc.ClientConn) error { // an unregistered device gets nothing
			_, err := pb.NewProfileBundlesClient(c).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "ceo@example.com", DeviceId: "attacker"})
			return err
		}, codes.NotFound},
		{"profile", func(c *grpc.ClientConn) error { // no caller-chosen recipient
			//lint:ignore SA1019 the deprecated field is what an attacker would send
			_, err := pb.NewProfileBundlesClient(c).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d", Format: pb.DeliveryFormat_DELIVERY_FORMAT_CMS, DeviceCertificateDer: []byte{0x30, 0x03, 0x02, 0x01, 0x01}})
			return err
		}, codes.InvalidArgument},
		{"profile", func(c *grpc.ClientConn) error { // no plain PKCS#12
			_, err := pb.NewProfileBundlesClient(c).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d", Format: pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12, BreakGlass: true, BreakGlassReason: "please"})
			return err
		}, codes.PermissionDenied},
		{"profile", func(c *grpc.ClientConn) error {
			_, err := pb.NewProfileBundlesClient(c).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d", Format: pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12})
			return err
		}, codes.PermissionDenied},
		{"admin", func(c *grpc.ClientConn) error { // break-glass needs a reason
			_, err := pb.NewProfileBundlesClient(c).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d", Format: pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12, BreakGlass: true})
			return err
		}, codes.InvalidArgument},
	} {
		err := tc.call(s.dial(t, tc.role))
		if got := status.Code(err); got != tc.want {
			t.Errorf("%s: %v, want %s", tc.role, err, tc.want)
		}
	}
}

func newCSR(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

// Credentials are per identity: a new one works at once, and a revoked one
// is refused on its next call, with no restart.
func TestCredentialLifecycle(t *testing.T) {
	s := startServer(t)
	ctx := context.Background()
	admin := pb.NewCredentialsClient(s.dial(t, "admin"))
	key, csr := newCSR(t)
	resp, err := admin.IssueCredential(ctx, &pb.IssueCredentialRequest{Name: "mdm-prod", Role: "registrar", CsrDer: csr})
	if err != nil {
		t.Fatal(err)
	}
	pair := tls.Certificate{Certificate: [][]byte{resp.GetCertificateDer()}, PrivateKey: key}
	mdm := pb.NewDevicesClient(s.dialWith(t, pair))
	if _, err := mdm.RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: "a@example.com", DeviceId: "d"}); err != nil {
		t.Fatalf("new credential: %v", err)
	}
	d, err := mdm.GetDevice(ctx, &pb.GetDeviceRequest{User: "a@example.com", DeviceId: "d"})
	if err != nil || d.GetCreatedBy() != "mdm-prod" {
		t.Errorf("the registry does not name the credential: %v %v", d, err)
	}
	_, err = admin.IssueCredential(ctx, &pb.IssueCredentialRequest{Name: "mdm-prod", Role: "registrar", CsrDer: csr})
	wantCode(t, err, codes.FailedPrecondition, "revoke it first")
	_, err = admin.IssueCredential(ctx, &pb.IssueCredentialRequest{Name: "x", Role: "root", CsrDer: csr})
	wantCode(t, err, codes.InvalidArgument, "role")
	if _, err := admin.RevokeCredential(ctx, &pb.RevokeCredentialRequest{Name: "mdm-prod"}); err != nil {
		t.Fatal(err)
	}
	_, err = mdm.GetDevice(ctx, &pb.GetDeviceRequest{User: "a@example.com", DeviceId: "d"})
	wantCode(t, err, codes.Unauthenticated, "revoked")
	// A revoked credential gets no new connection: the TLS handshake
	// refuses it, so nothing it sends is decoded, reflection included.
	_, err = pb.NewDevicesClient(s.dialWith(t, pair)).GetDevice(ctx, &pb.GetDeviceRequest{User: "a@example.com", DeviceId: "d"})
	wantCode(t, err, codes.Unavailable, "")
	// The bootstrap credentials are credentials like any other.
	profile := s.dial(t, "profile")
	if _, err := reflectionClient(profile).ServerReflectionInfo(ctx); err != nil {
		t.Fatalf("reflection with a valid credential: %v", err)
	}
	if _, err := admin.RevokeCredential(ctx, &pb.RevokeCredentialRequest{Name: "profile"}); err != nil {
		t.Fatal(err)
	}
	_, err = pb.NewProfileBundlesClient(profile).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d"})
	wantCode(t, err, codes.Unauthenticated, "revoked")
	_, err = pb.NewProfileBundlesClient(s.dial(t, "profile")).GetUserBundle(ctx, &pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d"})
	wantCode(t, err, codes.Unavailable, "")
	if _, err := healthpb.NewHealthClient(s.dial(t, "profile")).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Errorf("health for a revoked credential: %v", err)
	}
	stream, err := reflectionClient(s.dial(t, "profile")).ServerReflectionInfo(ctx)
	if err == nil {
		err = stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		if err == nil {
			_, err = stream.Recv()
		}
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("reflection for a revoked credential: %v", err)
	}
	// By serial: one credential, named by the serial credentials list shows.
	_, err = admin.RevokeCredential(ctx, &pb.RevokeCredentialRequest{})
	wantCode(t, err, codes.InvalidArgument, "name")
	byName, err := admin.ListCredentials(ctx, &pb.ListCredentialsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range byName.GetCredentials() {
		if c.GetName() == "admin" {
			continue
		}
		_, err := admin.RevokeCredential(ctx, &pb.RevokeCredentialRequest{Serial: c.GetSerial()})
		if c.GetRevokedAt() != nil {
			wantCode(t, err, codes.FailedPrecondition, "revoked")
			continue
		}
		if err != nil {
			t.Fatalf("revoke %s by serial: %v", c.GetName(), err)
		}
		_, err = pb.NewDevicesClient(s.dial(t, c.GetRole())).ListDevices(ctx, &pb.ListDevicesRequest{User: "a@example.com"})
		wantCode(t, err, codes.Unavailable, "")
	}
	list, err := admin.ListCredentials(ctx, &pb.ListCredentialsRequest{})
	if err != nil || len(list.GetCredentials()) != len(api.Roles())+1 { // one bootstrap credential per role, and mdm-prod
		t.Fatalf("list: %v %v", list, err)
	}
}

// A certificate the API CA signed but that is not a registered credential
// (one made before the registry, or with a stolen CA key) is refused: the
// registry, not the CA signature alone, decides.
func TestUnregisteredCertificateRefused(t *testing.T) {
	s := startServer(t)
	key, csrDER := newCSR(t)
	csr, _ := x509.ParseCertificateRequest(csrDER)
	crt, err := s.pki.SignClient(csr, "rogue", api.RoleURI(api.RoleAdmin), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn := s.dialWith(t, tls.Certificate{Certificate: [][]byte{crt.Raw}, PrivateKey: key})
	_, err = pb.NewCredentialsClient(conn).ListCredentials(context.Background(), &pb.ListCredentialsRequest{})
	wantCode(t, err, codes.Unavailable, "")
}

func reflectionClient(conn *grpc.ClientConn) reflectionpb.ServerReflectionClient {
	return reflectionpb.NewServerReflectionClient(conn)
}
