package api

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// DevicePolicy is what the Devices service needs; *policy.Enrollment
// implements it.
type DevicePolicy interface {
	RegisterDevice(ctx context.Context, user, id string, identity []byte) (policy.Device, error)
	Device(ctx context.Context, user, id string) (policy.Device, error)
	ListDevices(ctx context.Context, user string) ([]policy.Device, error)
	RetireDevice(ctx context.Context, user, id, reason string) ([]string, error)
	RekeyDevice(ctx context.Context, user, id string, identity []byte) (policy.Device, error)
	ConfirmIdentity(ctx context.Context, user, id string) (policy.Device, error)
}

// DeviceService implements smimeca.v1.Devices.
type DeviceService struct {
	pb.UnimplementedDevicesServer
	policy DevicePolicy
	log    *slog.Logger
}

// NewDeviceService returns the Devices service.
func NewDeviceService(p DevicePolicy, log *slog.Logger) *DeviceService {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DeviceService{policy: p, log: log}
}

// maxIdentityBytes bounds an identity certificate in a request (a real one
// is 1–2 KiB).
const maxIdentityBytes = 16 << 10

// identityDER bounds an identity certificate of a request and returns its
// DER (PEM accepted).
func identityDER(der []byte) ([]byte, error) {
	if len(der) > maxIdentityBytes {
		return nil, status.Errorf(codes.InvalidArgument, "identity_certificate is larger than %d KiB; send one certificate, DER or PEM", maxIdentityBytes>>10)
	}
	if b, _ := pem.Decode(der); b != nil {
		if b.Type != "CERTIFICATE" {
			return nil, status.Errorf(codes.InvalidArgument, "identity_certificate is a PEM %q block, not a CERTIFICATE", b.Type)
		}
		der = b.Bytes
	}
	return der, nil
}

// RegisterDevice implements pb.DevicesServer.
func (s *DeviceService) RegisterDevice(ctx context.Context, req *pb.RegisterDeviceRequest) (*pb.RegisterDeviceResponse, error) {
	der, err := identityDER(req.GetIdentityCertificate())
	if err != nil {
		return nil, err
	}
	d, err := s.policy.RegisterDevice(ctx, req.GetUser(), req.GetDeviceId(), der)
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return &pb.RegisterDeviceResponse{Device: deviceToProto(d)}, nil
}

// RekeyDevice implements pb.DevicesServer.
func (s *DeviceService) RekeyDevice(ctx context.Context, req *pb.RekeyDeviceRequest) (*pb.RegisterDeviceResponse, error) {
	der, err := identityDER(req.GetIdentityCertificate())
	if err != nil {
		return nil, err
	}
	if len(der) == 0 {
		return nil, status.Error(codes.InvalidArgument, "identity_certificate is required: the device's new MDM identity certificate")
	}
	d, err := s.policy.RekeyDevice(ctx, req.GetUser(), req.GetDeviceId(), der)
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return &pb.RegisterDeviceResponse{Device: deviceToProto(d)}, nil
}

// ConfirmDeviceIdentity implements pb.DevicesServer.
func (s *DeviceService) ConfirmDeviceIdentity(ctx context.Context, req *pb.GetDeviceRequest) (*pb.Device, error) {
	d, err := s.policy.ConfirmIdentity(ctx, req.GetUser(), req.GetDeviceId())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return deviceToProto(d), nil
}

// GetDevice implements pb.DevicesServer.
func (s *DeviceService) GetDevice(ctx context.Context, req *pb.GetDeviceRequest) (*pb.Device, error) {
	d, err := s.policy.Device(ctx, req.GetUser(), req.GetDeviceId())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return deviceToProto(d), nil
}

// ListDevices implements pb.DevicesServer.
func (s *DeviceService) ListDevices(ctx context.Context, req *pb.ListDevicesRequest) (*pb.ListDevicesResponse, error) {
	list, err := s.policy.ListDevices(ctx, req.GetUser())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	out := &pb.ListDevicesResponse{Devices: make([]*pb.Device, 0, len(list))}
	for _, d := range list {
		out.Devices = append(out.Devices, deviceToProto(d))
	}
	return out, nil
}

// RetireDevice implements pb.DevicesServer.
func (s *DeviceService) RetireDevice(ctx context.Context, req *pb.RetireDeviceRequest) (*pb.RetireDeviceResponse, error) {
	if strings.TrimSpace(req.GetReason()) == "" {
		return nil, status.Error(codes.InvalidArgument, "reason is required: say why the device is retired (lost, wiped, replaced…)")
	}
	serials, err := s.policy.RetireDevice(ctx, req.GetUser(), req.GetDeviceId(), req.GetReason())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	d, err := s.policy.Device(ctx, req.GetUser(), req.GetDeviceId())
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	return &pb.RetireDeviceResponse{Device: deviceToProto(d), RevokedSerials: serials}, nil
}

func deviceToProto(d policy.Device) *pb.Device {
	out := &pb.Device{
		User: d.User, DeviceId: d.ID, State: string(d.State),
		CreatedAt: timestamppb.New(d.CreatedAt), CreatedBy: d.CreatedBy,
		UpdatedBy: d.UpdatedBy, RetiredBy: d.RetiredBy, RetireReason: d.RetireReason,
	}
	if !d.UpdatedAt.IsZero() {
		out.UpdatedAt = timestamppb.New(d.UpdatedAt)
	}
	if !d.RetiredAt.IsZero() {
		out.RetiredAt = timestamppb.New(d.RetiredAt)
	}
	if !d.HeldUntil.IsZero() {
		out.HeldUntil = timestamppb.New(d.HeldUntil)
	}
	if len(d.Identity) > 0 {
		sum := sha256.Sum256(d.Identity)
		out.IdentityCertificateDer, out.IdentitySha256 = d.Identity, hex.EncodeToString(sum[:])
		if c, err := x509.ParseCertificate(d.Identity); err == nil {
			out.IdentityNotAfter = timestamppb.New(c.NotAfter)
		}
	}
	return out
}
