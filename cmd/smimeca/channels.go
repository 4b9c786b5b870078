package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"google.golang.org/grpc"

	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// channelFlags are profile render's flags for the channels other than a
// .mobileconfig (RenderDelivery).
type channelFlags struct {
	format          string
	generation      uint
	userIdentity    string
	ldapHost        string
	windowsIDs      string
	windowsLocation int
	androidGrants   string
	androidPick     bool
}

var channels = map[string]pb.DeliveryChannel{
	"ddm":             pb.DeliveryChannel_DELIVERY_CHANNEL_DDM,
	"outlook-ios":     pb.DeliveryChannel_DELIVERY_CHANNEL_OUTLOOK_IOS,
	"outlook-android": pb.DeliveryChannel_DELIVERY_CHANNEL_OUTLOOK_ANDROID,
	"windows":         pb.DeliveryChannel_DELIVERY_CHANNEL_WINDOWS,
	"android":         pb.DeliveryChannel_DELIVERY_CHANNEL_ANDROID,
}

func (c *channelFlags) register(f *envFlags) {
	f.fs.StringVar(&c.format, "format", "mobileconfig", "what to render: mobileconfig (iOS profile), ddm (Apple declarations; the device fetches its keys itself), outlook-ios, outlook-android (Outlook's app configuration), windows (SyncML for ClientCertificateInstall), android (JSON for a device policy controller)")
	f.fs.UintVar(&c.generation, "signing-generation", 0, "ddm: revision of the signing asset; raise it to have the device enrol a new signing certificate")
	f.fs.StringVar(&c.userIdentity, "user-identity-asset", "", "ddm: identifier of the MDM's com.apple.asset.useridentity declaration for the account")
	f.fs.StringVar(&c.ldapHost, "ldap-host", "", "outlook-*: the recipient directory's host (default: the server's --outlook-ldap-host)")
	f.fs.StringVar(&c.windowsIDs, "windows-installed", "", "windows: comma-separated UniqueIDs the device reports under ClientCertificateInstall/PFXCertInstall (smimeca's whose certificate left escrow are deleted)")
	f.fs.IntVar(&c.windowsLocation, "windows-key-location", 0, "windows: KeyLocation, 1 TPM, 2 TPM else software (default), 3 software")
	f.fs.StringVar(&c.androidGrants, "android-grant", "", "android: comma-separated packages each identity is granted to, e.g. com.microsoft.office.outlook")
	f.fs.BoolVar(&c.androidPick, "android-user-selectable", false, "android: let the user pick the identities in the system's certificate chooser")
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// render has the server render one channel and writes it to out.
func (c *channelFlags) render(cf *clientFlags, user, device, settingsPath, out string, stdout io.Writer) error {
	ch, ok := channels[c.format]
	if !ok {
		return usagef("--format %q: one of mobileconfig, ddm, outlook-ios, outlook-android, windows, android", c.format)
	}
	outlook := ch == pb.DeliveryChannel_DELIVERY_CHANNEL_OUTLOOK_IOS || ch == pb.DeliveryChannel_DELIVERY_CHANNEL_OUTLOOK_ANDROID
	if out == "" || (!outlook && (user == "" || device == "")) {
		return usagef("profile render --format %s needs --out%s", c.format, map[bool]string{false: ", --user and --device", true: ""}[outlook])
	}
	if c.generation > 1<<32-1 {
		return usagef("--signing-generation %d is too large", c.generation)
	}
	req := &pb.RenderDeliveryRequest{User: user, DeviceId: device, Channel: ch, SigningGeneration: uint32(c.generation),
		UserIdentityAsset: c.userIdentity, LdapHostName: c.ldapHost, WindowsInstalledIds: splitList(c.windowsIDs),
		WindowsKeyLocation: int32(c.windowsLocation), AndroidGrants: splitList(c.androidGrants), AndroidUserSelectable: c.androidPick}
	if ch == pb.DeliveryChannel_DELIVERY_CHANNEL_DDM || outlook {
		if settingsPath == "" {
			return usagef("profile render --format %s needs --settings", c.format)
		}
		raw, err := os.ReadFile(settingsPath)
		if err != nil {
			return usagef("--settings: %v", err)
		}
		req.Settings = raw
	}
	var resp *pb.RenderDeliveryResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewProfileBundlesClient(conn).RenderDelivery(ctx, req)
		return err
	}); err != nil {
		return err
	}
	if err := os.WriteFile(out, resp.GetContent(), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%s, %s)", out, c.format, resp.GetContentType())
	if r := resp.GetRecipientSha256(); r != "" {
		fmt.Fprintf(stdout, ": for device identity %s, %d encryption certificate(s)", r, len(resp.GetEncryptionSha256()))
	}
	fmt.Fprintln(stdout)
	if ids := resp.GetActivateConfigurations(); len(ids) > 0 {
		fmt.Fprintf(stdout, "activate (StandardConfigurations of the MDM's activation): %s\n", strings.Join(ids, " "))
	}
	return nil
}
