package api

import (
	"crypto/tls"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// Services are the gRPC services the server registers.
type Services struct {
	Enrollment pb.EnrollmentServer
	// Escrow is optional: without Vault the server runs enrolment only.
	Escrow pb.EscrowAdminServer
	// Bundles serves the profile service.
	Bundles pb.ProfileBundlesServer
	// Devices is the device registry.
	Devices pb.DevicesServer
	// Credentials manages API credentials.
	Credentials pb.CredentialsServer
}

// NewServer returns a gRPC server with mutual TLS (client certificates are
// verified when given; the role check rejects calls without one), the role
// interceptors, the standard health service (reporting SERVING for every
// registered service) and reflection. Every data call is authorized by
// auth.
func NewServer(tlsConfig *tls.Config, auth *Authorizer, svc Services) *grpc.Server {
	cfg := tlsConfig.Clone()
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	cfg.MinVersion = tls.VersionTLS12
	s := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(cfg)),
		grpc.ChainUnaryInterceptor(auth.UnaryInterceptor),
		grpc.ChainStreamInterceptor(auth.StreamInterceptor),
	)
	hs := health.NewServer()
	if svc.Enrollment != nil {
		pb.RegisterEnrollmentServer(s, svc.Enrollment)
		hs.SetServingStatus(pb.Enrollment_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	}
	if svc.Escrow != nil {
		pb.RegisterEscrowAdminServer(s, svc.Escrow)
		hs.SetServingStatus(pb.EscrowAdmin_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	}
	if svc.Bundles != nil {
		pb.RegisterProfileBundlesServer(s, svc.Bundles)
		hs.SetServingStatus(pb.ProfileBundles_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	}
	if svc.Devices != nil {
		pb.RegisterDevicesServer(s, svc.Devices)
		hs.SetServingStatus(pb.Devices_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	}
	if svc.Credentials != nil {
		pb.RegisterCredentialsServer(s, svc.Credentials)
		hs.SetServingStatus(pb.Credentials_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s
}
