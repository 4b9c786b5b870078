package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
)

// rootCmd runs the root ceremonies: the only commands that load the
// offline root key (serve never does).
func rootCmd(args []string, stdout io.Writer) error {
	const use = "usage: smimeca root (crl [--validity 365d] | reissue-issuing [--lifetime 3650d] | reissue-ra) [--data DIR] [--kms URI]"
	if len(args) == 0 || (args[0] != "crl" && args[0] != "reissue-issuing" && args[0] != "reissue-ra") {
		return usagef(use)
	}
	var dataDir, kms string
	validity, lifetime := ca.DefaultRootCRLValidity, 10*365*24*time.Hour
	f := newFlags("root " + args[0])
	f.str(&dataDir, "data", "SMIMECA_DATA", "data", "the CA's data directory (its ca/ holds the root certificate; what the ceremony signs is written there)")
	f.str(&kms, "kms", "SMIMECA_KMS", keystore.KMSSoft, "where the root key is: softkms (DATA/ca/root_ca.key, or a copy brought back for the ceremony) or a pkcs11: URI (PIN also from $"+kmsPINEnv+")")
	duration := func(p *time.Duration) func(string) error {
		return func(s string) error {
			d, err := parseDuration(s)
			*p = d
			return err
		}
	}
	switch args[0] {
	case "crl":
		f.fs.Func("validity", "how long the root CRL is valid (default 365d, at most 366d)", duration(&validity))
	case "reissue-issuing":
		f.fs.Func("lifetime", "how long the re-issued issuing CA certificate is valid (default 3650d; never past the root)", duration(&lifetime))
	}
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	if validity <= 0 || validity > ca.MaxRootCRLValidity {
		return usagef("--validity %s: between 1h and 366d", validity)
	}
	dir := filepath.Join(dataDir, "ca")
	keys, err := keystore.Open(kms, dir, os.Getenv(kmsPINEnv))
	if err != nil {
		return err
	}
	defer keys.Close()
	if args[0] == "reissue-ra" {
		crt, err := ca.ReissueRA(dir, keys, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "made a new SCEP RA key and certificate %s, serial %X, valid until %s, in %s; copy them to every node's DATA/ca (the key too, unless it is in a shared token) and restart them\n",
			crt.Subject.CommonName, crt.SerialNumber, crt.NotAfter.UTC().Format(time.RFC3339), dir)
		return nil
	}
	if args[0] == "reissue-issuing" {
		crt, err := ca.ReissueIntermediate(dir, keys, lifetime, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "re-issued %s (same key), serial %X, valid until %s, in %s; copy it to every node's DATA/ca and restart them\n",
			crt.Subject.CommonName, crt.SerialNumber, crt.NotAfter.UTC().Format(time.RFC3339), dir)
		return nil
	}
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
