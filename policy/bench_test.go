package policy_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
)

// BenchmarkRenewalByHistory renews one device's certificate again and
// again, on a fresh device and on one that already renewed 1 000 times: a
// renewal's cost (sign, commit with the superseded predecessor, inventory
// row) must not grow with the device's history. Compare the two ns/op.
func BenchmarkRenewalByHistory(b *testing.B) {
	for _, history := range []int{0, 1000} {
		b.Run(fmt.Sprintf("history=%d", history), func(b *testing.B) {
			v := newEnv(b, nil)
			ctx := context.Background()
			key := testpki.RSAKey(b, 2048, 0)
			csr := testpki.CSR(b, key, nil)
			if _, err := v.e.RegisterDevice(ctx, "alice@example.com", "d", nil); err != nil {
				b.Fatal(err)
			}
			ch, err := v.e.CreateChallenge(ctx, "alice@example.com", "d", 0)
			if err != nil {
				b.Fatal(err)
			}
			chain, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: ch.Secret})
			if err != nil {
				b.Fatal(err)
			}
			cur := chain[0]
			renew := func() {
				chain, err := v.e.Enroll(ctx, policy.Request{Kind: policy.Renewal, CSR: csr, Signer: cur})
				if err != nil {
					b.Fatal(err)
				}
				cur = chain[0]
			}
			for i := 0; i < history; i++ {
				renew()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				renew()
			}
		})
	}
}
