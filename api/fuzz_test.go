package api_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// rpc decodes a request message and calls one RPC of the services.
type rpc struct {
	name string
	new  func() proto.Message
	call func(ctx context.Context, m proto.Message) error
}

func rpcs(f *fixture) []rpc {
	s := f.services
	return []rpc{
		{"CreateChallenge", func() proto.Message { return &pb.CreateChallengeRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Enrollment.CreateChallenge(ctx, m.(*pb.CreateChallengeRequest))
			return err
		}},
		{"ListCertificates", func() proto.Message { return &pb.ListCertificatesRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Enrollment.ListCertificates(ctx, m.(*pb.ListCertificatesRequest))
			return err
		}},
		{"RevokeCertificate", func() proto.Message { return &pb.RevokeCertificateRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Enrollment.RevokeCertificate(ctx, m.(*pb.RevokeCertificateRequest))
			return err
		}},
		{"RevokeDevice", func() proto.Message { return &pb.RevokeDeviceRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Enrollment.RevokeDevice(ctx, m.(*pb.RevokeDeviceRequest))
			return err
		}},
		{"RegisterDevice", func() proto.Message { return &pb.RegisterDeviceRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Devices.RegisterDevice(ctx, m.(*pb.RegisterDeviceRequest))
			return err
		}},
		{"GetDevice", func() proto.Message { return &pb.GetDeviceRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Devices.GetDevice(ctx, m.(*pb.GetDeviceRequest))
			return err
		}},
		{"ListDevices", func() proto.Message { return &pb.ListDevicesRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Devices.ListDevices(ctx, m.(*pb.ListDevicesRequest))
			return err
		}},
		{"RetireDevice", func() proto.Message { return &pb.RetireDeviceRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Devices.RetireDevice(ctx, m.(*pb.RetireDeviceRequest))
			return err
		}},
		{"IssueCredential", func() proto.Message { return &pb.IssueCredentialRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Credentials.IssueCredential(ctx, m.(*pb.IssueCredentialRequest))
			return err
		}},
		{"RevokeCredential", func() proto.Message { return &pb.RevokeCredentialRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Credentials.RevokeCredential(ctx, m.(*pb.RevokeCredentialRequest))
			return err
		}},
		{"GetUserBundle", func() proto.Message { return &pb.GetUserBundleRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Bundles.GetUserBundle(ctx, m.(*pb.GetUserBundleRequest))
			return err
		}},
		{"RenderDeviceProfile", func() proto.Message { return &pb.RenderDeviceProfileRequest{} }, func(ctx context.Context, m proto.Message) error {
			_, err := s.Bundles.RenderDeviceProfile(ctx, m.(*pb.RenderDeviceProfileRequest))
			return err
		}},
	}
}

// FuzzRequests sends any bytes, as the request message of any RPC, to the
// real services (as the admin credential, past the authorizer): no panic,
// and every error is a gRPC status with a code, never a raw error.
func FuzzRequests(f *testing.F) {
	seeds := []proto.Message{
		&pb.RegisterDeviceRequest{User: "a@example.com", DeviceId: "d"},
		&pb.CreateChallengeRequest{User: "a@example.com", DeviceId: "d", TtlSeconds: 60},
		&pb.GetUserBundleRequest{User: "a@example.com", DeviceId: "d", Format: pb.DeliveryFormat_DELIVERY_FORMAT_PKCS12, BreakGlass: true, BreakGlassReason: "x"},
		&pb.RenderDeviceProfileRequest{User: "a@example.com", DeviceId: "d", Settings: []byte("hostName: h\n")},
		&pb.RetireDeviceRequest{User: "a@example.com", DeviceId: "d", Reason: "lost"},
		&pb.IssueCredentialRequest{Name: "n", Role: "registrar", CsrDer: []byte{0x30, 0x00}},
		&pb.RevokeCertificateRequest{Serial: "0x1"},
	}
	for i, m := range seeds {
		b, _ := proto.Marshal(m)
		f.Add(uint8(i), b)
	}
	fx := newFixture(f, options{})
	calls := rpcs(fx)
	ctx := policy.WithActor(context.Background(), policy.Actor{Role: "admin", Name: "fuzz"})
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		c := calls[int(which)%len(calls)]
		m := c.new()
		if proto.Unmarshal(data, m) != nil {
			return
		}
		if err := c.call(ctx, m); err != nil {
			if _, ok := status.FromError(err); !ok {
				t.Fatalf("%s: untyped error %T: %v", c.name, err, err)
			}
		}
	})
}
