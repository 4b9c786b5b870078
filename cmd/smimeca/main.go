// Command smimeca is the one smimeca binary: "smimeca serve" runs the CA,
// the SCEP endpoint and the gRPC API; the other subcommands are gRPC clients
// for administrators.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// exit codes
const (
	exitOK      = 0
	exitFailure = 1 // the operation failed (server said no, I/O error…)
	exitUsage   = 2 // bad command line
)

// usageError marks an error as a command-line mistake (exit code 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{msg: fmt.Sprintf(format, a...)} }

const usage = `smimeca — S/MIME certificate authority and key escrow for MDM

Usage:
  smimeca serve [flags]                       run CA, SCEP endpoint, escrow and gRPC API
  smimeca init [serve's flags]                make the CA (keys in --kms: files or a PKCS#11 token) and exit
  smimeca keys list [--kms URI]               where each CA key is
  smimeca keys migrate --kms pkcs11:… [--remove-files]   move the CA's key files into a token
  smimeca root crl [--kms URI] [--validity 365d]   root ceremony: sign the root CRL with the offline root key
  smimeca root reissue-issuing [--kms URI] [--lifetime 3650d]   root ceremony: renew the issuing CA certificate (same key)
  smimeca root reissue-ra [--kms URI]         root ceremony: new SCEP RA key and certificate (where the root signs it)
  smimeca recovery request --user EMAIL [--thumbprint SHA256]… --reason R --recipient-cert officer.pem   (recovery-officer)
  smimeca recovery approve|reject --id ID [--comment C]   (recovery-approver: distinct from the officer, one vote each)
  smimeca recovery list [--user EMAIL] | show --id ID
  smimeca recovery download --id ID --out release.cms   (the officer, once, after the quorum)
  smimeca audit verify --log DIR|URL --key audit_log.pub [--checkpoints DIR]   recompute the audit transparency log offline
  smimeca audit show --log DIR|URL --key audit_log.pub [--user EMAIL] [--action A]   its events (after verifying it)
  smimeca device register --user EMAIL --device ID [--identity-cert FILE]
  smimeca device list --user EMAIL [-o json]
  smimeca device show --user EMAIL --device ID [-o json]
  smimeca device retire --user EMAIL --device ID --reason R
  smimeca credentials issue --role admin|registrar|profile --name N [--ttl 90d] --out DIR
  smimeca credentials list [-o json]
  smimeca credentials revoke --name N
  smimeca challenge create --user EMAIL --device ID [--ttl 24h]
  smimeca cert list --user EMAIL [--device ID] [-o json]
  smimeca cert revoke (--serial S | --user EMAIL --device ID) [--reason R]
  smimeca pfx import --user EMAIL (--password-file F | --password-env VAR) [--purpose P] FILE...
  smimeca pfx import --manifest FILE.csv [--concurrency 4]
  smimeca pfx list --user EMAIL [-o json]
  smimeca pfx delete --user EMAIL --thumbprint T
  smimeca pfx purge --user EMAIL
  smimeca pfx revoke --user EMAIL --thumbprint T [--reason R]
  smimeca pfx import --intune FILE.json
  smimeca pfx connector-key
  smimeca directory sync
  smimeca intune sync (--user EMAIL | --all)   put escrowed certificates into Intune's imported-PFX store
  smimeca doctor [--data DIR] [--url URL] [--ops-addr ADDR]    check a running installation
  smimeca bundle get --user EMAIL --device ID --out DIR [--key-transport pkcs1|oaep] [--break-glass --reason R]
  smimeca profile render --user EMAIL --device ID --settings FILE.yaml --out FILE.mobileconfig [--sign]
  smimeca version

Run "smimeca COMMAND -h" for a command's flags. Every setting can also be
given as an environment variable (SMIMECA_DATA, SMIMECA_HTTP_ADDR, …).
`

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	// smimeca's live heap is small (tens of MiB) and every request allocates
	// ASN.1 and CMS buffers, so the default GOGC=100 collects very often; a
	// larger target under a soft memory limit trades some memory for fewer
	// collections. GOGC / GOMEMLIMIT in the environment still win.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(1 << 30)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "serve":
		err = serve(args[1:], stderr)
	case "init":
		err = initCmd(args[1:], stdout)
	case "keys":
		err = keysCmd(args[1:], stdout)
	case "root":
		err = rootCmd(args[1:], stdout)
	case "challenge":
		err = challengeCmd(args[1:], stdout)
	case "cert":
		err = certCmd(args[1:], stdout)
	case "device":
		err = deviceCmd(args[1:], stdout)
	case "credentials":
		err = credentialsCmd(args[1:], stdout)
	case "recovery":
		err = recoveryCmd(args[1:], stdout)
	case "audit":
		err = auditCmd(args[1:], stdout)
	case "pfx":
		err = pfxCmd(args[1:], stdout, stderr)
	case "bundle":
		err = bundleCmd(args[1:], stdout)
	case "profile":
		err = profileCmd(args[1:], stdout)
	case "directory":
		err = directoryCmd(args[1:], stdout)
	case "intune":
		err = intuneCmd(args[1:], stdout, stderr)
	case "doctor":
		err = doctor(args[1:], stdout)
	case "version", "--version":
		fmt.Fprintln(stdout, "smimeca", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = usagef("unknown command %q", args[0])
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "smimeca:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, `run "smimeca help" for usage`)
		return exitUsage
	}
	return exitFailure
}
