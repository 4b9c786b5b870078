package policy_test

import (
	"context"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/auditlog"
)

// BenchmarkBundleSteps is what one CMS bundle of a user with 4 escrowed
// certificates costs, step by step, against the real Vault and a bbolt
// store (go test -bench BundleSteps ./policy): the whole call (with an
// in-memory auditor), then each step alone — the escrow read (Vault KV and
// Transit), re-wrapping the 4 PKCS#12 files, the 5 envelopes (4 passwords,
// 1 challenge) to the device, the fresh one-time challenge (a bbolt write)
// and the audit record (the JSON-lines file, fsynced). The steps' sum
// against the whole shows what is not the floor.
func BenchmarkBundleSteps(b *testing.B) {
	v := newBundleEnv(b)
	ctx := context.Background()
	const user = "a@example.com"
	escrowMore(b, v, user, 3)
	req := policy.BundleRequest{User: user, Device: "d", Delivery: policy.DeliverCMS}
	b.Run("whole", func(b *testing.B) {
		for b.Loop() {
			if bn, err := v.bundles.Bundle(ctx, req); err != nil || len(bn.Encryption) != 4 {
				b.Fatal(err)
			}
		}
	})
	var recs []policy.EscrowedKey
	b.Run("escrow-read", func(b *testing.B) {
		for b.Loop() {
			var err error
			if recs, err = v.keys.Load(ctx, user); err != nil || len(recs) != 4 {
				b.Fatal(err)
			}
		}
	})
	keys := make([]pfxconnector.DERKey, len(recs))
	for i, r := range recs {
		keys[i] = pfxconnector.DERKey{CertDER: r.CertDER, KeyPKCS8: r.KeyPKCS8, ChainDER: r.ChainDER}
	}
	b.Run("rewrap-4", func(b *testing.B) {
		for b.Loop() {
			pfxconnector.RewrapAll(keys, pfxconnector.Legacy)
		}
	})
	b.Run("envelopes-5", func(b *testing.B) {
		for b.Loop() {
			for range 5 {
				if _, err := pfxconnector.Envelope([]byte("a 24-character password"), v.devCert, pfxconnector.PKCS1v15); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("challenge", func(b *testing.B) {
		for b.Loop() {
			if _, err := v.enroll.CreateChallenge(ctx, user, "d", 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("audit-fsync", func(b *testing.B) {
		f, err := auditlog.Open(filepath.Join(b.TempDir(), "audit.log"), slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		ev := policy.Event{Action: policy.ActionKeyRelease, User: user, Device: "d", SHA256: []string{"x", "y", "z", "w"}, Result: "ok"}
		for b.Loop() {
			if err := f.Record(ctx, ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDeviceAssets is what Declarative Device Management costs beside
// the bundle it replaces, for the same user with 4 escrowed certificates
// (go test -bench DeviceAssets ./policy), real Vault, bbolt: the CMS bundle
// (the peer), rendering the declarations' assets (every key decrypted and
// re-wrapped to hash its document, nothing released), one device fetch of
// an identity asset (one key decrypted, re-wrapped, audited), and the
// device's whole delivery: the rendering, 4 identity fetches and the SCEP
// fetch (which arms the challenge).
func BenchmarkDeviceAssets(b *testing.B) {
	v := newBundleEnv(b)
	ctx := context.Background()
	const user = "a@example.com"
	escrowMore(b, v, user, 3)
	bundles := assetBundles(v, 1)
	render := func() *policy.AssetSet {
		set, err := bundles.DeviceAssets(ctx, policy.AssetRequest{User: user, Device: "d"})
		if err != nil || len(set.Assets) != 5 {
			b.Fatal(err)
		}
		for i := range set.Assets {
			if _, err := testDoc(&set.Assets[i]); err != nil {
				b.Fatal(err)
			}
		}
		set.Clear()
		return set
	}
	set := render()
	fetch := func(a policy.Asset) {
		if _, err := bundles.ReleaseAsset(ctx, policy.AssetFetch{User: user, Device: "d", Kind: a.Kind, Ref: a.Ref, Client: v.devCert}, testDoc); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("bundle-cms", func(b *testing.B) {
		for b.Loop() {
			if _, err := bundles.Bundle(ctx, policy.BundleRequest{User: user, Device: "d", Delivery: policy.DeliverCMS}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ddm-render", func(b *testing.B) {
		for b.Loop() {
			render()
		}
	})
	b.Run("ddm-fetch-identity", func(b *testing.B) {
		for b.Loop() {
			fetch(set.Assets[1])
		}
	})
	b.Run("ddm-delivery", func(b *testing.B) {
		for b.Loop() {
			render()
			for _, a := range set.Assets {
				fetch(a)
			}
		}
	})
}

// escrowMore escrows n more RSA-2048 certificates for user.
func escrowMore(b *testing.B, v *bundleEnv, user string, n int) {
	b.Helper()
	for i := 1; i <= n; i++ {
		key := testpki.RSAKey(b, 2048, 10+i)
		cert := v.mdm.UserCert(b, key, testpki.CertOptions{Emails: []string{user}})
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		if _, _, err := v.keys.Put(context.Background(), user, policy.EscrowedKey{Escrowed: policy.CertificateMetadata(cert), CertDER: cert.Raw, KeyPKCS8: kder}); err != nil {
			b.Fatal(err)
		}
	}
}
