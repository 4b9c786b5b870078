package scep

import (
	"testing"

	smallscep "github.com/smallstep/scep"

	"github.com/smimeca/smimeca/policy"
)

// Every refusal's SCEP failInfo, pinned: a renewal that is not authorised
// is badMessageCheck (the signer's certificate does not authorise it, RFC
// 8894 3.3.2.2), every other refusal badRequest.
func TestFailInfoForEveryReason(t *testing.T) {
	for _, r := range policy.Reasons() {
		want := smallscep.BadRequest
		if r == policy.ReasonRenewalNotAuthorized {
			want = smallscep.BadMessageCheck
		}
		if got := failInfoFor(r); got != want {
			t.Errorf("%s: failInfo %s, want %s", r, got, want)
		}
	}
}
