// Package api serves smimeca's gRPC API: it translates between the
// smimeca.v1 protobuf messages and the policy package, decides the caller's
// role from its mTLS client certificate, and maps domain errors to gRPC
// status codes. It holds no rule of its own and touches neither the CA nor
// any store directly.
package api

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

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
	// RoleAdmin may do everything.
	RoleAdmin Role = "admin"
	// RoleRegistrar (the MDM's enrolment hook) registers and retires
	// devices, nothing else.
	RoleRegistrar Role = "registrar"
	// RoleProfile (the profile service) fetches bundles and renders
	// profiles for registered, active devices, nothing else.
	RoleProfile Role = "profile"
	// RoleRecoveryOfficer asks for a user's escrowed keys (a recovery
	// request) and downloads an approved request's release, once.
	RoleRecoveryOfficer Role = "recovery-officer"
	// RoleRecoveryApprover approves or rejects recovery requests.
	RoleRecoveryApprover Role = "recovery-approver"
)

// Roles lists every role with the URI SAN its certificates carry.
func Roles() map[string]string {
	out := map[string]string{}
	for _, r := range []Role{RoleAdmin, RoleRegistrar, RoleProfile, RoleRecoveryOfficer, RoleRecoveryApprover} {
		out[string(r)] = RoleURI(r)
	}
	return out
}

// RoleURIPrefix prefixes the URI SAN that carries a client certificate's
// role, e.g. "urn:smimeca:role:admin".
const RoleURIPrefix = "urn:smimeca:role:"

// RoleURI returns the URI SAN value for role.
func RoleURI(r Role) string { return RoleURIPrefix + string(r) }

// anyRoleMethod reports whether fullMethod may be called by a valid
// credential of any role: the standard health and reflection services,
// which reveal no data. (Probes without a credential use the ops
// listener's /healthz.)
func anyRoleMethod(fullMethod string) bool {
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
	"/smimeca.v1.Credentials/": {RoleAdmin},
	// The MDM's enrolment hook registers, rekeys and retires devices; only
	// an administrator ends a rekey's hold.
	"/smimeca.v1.Devices/":                      {RoleRegistrar, RoleAdmin},
	"/smimeca.v1.Devices/ConfirmDeviceIdentity": {RoleAdmin},
	// The profile service fetches bundles; admins may too.
	"/smimeca.v1.ProfileBundles/": {RoleProfile, RoleAdmin},
	// Key recovery separates asking from agreeing: officers ask and
	// download, approvers vote, nobody else does either (an administrator
	// neither, whose plain break-glass is a separate setting); all three
	// may read the requests.
	"/smimeca.v1.KeyRecovery/":                 {RoleRecoveryOfficer, RoleRecoveryApprover, RoleAdmin},
	"/smimeca.v1.KeyRecovery/RequestRecovery":  {RoleRecoveryOfficer},
	"/smimeca.v1.KeyRecovery/DownloadRecovery": {RoleRecoveryOfficer},
	"/smimeca.v1.KeyRecovery/ApproveRecovery":  {RoleRecoveryApprover},
	"/smimeca.v1.KeyRecovery/RejectRecovery":   {RoleRecoveryApprover},
}

// CredentialChecker says whether a client certificate is a registered,
// unrevoked credential; *policy.Credentials implements it.
type CredentialChecker interface {
	Check(ctx context.Context, crt *x509.Certificate) (policy.Credential, error)
}

// Authorizer decides who may call what: the caller's client certificate
// must be a registered, unrevoked credential (checked on every call) whose
// role the access table allows for the method.
type Authorizer struct {
	access Access
	creds  CredentialChecker
}

// NewAuthorizer returns the authorizer for access, checking credentials
// with creds.
func NewAuthorizer(access Access, creds CredentialChecker) *Authorizer {
	return &Authorizer{access: access, creds: creds}
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

// VerifyConnection refuses, in the TLS handshake, a client certificate that
// is not a registered, unrevoked credential: a revoked credential gets no
// connection, so no message of it is ever decoded. It is the
// tls.Config.VerifyConnection of the API listener.
func (a *Authorizer) VerifyConnection(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return errors.New("api: a client certificate issued by smimeca's API CA is required")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	crt := cs.VerifiedChains[0][0]
	if _, err := a.creds.Check(ctx, crt); err != nil {
		return fmt.Errorf("api: client credential (serial %s) refused: %w", policy.Serial(crt), err)
	}
	return nil
}

// authorize checks the caller and returns ctx carrying the policy.Actor.
func (a *Authorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	crt := callerCert(ctx)
	if crt == nil {
		return nil, status.Error(codes.Unauthenticated, "a client certificate issued by smimeca's API CA is required (see DATA/credentials/, or smimeca credentials issue)")
	}
	role, ok := roleOf(crt)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "the client certificate carries no smimeca role")
	}
	cred, err := a.creds.Check(ctx, crt)
	switch {
	case errors.Is(err, policy.ErrRevokedCredential):
		return nil, status.Errorf(codes.Unauthenticated, "the client credential (serial %s) was revoked; ask an administrator for a new one", policy.Serial(crt))
	case errors.Is(err, policy.ErrUnknownCredential):
		return nil, status.Errorf(codes.Unauthenticated, "the client certificate (serial %s) is not a registered credential; issue one with smimeca credentials issue", policy.Serial(crt))
	case err != nil:
		return nil, status.Error(codes.Unavailable, "the credential registry cannot be read; retry")
	case cred.Role != string(role):
		return nil, status.Error(codes.Unauthenticated, "the client certificate's role differs from its registered credential's")
	}
	if !anyRoleMethod(method) && !a.access.allowed(method, role) {
		return nil, status.Errorf(codes.PermissionDenied, "role %q may not call %s", role, method)
	}
	return policy.WithActor(ctx, policy.Actor{Role: cred.Role, Name: cred.Name, Credential: cred.Serial}), nil
}

// UnaryInterceptor authorizes unary calls.
func (a *Authorizer) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
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
func (a *Authorizer) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, wrappedStream{ServerStream: ss, ctx: ctx})
}
