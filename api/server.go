package api

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"time"

	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// Limits bound what one peer may hold of the gRPC server.
type Limits struct {
	// MaxRecvMsgBytes is the largest request message: the largest
	// legitimate one is a PFX import (at most 256 KiB of PFX).
	MaxRecvMsgBytes int
	// MaxConcurrentStreams bounds the calls in flight on one connection.
	MaxConcurrentStreams uint32
	// MaxConnections bounds the open connections (Listen).
	MaxConnections int
}

// DefaultLimits are the gRPC server's limits.
var DefaultLimits = Limits{MaxRecvMsgBytes: 512 << 10, MaxConcurrentStreams: 64, MaxConnections: 256}

// Listen returns a listener on addr that holds at most
// DefaultLimits.MaxConnections connections open; further ones wait.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return netutil.LimitListener(ln, DefaultLimits.MaxConnections), nil
}

// recoverUnary turns a panic into INTERNAL, logged with its stack.
func recoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				resp, err = nil, panicked(ctx, log, info.FullMethod, r)
			}
		}()
		return handler(ctx, req)
	}
}

// recoverStream is recoverUnary for streams.
func recoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = panicked(ss.Context(), log, info.FullMethod, r)
			}
		}()
		return handler(srv, ss)
	}
}

func panicked(ctx context.Context, log *slog.Logger, method string, r any) error {
	log.ErrorContext(ctx, "api: panic in a call", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error; see the server log")
}

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
	// Recovery runs key recovery requests (optional: needs the escrow).
	Recovery pb.KeyRecoveryServer
	// Health is the gRPC health service; nil: one that reports SERVING
	// for every registered service. The caller may set statuses on it.
	Health *health.Server
}

// NewServer returns a gRPC server with mutual TLS (a client certificate of
// the API CA is required to connect at all), the role
// interceptors, the standard health service (reporting SERVING for every
// registered service) and reflection. Every data call is authorized by
// auth.
//
// What one peer may hold of it is bounded by DefaultLimits: message size
// (checked before a message is decoded, so before the role check too),
// concurrent streams per connection, keepalive pings; Listen bounds the
// connections. A panic in a handler or interceptor becomes INTERNAL,
// logged to log with its stack: the process, which also runs the CA and
// may run the embedded Vault, lives on.
func NewServer(tlsConfig *tls.Config, auth *Authorizer, svc Services, log *slog.Logger) *grpc.Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := tlsConfig.Clone()
	// No certificate, no connection: an unauthenticated peer gets no
	// HTTP/2 connection to send frames on (probes use the ops /healthz).
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.MinVersion = tls.VersionTLS12
	// A revoked or unregistered credential gets no connection at all.
	cfg.VerifyConnection = auth.VerifyConnection
	l := DefaultLimits
	s := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(cfg)),
		grpc.MaxRecvMsgSize(l.MaxRecvMsgBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute, Time: 2 * time.Minute, Timeout: 20 * time.Second}),
		grpc.ChainUnaryInterceptor(recoverUnary(log), auth.UnaryInterceptor),
		grpc.ChainStreamInterceptor(recoverStream(log), auth.StreamInterceptor),
	)
	hs := svc.Health
	if hs == nil {
		hs = health.NewServer()
	}
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
	if svc.Recovery != nil {
		pb.RegisterKeyRecoveryServer(s, svc.Recovery)
		hs.SetServingStatus(pb.KeyRecovery_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s
}
