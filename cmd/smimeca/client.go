package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/smimeca/smimeca/api/apipki"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// clientError is a failure reported by the server or the connection.
type clientError struct{ err error }

func (e *clientError) Error() string {
	if st, ok := status.FromError(e.err); ok {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return e.err.Error()
}

func (e *clientError) Unwrap() error { return e.err }

// clientFlags are the connection flags every client command takes.
type clientFlags struct {
	server      string
	credentials string
	timeout     time.Duration
}

func (c *clientFlags) register(f *envFlags, role string) {
	def := "localhost:9443"
	if a := os.Getenv("SMIMECA_GRPC_ADDR"); a != "" {
		if hp, err := localURLHost(a); err == nil {
			def = hp
		}
	}
	f.str(&c.server, "server", "SMIMECA_SERVER", def, "gRPC server host:port")
	f.str(&c.credentials, "credentials", "SMIMECA_CREDENTIALS", filepath.Join(defaultDataDir(), "credentials", role),
		"directory with client.crt, client.key and ca.crt")
	f.duration(&c.timeout, "timeout", "SMIMECA_TIMEOUT", 30*time.Second, "per-call timeout")
}

func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	crtPath := filepath.Join(c.credentials, apipki.ClientCertFile)
	keyPath := filepath.Join(c.credentials, apipki.ClientKeyFile)
	caPath := filepath.Join(c.credentials, apipki.ClientCAFile)
	pair, err := tls.LoadX509KeyPair(crtPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("load client credentials from %s (run \"smimeca serve\" once to create them, or pass --credentials): %w", c.credentials, err)
	}
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("read API CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caPath)
	}
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(c.server, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c.server, err)
	}
	return conn, nil
}

func (c *clientFlags) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.timeout)
}

// call dials the server, runs fn under the per-call timeout and closes the
// connection. Errors of fn become clientErrors (exit code 1).
func (c *clientFlags) call(fn func(ctx context.Context, conn *grpc.ClientConn) error) error {
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := c.ctx()
	defer cancel()
	if err := fn(ctx, conn); err != nil {
		return &clientError{err}
	}
	return nil
}

func challengeCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return usagef("usage: smimeca challenge create --user EMAIL --device ID [--ttl 24h]")
	}
	var cf clientFlags
	var user, device string
	var ttl time.Duration
	f := newFlags("challenge create")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&device, "device", "", "device id (required)")
	f.fs.Func("ttl", "challenge lifetime (default: server default, 24h)", func(s string) error {
		d, err := parseDuration(s)
		ttl = d
		return err
	})
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	if user == "" || device == "" {
		return usagef("challenge create needs --user and --device")
	}
	var resp *pb.CreateChallengeResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEnrollmentClient(conn).CreateChallenge(ctx, &pb.CreateChallengeRequest{
			User: user, DeviceId: device, TtlSeconds: int64(ttl / time.Second),
		})
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintln(stdout, resp.GetChallenge())
	return nil
}

func certCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("usage: smimeca cert (list|revoke) …")
	}
	switch args[0] {
	case "list":
		return certList(args[1:], stdout)
	case "revoke":
		return certRevoke(args[1:], stdout)
	default:
		return usagef("unknown cert command %q (list, revoke)", args[0])
	}
}

func certList(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, device, output string
	f := newFlags("cert list")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&device, "device", "", "one of the user's devices")
	f.fs.StringVar(&output, "o", "table", "output: table or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" {
		return usagef("cert list needs --user (and optionally --device)")
	}
	if output != "table" && output != "json" {
		return usagef("-o %q: use table or json", output)
	}
	var resp *pb.ListCertificatesResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEnrollmentClient(conn).ListCertificates(ctx, &pb.ListCertificatesRequest{User: user, DeviceId: device})
		return err
	}); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(stdout, resp)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL (HEX)\tUSER\tDEVICE\tNOT AFTER\tSTATUS")
	for _, c := range resp.GetCertificates() {
		st := "valid"
		switch {
		case c.GetRevoked():
			st = "revoked"
		case c.GetNotAfter().AsTime().Before(time.Now()):
			st = "expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.GetSerialHex(), c.GetUser(), c.GetDeviceId(),
			c.GetNotAfter().AsTime().Format(time.DateOnly), st)
	}
	return tw.Flush()
}

var reasons = map[string]pb.RevocationReason{
	"unspecified":          pb.RevocationReason_REVOCATION_REASON_UNSPECIFIED,
	"keyCompromise":        pb.RevocationReason_REVOCATION_REASON_KEY_COMPROMISE,
	"affiliationChanged":   pb.RevocationReason_REVOCATION_REASON_AFFILIATION_CHANGED,
	"superseded":           pb.RevocationReason_REVOCATION_REASON_SUPERSEDED,
	"cessationOfOperation": pb.RevocationReason_REVOCATION_REASON_CESSATION_OF_OPERATION,
}

func certRevoke(args []string, stdout io.Writer) error {
	var cf clientFlags
	var serial, user, device, reason, comment string
	f := newFlags("cert revoke")
	cf.register(f, "admin")
	f.fs.StringVar(&serial, "serial", "", "serial (decimal, 0x-hex or colon hex)")
	f.fs.StringVar(&user, "user", "", "with --device: the device's user")
	f.fs.StringVar(&device, "device", "", "revoke every certificate of this device of --user (it stays registered; device retire ends it)")
	f.fs.StringVar(&reason, "reason", "unspecified", "unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation")
	f.fs.StringVar(&comment, "comment", "", "free text for the audit log")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if (serial == "") == (device == "") {
		return usagef("cert revoke needs exactly one of --serial and --device")
	}
	if device != "" && user == "" {
		return usagef("cert revoke --device needs --user: device ids are unique per user only")
	}
	code, ok := reasons[reason]
	if !ok {
		names := make([]string, 0, len(reasons))
		for k := range reasons {
			names = append(names, k)
		}
		return usagef("--reason %q: use one of %s", reason, strings.Join(names, ", "))
	}
	if serial != "" {
		var resp *pb.RevokeCertificateResponse
		if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
			resp, err = pb.NewEnrollmentClient(conn).RevokeCertificate(ctx, &pb.RevokeCertificateRequest{Serial: serial, Reason: code, Comment: comment})
			return err
		}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "revoked %s (%s, device %s)\n", resp.GetCertificate().GetSerialHex(), resp.GetCertificate().GetUser(), resp.GetCertificate().GetDeviceId())
		return nil
	}
	var resp *pb.RevokeDeviceResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEnrollmentClient(conn).RevokeDevice(ctx, &pb.RevokeDeviceRequest{User: user, DeviceId: device, Reason: code, Comment: comment})
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %d certificate(s) of device %s of %s\n", len(resp.GetRevokedSerials()), device, user)
	for _, s := range resp.GetRevokedSerials() {
		fmt.Fprintln(stdout, s)
	}
	return nil
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// helpOK turns -h into a clean exit.
func helpOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
