package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	"github.com/smimeca/smimeca/api/apipki"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

func deviceCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("usage: smimeca device (register|rekey|confirm|list|show|retire) …")
	}
	switch args[0] {
	case "register":
		return deviceRegister(args[1:], stdout)
	case "rekey":
		return deviceRekey(args[1:], stdout)
	case "confirm":
		return deviceConfirm(args[1:], stdout)
	case "list":
		return deviceList(args[1:], stdout)
	case "show":
		return deviceShow(args[1:], stdout)
	case "retire":
		return deviceRetire(args[1:], stdout)
	default:
		return usagef("unknown device command %q (register, rekey, confirm, list, show, retire)", args[0])
	}
}

// deviceFlags are --user and --device, both required.
func deviceFlags(f *envFlags, user, device *string) {
	f.fs.StringVar(user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(device, "device", "", "device id, unique per user (required)")
}

func deviceRegister(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, device, identity, output string
	f := newFlags("device register")
	cf.register(f, "admin")
	deviceFlags(f, &user, &device)
	f.fs.StringVar(&identity, "identity-cert", "", "the device's MDM identity certificate (PEM or DER; RSA 2048-4096, issued by the server's --device-identity-ca); without it no key is released to the device")
	f.fs.StringVar(&output, "o", "text", "output: text or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || device == "" {
		return usagef("device register needs --user and --device")
	}
	req := &pb.RegisterDeviceRequest{User: user, DeviceId: device}
	if identity != "" {
		b, err := os.ReadFile(identity)
		if err != nil {
			return usagef("--identity-cert: %v", err)
		}
		req.IdentityCertificate = b
	}
	return cf.callDevice(stdout, output, func(ctx context.Context, c pb.DevicesClient) (*pb.RegisterDeviceResponse, error) {
		return c.RegisterDevice(ctx, req)
	})
}

// callDevice calls a Devices method that answers with the device and
// prints it as output says.
func (cf *clientFlags) callDevice(stdout io.Writer, output string, call func(context.Context, pb.DevicesClient) (*pb.RegisterDeviceResponse, error)) error {
	var resp *pb.RegisterDeviceResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = call(ctx, pb.NewDevicesClient(conn))
		return err
	}); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(stdout, resp.GetDevice())
	}
	return printDevice(stdout, resp.GetDevice())
}

// deviceRekey replaces an active device's identity; key releases to it are
// held until an administrator confirms (device confirm) or the server's
// --rekey-hold passes.
func deviceRekey(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, device, identity, output string
	f := newFlags("device rekey")
	cf.register(f, "admin")
	deviceFlags(f, &user, &device)
	f.fs.StringVar(&identity, "identity-cert", "", "the device's new MDM identity certificate (PEM or DER); required")
	f.fs.StringVar(&output, "o", "text", "output: text or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || device == "" || identity == "" {
		return usagef("device rekey needs --user, --device and --identity-cert")
	}
	b, err := os.ReadFile(identity)
	if err != nil {
		return usagef("--identity-cert: %v", err)
	}
	return cf.callDevice(stdout, output, func(ctx context.Context, c pb.DevicesClient) (*pb.RegisterDeviceResponse, error) {
		return c.RekeyDevice(ctx, &pb.RekeyDeviceRequest{User: user, DeviceId: device, IdentityCertificate: b})
	})
}

// deviceConfirm ends a rekey's hold (admin).
func deviceConfirm(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, device string
	f := newFlags("device confirm")
	cf.register(f, "admin")
	deviceFlags(f, &user, &device)
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || device == "" {
		return usagef("device confirm needs --user and --device")
	}
	var d *pb.Device
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		d, err = pb.NewDevicesClient(conn).ConfirmDeviceIdentity(ctx, &pb.GetDeviceRequest{User: user, DeviceId: device})
		return err
	}); err != nil {
		return err
	}
	return printDevice(stdout, d)
}

func deviceList(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, output string
	f := newFlags("device list")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&output, "o", "table", "output: table or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" {
		return usagef("device list needs --user")
	}
	var resp *pb.ListDevicesResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewDevicesClient(conn).ListDevices(ctx, &pb.ListDevicesRequest{User: user})
		return err
	}); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(stdout, resp)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATE\tIDENTITY (SHA-256)\tCREATED\tBY")
	for _, d := range resp.GetDevices() {
		id := d.GetIdentitySha256()
		if id == "" {
			id = "-"
		} else {
			id = id[:16] + "…"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.GetDeviceId(), d.GetState(), id, d.GetCreatedAt().AsTime().Format(time.DateOnly), d.GetCreatedBy())
	}
	return tw.Flush()
}

func deviceShow(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, device, output string
	f := newFlags("device show")
	cf.register(f, "admin")
	deviceFlags(f, &user, &device)
	f.fs.StringVar(&output, "o", "text", "output: text or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || device == "" {
		return usagef("device show needs --user and --device")
	}
	var d *pb.Device
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		d, err = pb.NewDevicesClient(conn).GetDevice(ctx, &pb.GetDeviceRequest{User: user, DeviceId: device})
		return err
	}); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(stdout, d)
	}
	return printDevice(stdout, d)
}

func deviceRetire(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, device, reason string
	f := newFlags("device retire")
	cf.register(f, "admin")
	deviceFlags(f, &user, &device)
	f.fs.StringVar(&reason, "reason", "", "why (lost, wiped, replaced…); required, recorded in the audit trail")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || device == "" || reason == "" {
		return usagef("device retire needs --user, --device and --reason")
	}
	var resp *pb.RetireDeviceResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewDevicesClient(conn).RetireDevice(ctx, &pb.RetireDeviceRequest{User: user, DeviceId: device, Reason: reason})
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "retired device %s of %s; revoked %d certificate(s)\n", device, resp.GetDevice().GetUser(), len(resp.GetRevokedSerials()))
	for _, s := range resp.GetRevokedSerials() {
		fmt.Fprintln(stdout, s)
	}
	return nil
}

func printDevice(w io.Writer, d *pb.Device) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "user\t%s\n", d.GetUser())
	fmt.Fprintf(tw, "device\t%s\n", d.GetDeviceId())
	fmt.Fprintf(tw, "state\t%s\n", d.GetState())
	if d.GetIdentitySha256() != "" {
		fmt.Fprintf(tw, "identity sha256\t%s\n", d.GetIdentitySha256())
		fmt.Fprintf(tw, "identity not after\t%s\n", d.GetIdentityNotAfter().AsTime().Format(time.RFC3339))
	} else {
		fmt.Fprintf(tw, "identity\tnone (no key can be released to this device)\n")
	}
	fmt.Fprintf(tw, "created\t%s by %s\n", d.GetCreatedAt().AsTime().Format(time.RFC3339), d.GetCreatedBy())
	if d.GetUpdatedBy() != "" {
		fmt.Fprintf(tw, "identity changed\t%s by %s\n", d.GetUpdatedAt().AsTime().Format(time.RFC3339), d.GetUpdatedBy())
	}
	if h := d.GetHeldUntil(); h != nil && time.Now().Before(h.AsTime()) {
		fmt.Fprintf(tw, "key releases held\tuntil %s (rekeyed; an administrator may confirm: smimeca device confirm)\n", h.AsTime().Format(time.RFC3339))
	}
	if d.GetRetiredBy() != "" {
		fmt.Fprintf(tw, "retired\t%s by %s: %s\n", d.GetRetiredAt().AsTime().Format(time.RFC3339), d.GetRetiredBy(), d.GetRetireReason())
	}
	return tw.Flush()
}

func credentialsCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("usage: smimeca credentials (issue|list|revoke) …")
	}
	switch args[0] {
	case "issue":
		return credentialsIssue(args[1:], stdout)
	case "list":
		return credentialsList(args[1:], stdout)
	case "revoke":
		return credentialsRevoke(args[1:], stdout)
	default:
		return usagef("unknown credentials command %q (issue, list, revoke)", args[0])
	}
}

// credentialsIssue makes the key here, sends only a CSR, and writes
// DIR/client.crt, client.key (0600) and ca.crt: a --credentials directory.
func credentialsIssue(args []string, stdout io.Writer) error {
	var cf clientFlags
	var role, name, out string
	var ttl time.Duration
	f := newFlags("credentials issue")
	cf.register(f, "admin")
	f.fs.StringVar(&role, "role", "", "admin, registrar (the MDM's enrolment hook), profile (the profile service), recovery-officer or recovery-approver (key recovery); required")
	f.fs.StringVar(&name, "name", "", "unique name of the identity, e.g. mdm-prod (required)")
	f.fs.StringVar(&out, "out", "", "directory to write client.crt, client.key and ca.crt to (required; created 0700)")
	f.fs.Func("ttl", "lifetime (default 90d, at most 730d)", func(s string) error {
		d, err := parseDuration(s)
		ttl = d
		return err
	})
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if role == "" || name == "" || out == "" {
		return usagef("credentials issue needs --role, --name and --out")
	}
	if _, err := os.Stat(filepath.Join(out, apipki.ClientKeyFile)); err == nil {
		return usagef("--out %s already holds a %s; choose an empty directory", out, apipki.ClientKeyFile)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	var resp *pb.IssueCredentialResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewCredentialsClient(conn).IssueCredential(ctx, &pb.IssueCredentialRequest{
			Name: name, Role: role, TtlSeconds: int64(ttl / time.Second), CsrDer: csr})
		return err
	}); err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	for _, w := range []struct {
		file, typ string
		der       []byte
		mode      os.FileMode
	}{
		{apipki.ClientKeyFile, "PRIVATE KEY", keyDER, 0o600},
		{apipki.ClientCertFile, "CERTIFICATE", resp.GetCertificateDer(), 0o644},
		{apipki.ClientCAFile, "CERTIFICATE", resp.GetCaDer(), 0o644},
	} {
		if err := os.WriteFile(filepath.Join(out, w.file), pem.EncodeToMemory(&pem.Block{Type: w.typ, Bytes: w.der}), w.mode); err != nil {
			return err
		}
	}
	c := resp.GetCredential()
	fmt.Fprintf(stdout, "issued credential %s (role %s, serial %s, expires %s) into %s\n", c.GetName(), c.GetRole(), c.GetSerial(),
		c.GetExpiresAt().AsTime().Format(time.DateOnly), out)
	return nil
}

func credentialsList(args []string, stdout io.Writer) error {
	var cf clientFlags
	var output string
	f := newFlags("credentials list")
	cf.register(f, "admin")
	f.fs.StringVar(&output, "o", "table", "output: table or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	var resp *pb.ListCredentialsResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewCredentialsClient(conn).ListCredentials(ctx, &pb.ListCredentialsRequest{})
		return err
	}); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(stdout, resp)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tSERIAL\tEXPIRES\tSTATUS")
	for _, c := range resp.GetCredentials() {
		st := "valid"
		switch {
		case c.GetRevokedAt() != nil:
			st = "revoked " + c.GetRevokedAt().AsTime().Format(time.DateOnly) + " by " + c.GetRevokedBy()
		case c.GetExpiresAt().AsTime().Before(time.Now()):
			st = "expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.GetName(), c.GetRole(), c.GetSerial(), c.GetExpiresAt().AsTime().Format(time.DateOnly), st)
	}
	return tw.Flush()
}

func credentialsRevoke(args []string, stdout io.Writer) error {
	var cf clientFlags
	var name, serial string
	f := newFlags("credentials revoke")
	cf.register(f, "admin")
	f.fs.StringVar(&name, "name", "", "revoke every live serial of this credential name")
	f.fs.StringVar(&serial, "serial", "", "revoke the one credential with this serial (hex, as credentials list shows it)")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if (strings.TrimSpace(name) == "") == (strings.TrimSpace(serial) == "") {
		return usagef("credentials revoke needs --name or --serial (one of them)")
	}
	var resp *pb.RevokeCredentialResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewCredentialsClient(conn).RevokeCredential(ctx, &pb.RevokeCredentialRequest{Name: name, Serial: serial})
		return err
	}); err != nil {
		return err
	}
	for _, c := range resp.GetRevoked() {
		fmt.Fprintf(stdout, "revoked credential %s (role %s, serial %s); it is refused from its next connection\n", c.GetName(), c.GetRole(), c.GetSerial())
	}
	return nil
}
