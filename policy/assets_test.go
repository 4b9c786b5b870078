package policy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"testing"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
)

// testDoc stands for an asset's document (the api renders Apple's): the
// secrets and the file, so that equal documents mean equal secrets.
func testDoc(a *policy.Asset) ([]byte, error) {
	if a.Kind == policy.AssetSCEP {
		return json.Marshal([]string{a.Signing.SCEPURL, a.Signing.RFC822Name, a.Signing.Challenge})
	}
	return json.Marshal(struct {
		P string
		F []byte
	}{a.Identity.Password, a.Identity.PFX})
}

func assetBundles(v *bundleEnv, secret byte) *policy.Bundles {
	return policy.NewBundles(v.enroll, v.keys, v.ca, "http://x/scep", v.audit, policy.WithAssetSecret(bytes.Repeat([]byte{secret}, 32)))
}

// A device's assets come out of a fetch byte for byte as they were hashed
// at rendering, only to the TLS client holding the device's registered
// identity: the identity asset opens into the escrowed key and is audited
// as a release to that identity; the SCEP asset arms the very challenge
// it carries, once per fetch, for this device only. Another certificate
// of the same MDM CA, or none, gets nothing and is audited.
func TestDeviceAssetsOnlyToTheDevice(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	b := assetBundles(v, 1)
	set, err := b.DeviceAssets(ctx, policy.AssetRequest{User: "A@example.com", Device: "d", Generation: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Assets) != 2 || set.Assets[0].Kind != policy.AssetSCEP || set.Assets[1].Kind != policy.AssetIdentity || set.Assets[0].Ref != "0.3" {
		t.Fatalf("assets %+v", set.Assets)
	}
	rendered := map[policy.AssetKind][]byte{}
	for i := range set.Assets {
		rendered[set.Assets[i].Kind], _ = testDoc(&set.Assets[i])
	}
	idRef := set.Assets[1].Ref
	if idRef != hex.EncodeToString(sha256Sum(v.escrow.Raw)) || set.EscrowNotice != policy.KeyEscrowNotice {
		t.Errorf("identity asset ref %s, notice %q", idRef, set.EscrowNotice)
	}
	ev := v.audit.last(policy.ActionAssetsRender)
	if ev.Result != "ok" || len(ev.SHA256) != 1 || ev.SHA256[0] != idRef || ev.Recipient != hex.EncodeToString(sha256Sum(v.devCert.Raw)) {
		t.Errorf("render audit %+v", ev)
	}
	set.Clear()
	if set.Assets[1].Identity.Password != "" || set.Assets[0].Signing.Challenge != "" {
		t.Error("Clear left a secret")
	}

	fetch := func(kind policy.AssetKind, ref string, client *x509.Certificate) ([]byte, error) {
		return b.ReleaseAsset(ctx, policy.AssetFetch{User: "a@example.com", Device: "d", Kind: kind, Ref: ref, Client: client}, testDoc)
	}
	doc, err := fetch(policy.AssetIdentity, idRef, v.devCert)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc, rendered[policy.AssetIdentity]) {
		t.Fatal("the fetched identity asset is not the one whose hash was rendered")
	}
	var id struct {
		P string
		F []byte
	}
	_ = json.Unmarshal(doc, &id)
	if k, c, err := pkcs12.Decode(id.F, id.P); err != nil || !c.Equal(v.escrow) || k == nil {
		t.Fatalf("the identity asset does not open into the escrowed key: %v", err)
	}
	rel := v.audit.last(policy.ActionKeyRelease)
	if rel.Result != "ok" || rel.Recipient != hex.EncodeToString(sha256Sum(v.devCert.Raw)) || len(rel.SHA256) != 1 || rel.SHA256[0] != idRef {
		t.Errorf("release audit %+v", rel)
	}

	doc, err = fetch(policy.AssetSCEP, "0.3", v.devCert)
	if err != nil || !bytes.Equal(doc, rendered[policy.AssetSCEP]) {
		t.Fatalf("SCEP asset: %v, same as rendered %v", err, bytes.Equal(doc, rendered[policy.AssetSCEP]))
	}
	var scep []string
	_ = json.Unmarshal(doc, &scep)
	chain, err := v.enroll.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 5), nil), Challenge: scep[2]})
	if err != nil {
		t.Fatalf("the asset's challenge does not enrol: %v", err)
	}
	if chain[0].EmailAddresses[0] != "a@example.com" {
		t.Errorf("enrolled %v", chain[0].EmailAddresses)
	}
	if _, err := v.enroll.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 6), nil), Challenge: scep[2]}); err == nil {
		t.Error("the asset's challenge enrolled twice from one fetch")
	}
	// Fetched again, the used revision is the same document, not armed
	// again: one-time still.
	if again, err := fetch(policy.AssetSCEP, "0.3", v.devCert); err != nil || !bytes.Equal(again, doc) {
		t.Fatalf("a second fetch: %v, same document %v", err, bytes.Equal(again, doc))
	}
	if _, err := v.enroll.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: testpki.CSR(t, testpki.RSAKey(t, 2048, 6), nil), Challenge: scep[2]}); err == nil {
		t.Error("a second fetch armed the used challenge again")
	}
	if ev := v.audit.last(policy.ActionChallengeCreate); ev.Result != "refused" {
		t.Errorf("the refused re-arming is not audited: %+v", ev)
	}
	// Another revision is another challenge.
	other, _ := fetch(policy.AssetSCEP, "0.4", v.devCert)
	if bytes.Equal(other, doc) {
		t.Error("two signing revisions share a challenge")
	}

	// Someone else: another identity of the same MDM CA, none, or the
	// right identity for another user's path.
	stranger := v.mdm.UserCert(t, testpki.RSAKey(t, 2048, 7), testpki.CertOptions{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CommonName: "d"})
	for name, try := range map[string]func() ([]byte, error){
		"other identity": func() ([]byte, error) { return fetch(policy.AssetIdentity, idRef, stranger) },
		"no certificate": func() ([]byte, error) { return fetch(policy.AssetIdentity, idRef, nil) },
		"other scep":     func() ([]byte, error) { return fetch(policy.AssetSCEP, "0.3", stranger) },
		"other user": func() ([]byte, error) {
			return b.ReleaseAsset(ctx, policy.AssetFetch{User: "b@example.com", Device: "d", Kind: policy.AssetIdentity, Ref: idRef, Client: v.devCert}, testDoc)
		},
	} {
		before := len(v.audit.events)
		out, err := try()
		wantReason(t, err, policy.ReasonNotDeviceIdentity)
		if out != nil {
			t.Errorf("%s: got a document", name)
		}
		got := v.audit.last(policy.ActionAssetRefused)
		if len(v.audit.events) == before || got.Result != "refused" {
			t.Errorf("%s: refusal not audited: %+v", name, got)
		}
		if name == "other identity" && got.Recipient != hex.EncodeToString(sha256Sum(stranger.Raw)) {
			t.Errorf("the refusal names %q, not the presented certificate", got.Recipient)
		}
	}
	_, err = fetch(policy.AssetIdentity, "00", v.devCert)
	wantReason(t, err, policy.ReasonBadAsset)
	_, err = fetch(policy.AssetIdentity, hex.EncodeToString(sha256Sum([]byte("gone"))), v.devCert)
	wantReason(t, err, policy.ReasonNotEscrowed)
	_, err = fetch(policy.AssetSCEP, "../x", v.devCert)
	wantReason(t, err, policy.ReasonBadAsset)
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

// Assets are bound to the installation's secret and to the device's
// identity: another secret, or a rekeyed device, gives other documents
// (and so other hashes: the device fetches again). Without a secret there
// are no assets; without an audit there is no identity asset.
func TestDeviceAssetsAreBound(t *testing.T) {
	v := newBundleEnv(t)
	ctx := context.Background()
	docs := func(b *policy.Bundles) (scep, id []byte) {
		t.Helper()
		set, err := b.DeviceAssets(ctx, policy.AssetRequest{User: "a@example.com", Device: "d"})
		if err != nil {
			t.Fatal(err)
		}
		defer set.Clear()
		scep, _ = testDoc(&set.Assets[0])
		id, _ = testDoc(&set.Assets[1])
		return scep, id
	}
	s1, i1 := docs(assetBundles(v, 1))
	s1b, i1b := docs(assetBundles(v, 1))
	s2, i2 := docs(assetBundles(v, 2))
	if !bytes.Equal(s1, s1b) || !bytes.Equal(i1, i1b) {
		t.Error("two renderings with one secret differ")
	}
	if bytes.Equal(s1, s2) || bytes.Equal(i1, i2) {
		t.Error("another secret gave the same assets")
	}
	newID := v.mdm.UserCert(t, testpki.RSAKey(t, 2048, 8), testpki.CertOptions{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CommonName: "d"})
	if _, err := v.enroll.RekeyDevice(ctx, "a@example.com", "d", newID.Raw); err != nil {
		t.Fatal(err)
	}
	if _, err := v.enroll.ConfirmIdentity(ctx, "a@example.com", "d"); err != nil {
		t.Fatal(err)
	}
	s3, i3 := docs(assetBundles(v, 1))
	if bytes.Equal(s1, s3) || bytes.Equal(i1, i3) {
		t.Error("a new device identity kept the old assets")
	}
	if _, err := policy.NewBundles(v.enroll, v.keys, v.ca, "http://x/scep", v.audit).DeviceAssets(ctx, policy.AssetRequest{User: "a@example.com", Device: "d"}); err == nil {
		t.Error("assets without a secret")
	}
	v.audit.failRecord(context.DeadlineExceeded)
	set, _ := assetBundles(v, 1).DeviceAssets(ctx, policy.AssetRequest{User: "a@example.com", Device: "d"})
	if doc, err := assetBundles(v, 1).ReleaseAsset(ctx, policy.AssetFetch{User: "a@example.com", Device: "d", Kind: policy.AssetIdentity,
		Ref: set.Assets[1].Ref, Client: newID}, testDoc); err == nil || doc != nil {
		t.Error("an identity asset left without its audit")
	}
}
