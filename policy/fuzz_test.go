package policy_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/mail"
	"strings"
	"testing"

	scepx509 "github.com/smallstep/scep/x509util"

	"github.com/smimeca/smimeca/policy"
)

// FuzzNormalizeEmail checks the one form users are stored and compared in:
// whatever NormalizeEmail accepts is a bare, lower-case ASCII addr-spec (so
// that it can be a certificate's rfc822Name, an IA5String), normalising it
// again changes nothing, and refusals are ReasonBadUser.
func FuzzNormalizeEmail(f *testing.F) {
	for _, s := range []string{"alice@example.com", " Alice@Example.COM ", "Bob <bob@example.com>",
		"jürgen@example.com", "a@b", "\"quoted local\"@example.com", "a@[192.0.2.1]", "", "@", "a@@b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := policy.NormalizeEmail(in)
		if err != nil {
			if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonBadUser {
				t.Fatalf("%q: %v, want ReasonBadUser", in, err)
			}
			return
		}
		for i := 0; i < len(out); i++ {
			if out[i] >= 0x80 {
				t.Fatalf("%q normalised to non-ASCII %q", in, out)
			}
		}
		if out != strings.ToLower(out) {
			t.Fatalf("%q normalised to %q, not lower-case", in, out)
		}
		if again, err := policy.NormalizeEmail(out); err != nil || again != out {
			t.Fatalf("%q → %q → %q, %v: not idempotent", in, out, again, err)
		}
		if a, err := mail.ParseAddress(out); err != nil || a.Address != out {
			t.Fatalf("%q → %q is not a bare addr-spec: %v", in, out, err)
		}
	})
}

// FuzzCSR feeds any bytes, as the decrypted pkcsPKIEnvelope of a PKCSReq,
// to what parses it (crypto/x509's CSR parser, smallstep/scep's
// challengePassword reader) and to the enrolment rules: no panic, and every
// refusal is a *RejectError naming a rule (nothing is issued: the
// challenge is unknown).
func FuzzCSR(f *testing.F) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	for _, tmpl := range []*scepx509.CertificateRequest{
		{CertificateRequest: x509.CertificateRequest{Subject: pkix.Name{CommonName: "d"}}, ChallengePassword: "secret"},
		{CertificateRequest: x509.CertificateRequest{EmailAddresses: []string{"a@example.com"}, DNSNames: []string{"x"}}},
	} {
		der, err := scepx509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	v := newEnv(f, nil)
	f.Fuzz(func(t *testing.T, der []byte) {
		challenge, _ := scepx509.ParseChallengePassword(der)
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			return
		}
		_, err = v.e.Enroll(context.Background(), policy.Request{Kind: policy.Initial, CSR: csr, Challenge: challenge, TransactionID: "t"})
		if _, ok := policy.IsReject(err); !ok {
			t.Fatalf("not a refusal: %v", err)
		}
	})
}
