package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smimeca/smimeca/ca"
)

// rootCmd runs the root ceremonies: the only commands that load the
// offline root key (serve never does).
func rootCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "crl" {
		return usagef("usage: smimeca root crl [--data DIR] [--kms URI] [--validity 365d]")
	}
	var dataDir, kms string
	validity := ca.DefaultRootCRLValidity
	f := newFlags("root crl")
	f.str(&dataDir, "data", "SMIMECA_DATA", "data", "the CA's data directory (its ca/ holds the root certificate; the CRL is written there)")
	f.str(&kms, "kms", "SMIMECA_KMS", ca.KMSSoft, "where the root key is: softkms (DATA/ca/root_ca.key, or a copy brought back for the ceremony) or a pkcs11: URI (PIN also from $"+kmsPINEnv+")")
	f.fs.Func("validity", "how long the root CRL is valid (default 365d, at most 366d)", func(s string) error {
		d, err := parseDuration(s)
		validity = d
		return err
	})
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	if validity <= 0 || validity > ca.MaxRootCRLValidity {
		return usagef("--validity %s: between 1h and 366d", validity)
	}
	dir := filepath.Join(dataDir, "ca")
	keys, err := ca.OpenKeyStore(kms, dir, os.Getenv(kmsPINEnv))
	if err != nil {
		return err
	}
	defer keys.Close()
	root, key, err := ca.LoadRoot(dir, keys)
	if err != nil {
		return err
	}
	now := time.Now()
	if err := ca.SignRootCRL(dir, root, key, validity, now); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed the root CRL (%s), valid until %s; serving nodes read it from %s (copy it to each node's DATA/ca)\n",
		root.Subject.CommonName, now.Add(validity).UTC().Format(time.RFC3339), dir)
	return nil
}
