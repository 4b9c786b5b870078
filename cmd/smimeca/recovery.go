package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"go.step.sm/crypto/pemutil"
	"google.golang.org/grpc"

	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// recoveryCmd runs key recovery under dual control: an officer asks,
// approvers vote, the officer downloads the release once.
func recoveryCmd(args []string, stdout io.Writer) error {
	const use = "usage: smimeca recovery (request|approve|reject|list|show|download) …"
	if len(args) == 0 {
		return usagef(use)
	}
	switch args[0] {
	case "request":
		return recoveryRequest(args[1:], stdout)
	case "approve", "reject":
		return recoveryVote(args[0], args[1:], stdout)
	case "list":
		return recoveryList(args[1:], stdout)
	case "show":
		return recoveryShow(args[1:], stdout)
	case "download":
		return recoveryDownload(args[1:], stdout)
	default:
		return usagef("unknown recovery command %q (request, approve, reject, list, show, download)", args[0])
	}
}

// thumbprintList collects repeated --thumbprint flags.
type thumbprintList []string

func (t *thumbprintList) String() string     { return strings.Join(*t, ",") }
func (t *thumbprintList) Set(s string) error { *t = append(*t, s); return nil }

func recoveryRequest(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, reason, recipient, output string
	var thumbs thumbprintList
	f := newFlags("recovery request")
	cf.register(f, "recovery-officer")
	f.fs.StringVar(&user, "user", "", "whose escrowed keys (required)")
	f.fs.Var(&thumbs, "thumbprint", "SHA-256 of one escrowed certificate to recover (repeatable; default: all of the user's)")
	f.fs.StringVar(&reason, "reason", "", "why, for the approvers and the audit trail (required)")
	f.fs.StringVar(&recipient, "recipient-cert", "", "your own encryption certificate (PEM or DER, RSA): the release is encrypted to it and nothing else (required)")
	f.fs.StringVar(&output, "o", "text", "output: text or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || reason == "" || recipient == "" {
		return usagef("recovery request needs --user, --reason and --recipient-cert")
	}
	cert, err := pemutil.ReadCertificate(recipient) // PEM or DER
	if err != nil {
		return usagef("--recipient-cert: %v", err)
	}
	return cf.callRecovery(stdout, output, func(ctx context.Context, c pb.KeyRecoveryClient) (*pb.Recovery, error) {
		return c.RequestRecovery(ctx, &pb.RequestRecoveryRequest{User: user, Thumbprints: thumbs, Reason: reason, RecipientCertificateDer: cert.Raw})
	})
}

func recoveryVote(verb string, args []string, stdout io.Writer) error {
	var cf clientFlags
	var id, comment, output string
	f := newFlags("recovery " + verb)
	cf.register(f, "recovery-approver")
	f.fs.StringVar(&id, "id", "", "the request's id (required)")
	f.fs.StringVar(&comment, "comment", "", "what you checked, for the audit trail")
	f.fs.StringVar(&output, "o", "text", "output: text or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if id == "" {
		return usagef("recovery %s needs --id", verb)
	}
	return cf.callRecovery(stdout, output, func(ctx context.Context, c pb.KeyRecoveryClient) (*pb.Recovery, error) {
		req := &pb.VoteRecoveryRequest{Id: id, Comment: comment}
		if verb == "approve" {
			return c.ApproveRecovery(ctx, req)
		}
		return c.RejectRecovery(ctx, req)
	})
}

func recoveryShow(args []string, stdout io.Writer) error {
	var cf clientFlags
	var id, output string
	f := newFlags("recovery show")
	cf.register(f, "recovery-approver")
	f.fs.StringVar(&id, "id", "", "the request's id (required)")
	f.fs.StringVar(&output, "o", "text", "output: text or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if id == "" {
		return usagef("recovery show needs --id")
	}
	return cf.callRecovery(stdout, output, func(ctx context.Context, c pb.KeyRecoveryClient) (*pb.Recovery, error) {
		return c.GetRecovery(ctx, &pb.GetRecoveryRequest{Id: id})
	})
}

func recoveryList(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, output string
	f := newFlags("recovery list")
	cf.register(f, "recovery-approver")
	f.fs.StringVar(&user, "user", "", "only this user's requests")
	f.fs.StringVar(&output, "o", "text", "output: text or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	return cf.call(func(ctx context.Context, conn *grpc.ClientConn) error {
		list, err := pb.NewKeyRecoveryClient(conn).ListRecoveries(ctx, &pb.ListRecoveriesRequest{User: user})
		if err != nil {
			return err
		}
		if output == "json" {
			return printJSON(stdout, list)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSER\tSTATE\tAPPROVALS\tREQUESTER\tDEADLINE")
		for _, r := range list.GetRecoveries() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", r.GetId(), r.GetUser(), r.GetState(), approvals(r), r.GetQuorum(),
				r.GetRequesterName(), r.GetDeadline().AsTime().UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	})
}

func recoveryDownload(args []string, stdout io.Writer) error {
	var cf clientFlags
	var id, out string
	f := newFlags("recovery download")
	cf.register(f, "recovery-officer")
	f.fs.StringVar(&id, "id", "", "the approved request's id (required)")
	f.fs.StringVar(&out, "out", "", "file for the release: CMS EnvelopedData (DER) to your --recipient-cert; opens with `openssl cms -decrypt -inform DER -recip cert.pem -inkey key.pem` (required; created, never overwritten)")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if id == "" || out == "" {
		return usagef("recovery download needs --id and --out")
	}
	// Created first, so that a release is never lost to an unwritable path:
	// the server gives it once.
	file, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return usagef("--out: %v", err)
	}
	var env *pb.DownloadRecoveryResponse
	err = cf.call(func(ctx context.Context, conn *grpc.ClientConn) error {
		env, err = pb.NewKeyRecoveryClient(conn).DownloadRecovery(ctx, &pb.DownloadRecoveryRequest{Id: id})
		return err
	})
	if err != nil {
		file.Close()
		os.Remove(out)
		return err
	}
	if _, err := file.Write(env.GetEnvelopedData()); err != nil {
		file.Close()
		return fmt.Errorf("write %s: %w (the server gives a release once)", out, err)
	}
	if err := file.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s: the release of recovery %s, encrypted to your recipient certificate\n", out, id)
	return nil
}

// callRecovery calls a KeyRecovery method that answers with a request and
// prints it as output says.
func (c *clientFlags) callRecovery(stdout io.Writer, output string, fn func(ctx context.Context, c pb.KeyRecoveryClient) (*pb.Recovery, error)) error {
	return c.call(func(ctx context.Context, conn *grpc.ClientConn) error {
		r, err := fn(ctx, pb.NewKeyRecoveryClient(conn))
		if err != nil {
			return err
		}
		if output == "json" {
			return printJSON(stdout, r)
		}
		fmt.Fprintf(stdout, "recovery %s\n  user: %s\n  state: %s (%d of %d approvals)\n  requested by: %s (serial %s), %s\n  reason: %s\n  recipient SHA-256: %s\n  deadline: %s\n",
			r.GetId(), r.GetUser(), r.GetState(), approvals(r), r.GetQuorum(), r.GetRequesterName(), r.GetRequesterSerial(),
			r.GetCreatedAt().AsTime().UTC().Format(time.RFC3339), r.GetReason(), r.GetRecipientSha256(), r.GetDeadline().AsTime().UTC().Format(time.RFC3339))
		if len(r.GetThumbprints()) > 0 {
			fmt.Fprintf(stdout, "  certificates: %s\n", strings.Join(r.GetThumbprints(), ", "))
		}
		for _, v := range r.GetVotes() {
			verb := "rejected"
			if v.GetApprove() {
				verb = "approved"
			}
			fmt.Fprintf(stdout, "  %s by %s (serial %s), %s: %s\n", verb, v.GetApproverName(), v.GetApproverSerial(), v.GetAt().AsTime().UTC().Format(time.RFC3339), v.GetComment())
		}
		return nil
	})
}

func approvals(r *pb.Recovery) int {
	n := 0
	for _, v := range r.GetVotes() {
		if v.GetApprove() {
			n++
		}
	}
	return n
}
