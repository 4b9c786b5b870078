package policy_test

import (
	"context"
	"strings"
	"testing"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/policy"
)

func TestCheckText(t *testing.T) {
	for name, c := range map[string]struct {
		text string
		ok   bool
	}{
		"empty":            {"", true},
		"plain":            {"lost on the train, ticket 42", true},
		"accents":          {"gestohlen am Bahnhof, Müller", true},
		"exactly 512":      {strings.Repeat("a", 512), true},
		"513 bytes":        {strings.Repeat("a", 513), false},
		"512 runes, >512B": {strings.Repeat("é", 300), false},
		"newline":          {"lost\n{\"action\":\"forged\"}", false},
		"escape":           {"lost\x1b[2J", false},
		"NUL":              {"lost\x00", false},
		"invalid UTF-8":    {"lost\xff", false},
	} {
		err := policy.CheckText("the reason", c.text)
		if c.ok && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !c.ok {
			if re, ok := policy.IsReject(err); !ok || re.Reason != policy.ReasonBadText {
				t.Errorf("%s: err = %v, want bad-text", name, err)
			}
		}
	}
}

// Every free-text reason a caller can store is bounded before anything
// changes.
func TestReasonsAreBounded(t *testing.T) {
	v := newEnv(t, nil)
	ctx := context.Background()
	crt := v.enrol("a@example.com", "d", 0)
	long := strings.Repeat("x", policy.MaxTextBytes+1)
	_, err := v.e.RetireDevice(ctx, "a@example.com", "d", long)
	wantReason(t, err, policy.ReasonBadText)
	_, err = v.e.RevokeDevice(ctx, "a@example.com", "d", ca.ReasonKeyCompromise, long)
	wantReason(t, err, policy.ReasonBadText)
	_, err = v.e.RevokeCertificate(ctx, crt.SerialNumber.String(), ca.ReasonKeyCompromise, "a\nb")
	wantReason(t, err, policy.ReasonBadText)
	if rev, err := v.ca.IsRevoked(crt.SerialNumber.String()); err != nil || rev {
		t.Fatalf("a refused revocation revoked: %v %v", rev, err)
	}
	if d, err := v.e.Device(ctx, "a@example.com", "d"); err != nil || d.State != policy.DeviceActive {
		t.Fatalf("a refused retirement retired: %+v %v", d, err)
	}
}
