// Package certlint lints what smimeca issues — certificates and CRLs —
// with zlint's CA/Browser Forum S/MIME Baseline Requirements and RFC 5280
// lints, for the tests: an error or fatal result fails, and so does a
// warning that is not listed in Accepted with the reason it is accepted.
package certlint

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// Accepted maps the zlint warnings smimeca's certificates are known to
// draw to the reason each is accepted. README's "Certificate profile"
// section lists the same.
var Accepted = map[string]string{
	"w_smime_aia_contains_internal_names": "the tests' servers and `make run` listen on loopback, so the AIA URLs name 127.0.0.1 or a test host; a deployment sets --public-url to its public name (serve warns when it is not set beyond loopback)",
}

// registry holds the lints smimeca answers to.
var registry = func() lint.Registry {
	r, err := lint.GlobalRegistry().Filter(lint.FilterOptions{
		IncludeSources: lint.SourceList{lint.CABFSMIMEBaselineRequirements, lint.RFC5280},
	})
	if err != nil {
		panic(err)
	}
	return r
}()

// Finding is one lint result worse than a pass or a notice.
type Finding struct {
	Lint    string
	Status  lint.LintStatus
	Details string
}

// String says the status, the lint and its details.
func (f Finding) String() string {
	return fmt.Sprintf("%s %s: %s", f.Status, f.Lint, f.Details)
}

// Certificate lints the DER certificate and returns its warnings, errors
// and fatal results, sorted by lint name.
func Certificate(der []byte) ([]Finding, error) {
	crt, err := zx509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certlint: parse certificate: %w", err)
	}
	return findings(zlint.LintCertificateEx(crt, registry)), nil
}

// CRL lints the DER certificate revocation list like Certificate.
func CRL(der []byte) ([]Finding, error) {
	crl, err := zx509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("certlint: parse CRL: %w", err)
	}
	return findings(zlint.LintRevocationListEx(crl, registry)), nil
}

func findings(rs *zlint.ResultSet) []Finding {
	var out []Finding
	for name, r := range rs.Results {
		if r.Status >= lint.Warn {
			out = append(out, Finding{Lint: name, Status: r.Status, Details: r.Details})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Lint < out[j].Lint })
	return out
}

// Unaccepted returns the findings that fail: every error and fatal result
// and every warning not in Accepted.
func Unaccepted(fs []Finding) []Finding {
	var out []Finding
	for _, f := range fs {
		if _, ok := Accepted[f.Lint]; f.Status > lint.Warn || !ok {
			out = append(out, f)
		}
	}
	return out
}

// Check lints a DER certificate and fails t on every
// unaccepted finding, naming what was linted.
func Check(t testing.TB, what string, der []byte) {
	t.Helper()
	fs, err := Certificate(der)
	report(t, what, fs, err)
}

// CheckCRL is Check for a DER CRL.
func CheckCRL(t testing.TB, what string, der []byte) {
	t.Helper()
	fs, err := CRL(der)
	report(t, what, fs, err)
}

// report fails t when what could not be parsed (err) or has unaccepted
// findings.
func report(t testing.TB, what string, fs []Finding, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if bad := Unaccepted(fs); len(bad) > 0 {
		var b strings.Builder
		for _, f := range bad {
			b.WriteString("\n\t" + f.String())
		}
		t.Errorf("zlint: %s:%s", what, b.String())
	}
}
