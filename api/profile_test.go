package api_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"testing"

	"github.com/smallstep/pkcs7"
	"google.golang.org/grpc/codes"
	"howett.net/plist"
	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/appleschema"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/policy"
	pb "github.com/smimeca/smimeca/proto/smimeca/v1"
)

// keyStore serves fixed escrow records (the Vault-backed path is tested end
// to end); each Load returns fresh copies, as the real store does.
type keyStore []policy.EscrowedKey

func (k keyStore) Load(context.Context, string) ([]policy.EscrowedKey, error) {
	out := make([]policy.EscrowedKey, len(k))
	for i, r := range k {
		r.KeyPKCS8 = append([]byte(nil), r.KeyPKCS8...)
		out[i] = r
	}
	return out, nil
}

func (k keyStore) LoadKey(ctx context.Context, user, sha256 string) (policy.EscrowedKey, error) {
	all, _ := k.Load(ctx, user)
	for _, r := range all {
		if r.SHA256 == sha256 {
			return r, nil
		}
	}
	return policy.EscrowedKey{}, policy.ErrNotFound
}

// The profile service gets a signed profile whose payloads only the
// device's identity key opens; inside, every payload is valid against
// Apple's schema and the PKCS#12 opens with the password beside it.
func TestRenderDeviceProfileIsSealedToTheDevice(t *testing.T) {
	mdm := testpki.NewIssuer(t)
	pool := x509.NewCertPool()
	pool.AddCert(mdm.Cert)
	is := testpki.NewIssuer(t)
	key := testpki.RSAKey(t, 2048, 0)
	cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	s := startServerWith(t, options{identityCAs: pool,
		keys: keyStore{{Escrowed: policy.CertificateMetadata(cert), CertDER: cert.Raw, KeyPKCS8: kder}}})
	ctx := context.Background()
	devKey := testpki.RSAKey(t, 2048, 1)
	ident := mdm.UserCert(t, devKey, testpki.CertOptions{EKU: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CommonName: "iphone-1"})
	if _, err := pb.NewDevicesClient(s.dial(t, "registrar")).RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: "alice@example.com", DeviceId: "iphone-1", IdentityCertificate: ident.Raw}); err != nil {
		t.Fatal(err)
	}
	settings := []byte("hostName: mail.example.com\nrequireSmime: true\nsmimeSigningEnabled: true\nsigningCertificateType: certificate\nencryptionCertificateType: certificate\n")
	profiles := pb.NewProfileBundlesClient(s.dial(t, "profile"))
	resp, err := profiles.RenderDeviceProfile(ctx, &pb.RenderDeviceProfileRequest{User: "alice@example.com", DeviceId: "iphone-1", Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	sd, err := pkcs7.Parse(resp.GetMobileconfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := sd.Verify(); err != nil {
		t.Fatalf("profile signature: %v", err)
	}
	if bytes.Contains(sd.Content, kder) || bytes.Contains(sd.Content, []byte("<key>Password</key>")) {
		t.Fatal("a key or a password is readable outside the envelope")
	}
	plain, err := appleschema.Decrypted(sd.Content, func(ct []byte) ([]byte, error) {
		p7, err := pkcs7.Parse(ct)
		if err != nil {
			return nil, err
		}
		return p7.Decrypt(ident, devKey)
	})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := appleschema.Dir()
	if err != nil {
		t.Fatal(err)
	}
	schema, err := appleschema.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range schema.Validate(plain) {
		t.Errorf("schema: %v", e)
	}
	payloads, _ := appleschema.Payloads(plain)
	p12 := payloads["com.apple.security.pkcs12"]
	if len(p12) != 1 || len(payloads["com.apple.security.scep"]) != 1 {
		t.Fatalf("payloads %v", payloads)
	}
	if _, c, err := pkcs12.Decode(p12[0]["PayloadContent"].([]byte), p12[0]["Password"].(string)); err != nil || !c.Equal(cert) {
		t.Fatalf("the PKCS#12 inside does not open: %v", err)
	}
	if resp.GetRecipientSha256() == "" || len(resp.GetEncryptionSha256()) != 1 {
		t.Errorf("response metadata %v", resp)
	}
	// The subscriber notice (S/MIME BR 4.12.1) is in the response and in
	// the profile the user sees.
	if resp.GetKeyEscrowNotice() != policy.KeyEscrowNotice || !bytes.Contains(sd.Content, []byte("held in escrow")) {
		t.Errorf("escrow notice %q; in the profile: %v", resp.GetKeyEscrowNotice(), bytes.Contains(sd.Content, []byte("held in escrow")))
	}
	// Another key cannot open it.
	var top map[string]any
	plist.Unmarshal(sd.Content, &top)
	p7, _ := pkcs7.Parse(top["EncryptedPayloadContent"].([]byte))
	if _, err := p7.Decrypt(ident, testpki.RSAKey(t, 2048, 2)); err == nil {
		t.Error("a foreign key opened the payloads")
	}
	// A device without an identity gets no profile with keys.
	if _, err := pb.NewDevicesClient(s.dial(t, "registrar")).RegisterDevice(ctx, &pb.RegisterDeviceRequest{User: "alice@example.com", DeviceId: "no-id"}); err != nil {
		t.Fatal(err)
	}
	_, err = profiles.RenderDeviceProfile(ctx, &pb.RenderDeviceProfileRequest{User: "alice@example.com", DeviceId: "no-id", Settings: settings})
	wantCode(t, err, codes.FailedPrecondition, "identity")
	_, err = profiles.RenderDeviceProfile(ctx, &pb.RenderDeviceProfileRequest{User: "alice@example.com", DeviceId: "iphone-1", Settings: []byte("accountName: x\n")})
	wantCode(t, err, codes.InvalidArgument, "hostName")
}
