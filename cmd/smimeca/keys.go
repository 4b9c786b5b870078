package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/ocsp"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// kmsPINEnv holds a token's user PIN when the --kms URI names none.
const kmsPINEnv = "SMIMECA_KMS_PIN"

// envOr returns $env, or def when it is empty.
func envOr(env, def string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

// caStack is the CA as serve and init open it: the database, the key
// store and the authority on them.
type caStack struct {
	database  *datastore.Database
	keys      keystore.Store
	authority *ca.Authority
}

// breakGlassFile, under DATA/ca (copied with the CA to every node), holds
// the installation's break-glass default: "off" for a CA made since plain
// key release became a setting. A CA without it predates that: "on".
const breakGlassFile = "break-glass-default"

// breakGlassDefault returns the installation's break-glass default from
// caDir (see breakGlassFile).
func breakGlassDefault(caDir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(caDir, breakGlassFile))
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	switch v := strings.TrimSpace(string(b)); v {
	case "on", "off":
		return v == "on", nil
	default:
		return false, fmt.Errorf("%s: %q is neither on nor off", filepath.Join(caDir, breakGlassFile), v)
	}
}

// openCA opens the database and the --kms key store under cfg.dataDir and
// the CA on them, creating on first start what is missing.
func openCA(cfg *serveConfig) (*caStack, error) {
	st := &caStack{}
	var err error
	if cfg.db != "" {
		st.database, err = datastore.OpenPostgres(cfg.db)
	} else {
		st.database, err = datastore.OpenBolt(filepath.Join(cfg.dataDir, "db", "smimeca.db"))
	}
	if err != nil {
		return nil, err
	}
	caDir := filepath.Join(cfg.dataDir, "ca")
	_, statErr := os.Stat(filepath.Join(caDir, ca.RootCertFile))
	newCA := errors.Is(statErr, fs.ErrNotExist)
	if st.keys, err = keystore.Open(cfg.kms, caDir, os.Getenv(kmsPINEnv)); err != nil {
		st.Close()
		return nil, err
	}
	var policyOIDs []string
	for _, o := range strings.Split(cfg.policyOIDs, ",") {
		if o = strings.TrimSpace(o); o != "" {
			policyOIDs = append(policyOIDs, o)
		}
	}
	st.authority, err = ca.Open(ca.Config{
		Dir: filepath.Join(cfg.dataDir, "ca"), IssuerKeyType: strings.ToUpper(cfg.issuerKeyType),
		BaseURL: cfg.certBaseURL, PolicyOIDs: policyOIDs, Keys: st.keys, SCEPOmitRoot: !cfg.scepIncludeRoot,
	}, st.database.DB)
	if err != nil {
		st.Close()
		return nil, err
	}
	if newCA {
		if err := os.WriteFile(filepath.Join(caDir, breakGlassFile), []byte("off\n"), 0o644); err != nil {
			st.Close()
			return nil, fmt.Errorf("record the installation's break-glass default: %w", err)
		}
	}
	return st, nil
}

// Close closes what openCA opened, the authority first.
func (st *caStack) Close() {
	if st.authority != nil {
		st.authority.Close()
	}
	if st.keys != nil {
		st.keys.Close()
	}
	st.database.Close()
}

// initCmd creates the CA — its keys in the --kms store, certificates and
// database under --data — without serving; it takes serve's flags, and
// serve later finds everything in place. Running it on an existing CA
// changes nothing and lists where its keys are.
func initCmd(args []string, stdout io.Writer) error {
	cfg, err := parseServeAs("init", args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	st, err := openCA(cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	keys, authority := st.keys, st.authority
	if _, err := pfxconnector.LoadOrCreateKey(keys); err != nil {
		return err
	}
	if _, err := ocsp.New(authority, ocsp.DefaultValidity); err != nil {
		return err
	}
	if _, _, err := authority.Delegated(profileSigner(authority.Name()), time.Now()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA in %s, keys in %s:\n", filepath.Join(cfg.dataDir, "ca"), keystore.RedactKMS(cfg.kms))
	if err := listKeys(stdout, keys); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "root fingerprint (SHA-256): %X\n", authority.Fingerprint())
	return nil
}

// keysCmd: where the CA keys are (list) and moving key files into a token
// (migrate).
func keysCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usagef("usage: smimeca keys (list|migrate) …")
	}
	var dataDir, kms string
	var remove bool
	f := newFlags("keys " + args[0])
	f.str(&dataDir, "data", "SMIMECA_DATA", "data", "the server's data directory")
	switch args[0] {
	case "list":
		f.str(&kms, "kms", "SMIMECA_KMS", keystore.KMSSoft, "the server's --kms (PIN also from $"+kmsPINEnv+")")
	case "migrate":
		f.str(&kms, "kms", "SMIMECA_KMS", "", "the token to move the key files of DATA/ca into: a pkcs11: URI (PIN also from $"+kmsPINEnv+")")
		f.fs.BoolVar(&remove, "remove-files", false, "delete each key file once its key works from the token (default: keep them; move them off the machine yourself)")
	default:
		return usagef("unknown keys command %q (list, migrate)", args[0])
	}
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	caDir := filepath.Join(dataDir, "ca")
	if args[0] == "migrate" && !strings.HasPrefix(kms, "pkcs11:") {
		return usagef("--kms must name the token to migrate into (pkcs11:…)")
	}
	keys, err := keystore.Open(kms, caDir, os.Getenv(kmsPINEnv))
	if err != nil {
		return err
	}
	defer keys.Close()
	if args[0] == "list" {
		return listKeys(stdout, keys)
	}
	moved, err := keystore.Migrate(caDir, keys, remove)
	for _, m := range moved {
		what := "imported into"
		if m.Already {
			what = "already in"
		}
		file := "file kept"
		if m.Removed {
			file = "file removed"
		}
		fmt.Fprintf(stdout, "%-9s %s %s (%s: %s)\n", m.Name, what, m.Location, file, m.File)
	}
	if err != nil {
		return err
	}
	if len(moved) == 0 {
		return fmt.Errorf("no key files under %s", caDir)
	}
	fmt.Fprintf(stdout, "moved %d keys; start the server with --kms '%s'", len(moved), keystore.RedactKMS(kms))
	if !remove {
		fmt.Fprint(stdout, "; the key files are still in place: remove them (--remove-files) once the server runs on the token")
	}
	fmt.Fprintln(stdout)
	return nil
}

// listKeys prints each CA key's state and place.
func listKeys(w io.Writer, keys keystore.Store) error {
	for _, n := range keystore.Names {
		state := "present"
		if _, err := keys.Key(n); errors.Is(err, fs.ErrNotExist) {
			state = "made at the first serve"
		} else if err != nil {
			return err
		}
		fmt.Fprintf(w, "  %-9s %-24s %s\n", n, state, keys.Location(n))
	}
	return nil
}
