package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/csv"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

func pfxCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("usage: smimeca pfx (import|list|delete|revoke|purge|connector-key) …")
	}
	switch args[0] {
	case "import":
		return pfxImport(args[1:], stdout, stderr)
	case "list":
		return pfxList(args[1:], stdout)
	case "delete":
		return pfxDelete(args[1:], stdout)
	case "purge":
		return pfxPurge(args[1:], stdout)
	case "connector-key":
		return pfxConnectorKey(args[1:], stdout)
	case "revoke":
		return pfxRevoke(args[1:], stdout)
	default:
		return usagef("unknown pfx command %q (import, list, delete, revoke, purge, connector-key)", args[0])
	}
}

// importJob is one PFX to import.
type importJob struct {
	line     int // manifest line, 0 for command-line files
	user     string
	file     string
	password string
	purpose  string
	// intune is one Intune userPFXCertificate record (--intune); it
	// carries its own PFX, user and encrypted password.
	intune []byte
}

type importOutcome struct {
	job       importJob
	status    string // imported, duplicate, refused, failed
	detail    string
	sha256    string
	expired   bool
	retryable bool
}

func pfxImport(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var user, pwFile, pwEnv, purpose, manifest, intune string
	var concurrency int
	var plain, quiet bool
	f := newFlags("pfx import")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (with files)")
	f.fs.StringVar(&pwFile, "password-file", "", "file holding the PFX password (with files)")
	f.fs.StringVar(&pwEnv, "password-env", "", "environment variable holding the PFX password (with files)")
	f.fs.StringVar(&purpose, "purpose", "", "smimeEncryption (default) or smimeSigning")
	f.fs.StringVar(&manifest, "manifest", "", "CSV with columns user,file,password_file,purpose (relative paths are relative to the manifest)")
	f.fs.StringVar(&intune, "intune", "", "JSON file of Intune userPFXCertificate records (as Intune's PFXImport PowerShell module builds them, passwords encrypted to the connector key: see pfx connector-key)")
	f.fs.IntVar(&concurrency, "concurrency", 4, "imports in flight at once (manifest)")
	f.fs.BoolVar(&plain, "plain-password", false, "send passwords in plain text over mTLS instead of encrypted to the connector key")
	f.fs.BoolVar(&quiet, "quiet", false, "no progress bar")
	// Files and flags may come in any order.
	var files []string
	for {
		if err := f.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil
			}
			return usagef("%v", err)
		}
		args = f.fs.Args()
		if len(args) == 0 {
			break
		}
		files = append(files, args[0])
		args = args[1:]
	}
	if len(f.bad) > 0 {
		return usagef("%s", strings.Join(f.bad, "; "))
	}
	jobs, err := importJobs(files, user, pwFile, pwEnv, purpose, manifest, intune)
	if err != nil {
		return err
	}
	if concurrency < 1 || concurrency > 64 {
		return usagef("--concurrency must be 1..64")
	}
	return runImports(&cf, jobs, !plain && intune == "", concurrency, quiet, stdout, stderr)
}

// importJobs turns pfx import's arguments into the imports to run: the
// records of an Intune file, the lines of a manifest, or the files given
// for one user.
func importJobs(files []string, user, pwFile, pwEnv, purpose, manifest, intune string) ([]importJob, error) {
	var jobs []importJob
	switch {
	case intune != "" && (manifest != "" || len(files) > 0 || user != "" || pwFile != "" || pwEnv != "" || purpose != ""):
		return nil, usagef("--intune excludes --manifest, --user, --password-file, --password-env, --purpose and file arguments: each record names its user, password and purpose")
	case intune != "":
		var err error
		if jobs, err = readIntune(intune); err != nil {
			return nil, usagef("--intune %s: %v", intune, err)
		}
	case manifest != "" && (len(files) > 0 || user != "" || pwFile != "" || pwEnv != ""):
		return nil, usagef("--manifest excludes --user, --password-file, --password-env and file arguments")
	case manifest != "":
		var err error
		if jobs, err = readManifest(manifest); err != nil {
			return nil, usagef("manifest %s: %v", manifest, err)
		}
	default:
		if user == "" || len(files) == 0 {
			return nil, usagef("pfx import needs --user EMAIL and at least one FILE (or --manifest FILE.csv)")
		}
		if (pwFile == "") == (pwEnv == "") {
			return nil, usagef("give exactly one of --password-file and --password-env")
		}
		pw, err := readPassword(pwFile, pwEnv)
		if err != nil {
			return nil, usagef("%v", err)
		}
		for _, file := range files {
			jobs = append(jobs, importJob{user: user, file: file, password: pw, purpose: purpose})
		}
	}
	return jobs, nil
}

// runImports runs the imports, concurrency at once, with a progress bar on
// stderr (unless quiet), passwords encrypted to the connector key when
// encrypt, and prints the report.
func runImports(cf *clientFlags, jobs []importJob, encrypt bool, concurrency int, quiet bool, stdout, stderr io.Writer) error {
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewEscrowAdminClient(conn)
	var connector *connectorKey
	if encrypt {
		ctx, cancel := cf.ctx()
		ck, err := client.GetConnectorKey(ctx, &pb.GetConnectorKeyRequest{})
		cancel()
		if err != nil {
			return &clientError{err}
		}
		if connector, err = newConnectorKey(ck); err != nil {
			return err
		}
	}

	outcomes := make([]importOutcome, len(jobs))
	progress := newProgress(stderr, len(jobs), quiet)
	var wg sync.WaitGroup
	sem := make(chan struct{}, concurrency)
	for i := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			outcomes[i] = importOne(client, cf, connector, jobs[i])
			progress.done(outcomes[i].status)
		}(i)
	}
	wg.Wait()
	progress.finish()
	return report(stdout, outcomes)
}

func importOne(client pb.EscrowAdminClient, cf *clientFlags, connector *connectorKey, j importJob) importOutcome {
	out := importOutcome{job: j}
	if j.intune != nil {
		ctx, cancel := cf.ctx()
		defer cancel()
		resp, err := client.ImportIntunePfx(ctx, &pb.ImportIntunePfxRequest{Record: j.intune})
		return out.of(resp, err)
	}
	data, err := os.ReadFile(j.file)
	if err != nil {
		out.status, out.detail = "refused", "cannot read file: "+errors.Unwrap(err).Error()
		return out
	}
	req := &pb.ImportPfxRequest{User: j.user, Pfx: data, Purpose: j.purpose}
	if connector != nil {
		ct, err := rsa.EncryptOAEP(connector.hash.New(), rand.Reader, connector.key, []byte(j.password), nil)
		if err != nil {
			out.status, out.detail = "failed", "cannot encrypt the password to the connector key"
			return out
		}
		req.PasswordSource = &pb.ImportPfxRequest_EncryptedPassword{EncryptedPassword: ct}
		req.PasswordHash = connector.name
	} else {
		req.PasswordSource = &pb.ImportPfxRequest_Password{Password: j.password}
	}
	ctx, cancel := cf.ctx()
	defer cancel()
	resp, err := client.ImportPfx(ctx, req)
	return out.of(resp, err)
}

// of fills in the outcome of an import call.
func (out importOutcome) of(resp *pb.ImportPfxResponse, err error) importOutcome {
	if err != nil {
		st, _ := status.FromError(err)
		out.detail = st.Message()
		switch st.Code() {
		case codes.InvalidArgument, codes.ResourceExhausted, codes.PermissionDenied, codes.Unauthenticated:
			out.status = "refused"
		default:
			out.status, out.retryable = "failed", true
			out.detail = st.Code().String() + ": " + st.Message()
		}
		return out
	}
	out.sha256, out.expired = resp.GetCertificate().GetSha256(), resp.GetExpired()
	out.status = "imported"
	if resp.GetDuplicate() {
		out.status = "duplicate"
	}
	return out
}

// report prints the final report and returns an error when anything was
// refused or failed (exit code 1).
func report(w io.Writer, outcomes []importOutcome) error {
	counts := map[string]int{}
	for _, o := range outcomes {
		counts[o.status]++
	}
	fmt.Fprintf(w, "imported %d, duplicate (already escrowed) %d, refused %d, failed %d\n",
		counts["imported"], counts["duplicate"], counts["refused"], counts["failed"])
	var bad []importOutcome
	for _, o := range outcomes {
		if o.status == "refused" || o.status == "failed" {
			bad = append(bad, o)
		}
	}
	sort.SliceStable(bad, func(i, j int) bool { return bad[i].job.line < bad[j].job.line })
	for _, o := range bad {
		where := o.job.file
		if o.job.line > 0 && o.job.intune == nil {
			where = fmt.Sprintf("line %d (%s)", o.job.line, o.job.file)
		}
		fmt.Fprintf(w, "%s %s for %s: %s\n", strings.ToUpper(o.status), where, o.job.user, o.detail)
	}
	if counts["failed"] > 0 {
		fmt.Fprintln(w, "re-run the same command to retry: what is already escrowed is skipped")
	}
	if len(bad) > 0 {
		return &clientError{fmt.Errorf("%d of %d PFX files were not imported", len(bad), len(outcomes))}
	}
	return nil
}

// progress draws a one-line progress bar on a terminal, or nothing.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	total int
	n     int
	on    bool
	start time.Time
}

func newProgress(w io.Writer, total int, quiet bool) *progress {
	on := !quiet && total > 1
	if f, ok := w.(*os.File); !ok || !isTerminal(f) {
		on = false
	}
	return &progress{w: w, total: total, on: on, start: time.Now()}
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *progress) done(string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	if !p.on {
		return
	}
	const width = 30
	fill := width * p.n / p.total
	rate := float64(p.n) / time.Since(p.start).Seconds()
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d  %.1f PFX/s", strings.Repeat("#", fill), strings.Repeat(" ", width-fill), p.n, p.total, rate)
}

func (p *progress) finish() {
	if p.on {
		fmt.Fprintln(p.w)
	}
}

// readIntune reads a file of Intune userPFXCertificate records into one
// job each, checked here so that a malformed file is refused before
// anything is sent.
func readIntune(path string) ([]importJob, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	recs, err := pfxconnector.ParseIntune(data)
	if err != nil {
		return nil, err
	}
	raws, err := pfxconnector.IntuneRecords(data)
	if err != nil {
		return nil, err
	}
	jobs := make([]importJob, len(recs))
	for i, r := range recs {
		jobs[i] = importJob{line: i + 1, user: r.UserPrincipalName, file: fmt.Sprintf("%s record %d (%s)", filepath.Base(path), i+1, r.Thumbprint), intune: raws[i]}
	}
	return jobs, nil
}

// readManifest reads user,file,password_file,purpose rows. A first row
// naming the columns is skipped.
func readManifest(path string) ([]importJob, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseManifest(f, filepath.Dir(path), func(p string) (string, error) { return readPassword(p, "") })
}

// parseManifest parses a manifest whose relative paths are relative to
// base; readPW reads a password file (each file once).
func parseManifest(in io.Reader, base string, readPW func(path string) (string, error)) ([]importJob, error) {
	r := csv.NewReader(in)
	r.FieldsPerRecord = -1
	r.Comment = '#'
	r.TrimLeadingSpace = true
	var jobs []importJob
	pwCache := map[string]string{}
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		line, _ := r.FieldPos(0)
		if len(jobs) == 0 && len(rec) > 0 && strings.EqualFold(strings.TrimSpace(rec[0]), "user") {
			continue
		}
		if len(rec) < 3 || len(rec) > 4 {
			return nil, fmt.Errorf("line %d: want user,file,password_file[,purpose]", line)
		}
		j := importJob{line: line, user: strings.TrimSpace(rec[0]), file: rel(base, rec[1])}
		if len(rec) == 4 {
			j.purpose = strings.TrimSpace(rec[3])
		}
		pwPath := rel(base, rec[2])
		pw, ok := pwCache[pwPath]
		if !ok {
			if pw, err = readPW(pwPath); err != nil {
				return nil, fmt.Errorf("line %d: %v", line, err)
			}
			pwCache[pwPath] = pw
		}
		j.password = pw
		jobs = append(jobs, j)
	}
	if len(jobs) == 0 {
		return nil, errors.New("no rows")
	}
	return jobs, nil
}

func rel(base, p string) string {
	p = strings.TrimSpace(p)
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(base, p)
}

// readPassword reads a password from a file (one trailing newline dropped)
// or an environment variable.
func readPassword(file, env string) (string, error) {
	if env != "" {
		v, ok := os.LookupEnv(env)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", env)
		}
		return v, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("password file: %w", errors.Unwrap(err))
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"), nil
}

// connectorKey is the server's connector key with the OAEP hash to
// encrypt passwords with: the first the server lists that this client
// knows (a key in a token may lack SHA-2 OAEP).
type connectorKey struct {
	key  *rsa.PublicKey
	hash crypto.Hash
	name pb.PasswordHash
}

var clientHashes = map[string]struct {
	hash crypto.Hash
	name pb.PasswordHash
}{
	"SHA256": {crypto.SHA256, pb.PasswordHash_PASSWORD_HASH_SHA256},
	"SHA384": {crypto.SHA384, pb.PasswordHash_PASSWORD_HASH_SHA384},
	"SHA512": {crypto.SHA512, pb.PasswordHash_PASSWORD_HASH_SHA512},
	"SHA1":   {crypto.SHA1, pb.PasswordHash_PASSWORD_HASH_SHA1},
}

func newConnectorKey(r *pb.GetConnectorKeyResponse) (*connectorKey, error) {
	k, err := parseConnectorKey(r.GetPublicKeyPem())
	if err != nil {
		return nil, err
	}
	for _, h := range r.GetOaepHashes() {
		if c, ok := clientHashes[h]; ok {
			return &connectorKey{key: k, hash: c.hash, name: c.name}, nil
		}
	}
	return nil, fmt.Errorf("the server's connector key decrypts with no OAEP hash this client knows (%s); use --plain-password", strings.Join(r.GetOaepHashes(), ", "))
}

func parseConnectorKey(pemText string) (*rsa.PublicKey, error) {
	b, _ := pem.Decode([]byte(pemText))
	if b == nil {
		return nil, errors.New("the server sent no connector key")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("connector key: %w", err)
	}
	rk, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, errors.New("the connector key is not RSA")
	}
	return rk, nil
}

// pfxConnectorKey prints the connector's public key (PEM) that PFX
// passwords are encrypted to — by `pfx import`, or by Intune's PFXImport
// module once it is imported into the key storage provider it names.
func pfxConnectorKey(args []string, stdout io.Writer) error {
	var cf clientFlags
	f := newFlags("pfx connector-key")
	cf.register(f, "admin")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	var resp *pb.GetConnectorKeyResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEscrowAdminClient(conn).GetConnectorKey(ctx, &pb.GetConnectorKeyRequest{})
		return err
	}); err != nil {
		return err
	}
	_, err := io.WriteString(stdout, resp.GetPublicKeyPem())
	return err
}

func pfxList(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, output string
	f := newFlags("pfx list")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&output, "o", "table", "output: table or json")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" {
		return usagef("pfx list needs --user")
	}
	if output != "table" && output != "json" {
		return usagef("-o %q: use table or json", output)
	}
	var resp *pb.ListUserCertificatesResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEscrowAdminClient(conn).ListUserCertificates(ctx, &pb.ListUserCertificatesRequest{User: user})
		return err
	}); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(stdout, resp)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHA-1\tSERIAL\tNOT AFTER\tPURPOSE\tSTATUS")
	for _, c := range resp.GetCertificates() {
		st := "valid"
		switch {
		case c.GetRevokedAt() != nil:
			st = "revoked " + c.GetRevocationReason()
		case c.GetExpired():
			st = "expired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.GetSha1(), c.GetSerial(), c.GetNotAfter().AsTime().Format(time.DateOnly), c.GetPurpose(), st)
	}
	return tw.Flush()
}

func pfxDelete(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, thumb string
	f := newFlags("pfx delete")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&thumb, "thumbprint", "", "SHA-1 or SHA-256 thumbprint (required)")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || thumb == "" {
		return usagef("pfx delete needs --user and --thumbprint")
	}
	var resp *pb.DeleteUserCertificateResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEscrowAdminClient(conn).DeleteUserCertificate(ctx, &pb.DeleteUserCertificateRequest{User: user, Thumbprint: thumb})
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "deleted %s (serial %s)\n", resp.GetCertificate().GetSha1(), resp.GetCertificate().GetSerial())
	return nil
}

// pfxRevoke records that an escrowed certificate's CA revoked it.
func pfxRevoke(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user, thumb, reason string
	f := newFlags("pfx revoke")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	f.fs.StringVar(&thumb, "thumbprint", "", "SHA-1 or SHA-256 thumbprint (required)")
	f.fs.StringVar(&reason, "reason", "", "why, as the CA's CRL says (e.g. keyCompromise)")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" || thumb == "" {
		return usagef("pfx revoke needs --user and --thumbprint")
	}
	var resp *pb.RevokeUserCertificateResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEscrowAdminClient(conn).RevokeUserCertificate(ctx, &pb.RevokeUserCertificateRequest{User: user, Thumbprint: thumb, Reason: reason})
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s (serial %s): key kept in escrow, no longer current or published\n", resp.GetCertificate().GetSha1(), resp.GetCertificate().GetSerial())
	return nil
}

// directoryCmd runs "directory sync": the server reconciles the LDAP
// directory it publishes to with the escrow.
func directoryCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "sync" {
		return usagef("usage: smimeca directory sync")
	}
	var cf clientFlags
	f := newFlags("directory sync")
	cf.register(f, "admin")
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	var resp *pb.SyncDirectoryResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEscrowAdminClient(conn).SyncDirectory(ctx, &pb.SyncDirectoryRequest{})
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "users %d: certificates added %d, removed %d; users without a directory entry %d, failed %d\n",
		resp.GetUsers(), resp.GetAdded(), resp.GetRemoved(), resp.GetMissing(), resp.GetFailed())
	if resp.GetFailed() > 0 {
		return &clientError{fmt.Errorf("%d users could not be published; see the server log and run it again", resp.GetFailed())}
	}
	return nil
}

func pfxPurge(args []string, stdout io.Writer) error {
	var cf clientFlags
	var user string
	f := newFlags("pfx purge")
	cf.register(f, "admin")
	f.fs.StringVar(&user, "user", "", "user e-mail address (required)")
	if err := f.parse(args); err != nil {
		return helpOK(err)
	}
	if user == "" {
		return usagef("pfx purge needs --user")
	}
	var resp *pb.PurgeUserResponse
	if err := cf.call(func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = pb.NewEscrowAdminClient(conn).PurgeUser(ctx, &pb.PurgeUserRequest{User: user})
		return err
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "purged %d certificate(s) of %s\n", len(resp.GetPurged()), user)
	return nil
}
