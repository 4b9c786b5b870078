// Package api serves smimeca's gRPC API: it translates between the
// smimeca.v1 protobuf messages and the policy package, decides the caller's
// role from its mTLS client certificate, and maps domain errors to gRPC
// status codes. It holds no rule of its own and touches neither the CA nor
// any store directly.
package api

import (
	"context"
	"crypto/x509"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/policy"
)

// Role is what an API client certificate may do.
type Role string

// Roles.
const (
	RoleAdmin   Role = "admin"
	RoleProfile Role = "profile"
)

// RoleURIPrefix prefixes the URI SAN that carries a client certificate's
// role, e.g. "urn:smimeca:role:admin".
const RoleURIPrefix = "urn:smimeca:role:"

// RoleURI returns the URI SAN value for role.
func RoleURI(r Role) string { return RoleURIPrefix + string(r) }

// publicMethod reports whether fullMethod may be called without a client
// certificate: the standard health and reflection services, which reveal
// no data.
func publicMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1.ServerReflection/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1alpha.ServerReflection/")
}

// Access maps full gRPC method names (or service prefixes ending in "/") to
// the roles allowed to call them. A method that matches no entry is denied.
type Access map[string][]Role

// DefaultAccess is smimeca's access table.
var DefaultAccess = Access{
	"/smimeca.v1.Enrollment/":  {RoleAdmin},
	"/smimeca.v1.EscrowAdmin/": {RoleAdmin},
	// The profile service fetches bundles; admins may too.
	"/smimeca.v1.ProfileBundles/": {RoleProfile, RoleAdmin},
}

func (a Access) allowed(method string, role Role) bool {
	roles, ok := a[method]
	if !ok {
		if i := strings.LastIndex(method, "/"); i > 0 {
			roles, ok = a[method[:i+1]]
		}
	}
	if !ok {
		return false
	}
	for _, r := range roles {
		if r == role {
			return true
		}
	}
	return false
}

// callerCert returns the verified client certificate of the call, if any.
func callerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

// roleOf returns the role named by the certificate's URI SAN.
func roleOf(c *x509.Certificate) (Role, bool) {
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, RoleURIPrefix) {
			return Role(strings.TrimPrefix(s, RoleURIPrefix)), true
		}
	}
	return "", false
}

// authorize checks the caller and returns ctx carrying the policy.Actor.
func (a Access) authorize(ctx context.Context, method string) (context.Context, error) {
	if publicMethod(method) {
		return ctx, nil
	}
	crt := callerCert(ctx)
	if crt == nil {
		return nil, status.Error(codes.Unauthenticated, "a client certificate issued by smimeca's API CA is required (see DATA/credentials/)")
	}
	role, ok := roleOf(crt)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "the client certificate carries no smimeca role")
	}
	if !a.allowed(method, role) {
		return nil, status.Errorf(codes.PermissionDenied, "role %q may not call %s", role, method)
	}
	return policy.WithActor(ctx, policy.Actor{Role: string(role), Name: crt.Subject.CommonName}), nil
}

// UnaryInterceptor authorizes unary calls.
func (a Access) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w wrappedStream) Context() context.Context { return w.ctx }

// StreamInterceptor authorizes streaming calls.
func (a Access) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, wrappedStream{ServerStream: ss, ctx: ctx})
}
