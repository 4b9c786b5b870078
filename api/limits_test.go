package api_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/smimeca/smimeca/api"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// panicky is an escrow service whose every call panics, as a bug would.
type panicky struct {
	pb.UnimplementedEscrowAdminServer
}

func (panicky) ListUserCertificates(context.Context, *pb.ListUserCertificatesRequest) (*pb.ListUserCertificatesResponse, error) {
	panic("a bug in a handler")
}

// A panic in a handler is INTERNAL for the caller; the server lives on.
func TestPanicBecomesInternal(t *testing.T) {
	s := startServerWith(t, options{escrow: panicky{}})
	ctx := context.Background()
	admin := s.dial(t, "admin")
	_, err := pb.NewEscrowAdminClient(admin).ListUserCertificates(ctx, &pb.ListUserCertificatesRequest{User: "a@example.com"})
	wantCode(t, err, codes.Internal, "internal error")
	if h, err := healthpb.NewHealthClient(admin).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("the server did not survive the panic: %v %v", h, err)
	}
}

// A message over the limit is refused before it is decoded: before the
// handler, which would have said InvalidArgument.
func TestOversizedMessageRefused(t *testing.T) {
	s := startServer(t)
	big := make([]byte, api.DefaultLimits.MaxRecvMsgBytes+1)
	for _, role := range []string{"registrar"} {
		_, err := pb.NewDevicesClient(s.dial(t, role)).RegisterDevice(context.Background(),
			&pb.RegisterDeviceRequest{User: "a@example.com", DeviceId: "d", IdentityCertificate: big})
		wantCode(t, err, codes.ResourceExhausted, "larger than max")
	}
}
