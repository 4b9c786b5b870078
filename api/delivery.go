package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/profile"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// AssetPolicy is what the DDM channel needs; *policy.Bundles implements
// it.
type AssetPolicy interface {
	DeviceAssets(ctx context.Context, req policy.AssetRequest) (*policy.AssetSet, error)
	ReleaseAsset(ctx context.Context, f policy.AssetFetch, render func(*policy.Asset) ([]byte, error)) ([]byte, error)
}

// DeliveryConfig configures the channels of RenderDelivery.
type DeliveryConfig struct {
	// Assets serves DDM device assets (nil: the DDM channel is off).
	Assets AssetPolicy
	// AssetURL is the public https:// base of the asset listener; asset
	// URLs are AssetURL + AssetPath + ….
	AssetURL string
	// OutlookLDAPHost is the recipient directory's host for Outlook
	// (default of RenderDeliveryRequest.ldap_host_name).
	OutlookLDAPHost string
}

// AssetPath is where the asset listener serves device assets.
const AssetPath = "/ddm/v1/assets/"

// SetDelivery configures the channels of RenderDelivery.
func (s *BundleService) SetDelivery(c DeliveryConfig) { s.delivery = c }

// RenderDelivery implements pb.ProfileBundlesServer.
func (s *BundleService) RenderDelivery(ctx context.Context, req *pb.RenderDeliveryRequest) (*pb.RenderDeliveryResponse, error) {
	if len(req.GetSettings()) > maxSettingsBytes {
		return nil, status.Errorf(codes.InvalidArgument, "settings are larger than %d KiB", maxSettingsBytes>>10)
	}
	enc, kt, err := wireOptions(req.GetEncoding(), req.GetKeyTransport())
	if err != nil {
		return nil, err
	}
	settings := func() (*profile.Settings, error) {
		st, err := profile.ParseSettings(req.GetSettings())
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "settings: "+err.Error())
		}
		return st, nil
	}
	switch req.GetChannel() {
	case pb.DeliveryChannel_DELIVERY_CHANNEL_DDM:
		st, err := settings()
		if err != nil {
			return nil, err
		}
		return s.renderDDM(ctx, req, st, enc)
	case pb.DeliveryChannel_DELIVERY_CHANNEL_OUTLOOK_IOS, pb.DeliveryChannel_DELIVERY_CHANNEL_OUTLOOK_ANDROID:
		st, err := settings()
		if err != nil {
			return nil, err
		}
		host := req.GetLdapHostName()
		if host == "" {
			host = s.delivery.OutlookLDAPHost
		}
		set, err := profile.OutlookSettings(st, host)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if req.GetChannel() == pb.DeliveryChannel_DELIVERY_CHANNEL_OUTLOOK_IOS {
			out, err := profile.RenderOutlookIOS(set)
			if err != nil {
				return nil, statusFor(ctx, s.log, err)
			}
			return &pb.RenderDeliveryResponse{Content: out, ContentType: "application/x-plist"}, nil
		}
		out, err := profile.RenderOutlookAndroid(set)
		if err != nil {
			return nil, statusFor(ctx, s.log, err)
		}
		return &pb.RenderDeliveryResponse{Content: out, ContentType: "application/json"}, nil
	case pb.DeliveryChannel_DELIVERY_CHANNEL_WINDOWS, pb.DeliveryChannel_DELIVERY_CHANNEL_ANDROID:
		return s.renderKeys(ctx, req, enc, kt)
	default:
		return nil, status.Error(codes.InvalidArgument, "channel: one of DDM, OUTLOOK_IOS, OUTLOOK_ANDROID, WINDOWS, ANDROID")
	}
}

// renderKeys renders the Windows SyncML or the Android document from a
// CMS bundle: every password (and the Android SCEP challenge) enveloped to
// the device's registered identity.
func (s *BundleService) renderKeys(ctx context.Context, req *pb.RenderDeliveryRequest, enc policy.PKCS12Encoding, kt policy.KeyTransport) (*pb.RenderDeliveryResponse, error) {
	windows := req.GetChannel() == pb.DeliveryChannel_DELIVERY_CHANNEL_WINDOWS
	// Check what the renderer would refuse before keys are released.
	if windows {
		if _, err := profile.RenderSyncML(profile.WindowsInput{Installed: req.GetWindowsInstalledIds(), KeyLocation: int(req.GetWindowsKeyLocation())}); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	} else if _, err := profile.RenderAndroid(profile.AndroidInput{Grants: req.GetAndroidGrants()}); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	b, err := s.policy.Bundle(ctx, policy.BundleRequest{User: req.GetUser(), Device: req.GetDeviceId(), Delivery: policy.DeliverCMS,
		Encoding: enc, KeyTransport: kt, NoSigning: windows})
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	resp := &pb.RenderDeliveryResponse{RecipientSha256: thumb(b.Recipient), KeyEscrowNotice: b.EscrowNotice}
	for _, e := range b.Encryption {
		resp.EncryptionSha256 = append(resp.EncryptionSha256, e.Metadata.SHA256)
	}
	if windows {
		in := profile.WindowsInput{Installed: req.GetWindowsInstalledIds(), KeyLocation: int(req.GetWindowsKeyLocation())}
		for _, e := range b.Encryption {
			in.Identities = append(in.Identities, profile.WindowsIdentity{SHA1: e.Metadata.SHA1, PFX: e.PFX, EnvelopedPassword: e.EnvelopedPassword})
		}
		if resp.Content, err = profile.RenderSyncML(in); err != nil {
			return nil, statusFor(ctx, s.log, err)
		}
		resp.ContentType = "application/vnd.syncml+xml"
		return resp, nil
	}
	in := profile.AndroidInput{User: b.User, Device: b.Device, RecipientSHA256: resp.RecipientSha256, Grants: req.GetAndroidGrants(),
		UserSelectable: req.GetAndroidUserSelectable(), EscrowNotice: b.EscrowNotice,
		SCEP: &profile.AndroidSCEP{URL: b.Signing.SCEPURL, EnvelopedChallenge: b.Signing.EnvelopedChallenge, Subject: b.Signing.Subject,
			RFC822Name: b.Signing.RFC822Name, KeySize: b.Signing.KeySize, CAFingerprintSHA256: hex.EncodeToString(b.Signing.CAFingerprint.SHA256)}}
	for _, e := range b.Encryption {
		in.Identities = append(in.Identities, profile.AndroidIdentity{SHA1: e.Metadata.SHA1, SHA256: e.Metadata.SHA256, PFX: e.PFX,
			EnvelopedPassword: e.EnvelopedPassword, Current: e.Current, Expired: e.Expired})
	}
	if resp.Content, err = profile.RenderAndroid(in); err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	resp.ContentType = "application/json"
	return resp, nil
}

// renderDDM renders the device's declarations: each asset's document is
// made here only to hash it, and dropped.
func (s *BundleService) renderDDM(ctx context.Context, req *pb.RenderDeliveryRequest, st *profile.Settings, enc policy.PKCS12Encoding) (*pb.RenderDeliveryResponse, error) {
	if s.delivery.Assets == nil || s.delivery.AssetURL == "" {
		return nil, status.Error(codes.FailedPrecondition, "this server serves no DDM assets: start it with --asset-addr and --asset-url")
	}
	set, err := s.delivery.Assets.DeviceAssets(ctx, policy.AssetRequest{User: req.GetUser(), Device: req.GetDeviceId(),
		Generation: req.GetSigningGeneration(), Encoding: enc})
	if err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	defer set.Clear()
	in := profile.DDMInput{User: set.User, Device: set.Device, Settings: st, UserIdentityAsset: req.GetUserIdentityAsset()}
	resp := &pb.RenderDeliveryResponse{ContentType: "application/json", RecipientSha256: thumb(set.Recipient), KeyEscrowNotice: set.EscrowNotice}
	for i := range set.Assets {
		a := &set.Assets[i]
		doc, err := AssetDocument(a)
		if err != nil {
			return nil, statusFor(ctx, s.log, err)
		}
		ref := profile.NewAssetRef(AssetURL(s.delivery.AssetURL, set.User, set.Device, a), doc)
		clear(doc)
		switch a.Kind {
		case policy.AssetSCEP:
			in.Signing = ref
		case policy.AssetIdentity:
			in.Encryption = append(in.Encryption, profile.DDMIdentity{SHA1: a.Identity.Metadata.SHA1, Current: a.Identity.Current, Asset: ref})
			resp.EncryptionSha256 = append(resp.EncryptionSha256, a.Ref)
		}
	}
	decls, err := profile.RenderDeclarations(in)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if resp.Content, err = json.MarshalIndent(decls, "", "  "); err != nil {
		return nil, statusFor(ctx, s.log, err)
	}
	for _, d := range decls {
		if strings.HasPrefix(d.Type, "com.apple.configuration.") {
			resp.ActivateConfigurations = append(resp.ActivateConfigurations, d.Identifier)
		}
	}
	return resp, nil
}

// AssetURL is where the device fetches asset a of (user, device).
func AssetURL(base, user, device string, a *policy.Asset) string {
	return strings.TrimSuffix(base, "/") + AssetPath + url.PathEscape(user) + "/" + url.PathEscape(device) + "/" + string(a.Kind) + "/" + a.Ref
}

// AssetDocument is an asset's document, the same bytes at rendering (to
// hash) and at the device's fetch.
func AssetDocument(a *policy.Asset) ([]byte, error) {
	switch a.Kind {
	case policy.AssetSCEP:
		sig := a.Signing
		return profile.SCEPCredential(profile.SCEPRef{URL: sig.SCEPURL, Challenge: sig.Challenge, CommonName: sig.RFC822Name,
			RFC822Name: sig.RFC822Name, KeySize: sig.KeySize, KeyType: sig.KeyType, AppleKeyUsage: profile.AppleKeyUsage(sig.KeyUsage),
			CAFingerprint: sig.CAFingerprint.SHA1})
	case policy.AssetIdentity:
		return profile.IdentityCredential(a.Identity.PFX, a.Identity.Password)
	}
	return nil, status.Error(codes.Internal, "unknown asset kind")
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// assetTimeout bounds one asset fetch (Vault read, re-wrap, audit).
const assetTimeout = 30 * time.Second
