package policy_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"log"
	"os"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/datastore"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/nosqlstore"
)

// Enrolling a device, as the SCEP endpoint does it: the MDM registers the
// device, a one-time challenge is bound to (user, device), and the device's
// PKCSReq is decided by the rules and, when allowed, signed by the CA. The
// certificate's names come from the binding, never from the CSR.
func ExampleEnrollment_Enroll() {
	ctx := context.Background()
	database, err := datastore.OpenBolt("data/db/smimeca.db")
	if err != nil {
		log.Fatal(err)
	}
	authority, err := ca.Open(ca.Config{Dir: "data/ca", BaseURL: "http://ca.example.com"}, database.DB)
	if err != nil {
		log.Fatal(err)
	}
	store, err := nosqlstore.New(database.DB.DB)
	if err != nil {
		log.Fatal(err)
	}
	domains, _ := policy.NewDomains([]string{"example.com"})
	enrollment, err := policy.New(authority, store, policy.Config{Domains: domains})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := enrollment.RegisterDevice(ctx, "alice@example.com", "iphone-1", nil); err != nil {
		log.Fatal(err)
	}
	ch, err := enrollment.CreateChallenge(ctx, "alice@example.com", "iphone-1", 0)
	if err != nil {
		log.Fatal(err)
	}
	var csr *x509.CertificateRequest // the device's, decrypted from its PKCSReq by the scep package
	chain, err := enrollment.Enroll(ctx, policy.Request{Kind: policy.Initial, CSR: csr, Challenge: ch.Secret, TransactionID: "tx-1"})
	if re, ok := policy.IsReject(err); ok {
		fmt.Println("refused:", re.Reason) // e.g. challenge-used, name-not-bound: the SCEP failInfo follows from it
		return
	}
	fmt.Println(chain[0].EmailAddresses) // [alice@example.com]
}

// Importing a PFX into escrow: the import rules (key matches, can
// encrypt, names the user, …) are checked before anything is written to
// Vault, and a second import of the same certificate is a duplicate.
func ExampleEscrow_Import() {
	ctx := context.Background()
	client, err := escrow.Connect(ctx, escrow.VaultConfig{Address: "https://vault.example.com:8200", TokenFile: "/etc/smimeca/vault-token"})
	if err != nil {
		log.Fatal(err)
	}
	keys := keystore.Files("data/ca")
	connector, err := pfxconnector.LoadOrCreateKey(keys)
	if err != nil {
		log.Fatal(err)
	}
	domains, _ := policy.NewDomains([]string{"example.com"})
	esc := policy.NewEscrow(escrow.New(client.Logical(), escrow.Config{}), connector, domains)
	pfx, _ := os.ReadFile("alice-2023.pfx")
	res, err := esc.Import(ctx, policy.ImportRequest{User: "alice@example.com", PFX: pfx, Password: "from the administrator"})
	if re, ok := policy.IsReject(err); ok {
		fmt.Println("refused:", re.Reason) // wrong-password, user-mismatch, cannot-encrypt, …
		return
	}
	fmt.Println(res.Metadata.SHA256, res.Duplicate)
}

// Fetching a bundle for the profile service: every escrowed key of the
// user, re-wrapped for this delivery, and the device's one-time challenge,
// each encrypted to the identity registered for the device; the caller
// cannot open any of them.
func ExampleBundles_Bundle() {
	ctx := context.Background()
	var (
		enrollment *policy.Services // as in ExampleEnrollment_Enroll, with Config.DeviceIdentityCAs
		keys       policy.KeyStore  // *escrow.Store, as in ExampleEscrow_Import
		authority  *ca.Authority
	)
	bundles := policy.NewBundles(enrollment, keys, authority, "https://ca.example.com/scep", nil)
	b, err := bundles.Bundle(ctx, policy.BundleRequest{User: "alice@example.com", Device: "iphone-1", Delivery: policy.DeliverCMS})
	if err != nil {
		log.Fatal(err) // no-identity-certificate, identity-on-hold, device-retired, …
	}
	fmt.Println(len(b.Signing.EnvelopedChallenge) > 0, len(b.Encryption))
	for _, e := range b.Encryption {
		_ = e.EnvelopedPassword // CMS EnvelopedData to b.Recipient: only the device opens it
	}
}
