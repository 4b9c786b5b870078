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

	"github.com/smallstep/certificates/db"

	"github.com/smimeca/smimeca/ca"
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

// openAuthority opens the CA on database with its keys in keys, creating on
// first start what is missing.
func openAuthority(cfg *serveConfig, keys ca.KeyStore, database db.AuthDB) (*ca.Authority, error) {
	var policyOIDs []string
	for _, o := range strings.Split(cfg.policyOIDs, ",") {
		if o = strings.TrimSpace(o); o != "" {
			policyOIDs = append(policyOIDs, o)
		}
	}
	return ca.Open(ca.Config{
		Dir: filepath.Join(cfg.dataDir, "ca"), IssuerKeyType: strings.ToUpper(cfg.issuerKeyType),
		BaseURL: cfg.certBaseURL, PolicyOIDs: policyOIDs, Keys: keys,
	}, database)
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
	database, err := ca.OpenDatabase(filepath.Join(cfg.dataDir, "db", "smimeca.db"))
	if err != nil {
		return err
	}
	defer database.Close()
	keys, err := ca.OpenKeyStore(cfg.kms, filepath.Join(cfg.dataDir, "ca"), os.Getenv(kmsPINEnv))
	if err != nil {
		return err
	}
	defer keys.Close()
	authority, err := openAuthority(cfg, keys, database.DB)
	if err != nil {
		return err
	}
	defer authority.Close()
	if _, err := ca.LoadOrCreateConnectorKey(keys); err != nil {
		return err
	}
	if _, err := authority.NewOCSPResponder(ca.DefaultOCSPValidity); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA in %s, keys in %s:\n", filepath.Join(cfg.dataDir, "ca"), ca.RedactKMS(cfg.kms))
	for _, n := range ca.KeyNames {
		state := "present"
		if _, err := keys.Key(n); errors.Is(err, fs.ErrNotExist) {
			state = "made at the first serve"
		} else if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "  %-9s %-24s %s\n", n, state, keys.Location(n))
	}
	fmt.Fprintf(stdout, "root fingerprint (SHA-256): %X\n", authority.Fingerprint())
	return nil
}
