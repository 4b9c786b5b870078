package policy_test

import (
	"net/mail"
	"strings"
	"testing"

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
