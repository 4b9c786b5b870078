package test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/smimeca/smimeca/internal/datastore"
	"github.com/smimeca/smimeca/internal/testing/certlint"
)

// lintIssued runs zlint (certlint: the CA/B Forum S/MIME BR and RFC 5280
// lints) on every certificate a stopped server's data directory holds:
// each one its CA issued (the CA database's certificate table) and the
// CA's own certificates (root, issuing CA, SCEP RA, profile and OCSP
// signers), and on its last CRL and the root's CRL. Every end-to-end test's server passes through it.
func lintIssued(t testing.TB, dataDir, dsn string) {
	t.Helper()
	dbPath := filepath.Join(dataDir, "db", "smimeca.db")
	var database *datastore.Database
	var err error
	if dsn != "" {
		database, err = datastore.OpenPostgres(dsn)
	} else if _, statErr := os.Stat(dbPath); statErr != nil {
		return // the server never started
	} else {
		database, err = datastore.OpenBolt(dbPath)
	}
	if err != nil {
		t.Errorf("lint: %v", err)
		return
	}
	defer database.Close()
	entries, err := database.DB.List([]byte("x509_certs"))
	if err != nil {
		t.Errorf("lint: list issued certificates: %v", err)
		return
	}
	for _, e := range entries {
		certlint.Check(t, "issued certificate "+string(e.Key), e.Value)
	}
	if crl, err := database.DB.GetCRL(); err == nil && crl != nil {
		certlint.CheckCRL(t, "CRL", crl.DER)
	}
	if der, err := os.ReadFile(filepath.Join(dataDir, "ca", "root_ca.crl")); err == nil {
		certlint.CheckCRL(t, "root CRL", der)
	}
	pems, _ := filepath.Glob(filepath.Join(dataDir, "ca", "*.crt"))
	for _, p := range pems {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("lint: %v", err)
			continue
		}
		for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
			if _, err := x509.ParseCertificate(blk.Bytes); err == nil {
				certlint.Check(t, filepath.Base(p), blk.Bytes)
			}
		}
	}
}
