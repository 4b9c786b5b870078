package profile_test

import (
	"bytes"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"howett.net/plist"

	"github.com/smimeca/smimeca/ca"
	"github.com/smimeca/smimeca/internal/testing/appleschema"
	"github.com/smimeca/smimeca/internal/testing/testpki"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/profile"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func schema(t *testing.T) *appleschema.Schema {
	t.Helper()
	dir, err := appleschema.Dir()
	if err != nil {
		t.Fatal(err)
	}
	s, err := appleschema.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type fixture struct {
	ca      *testpki.CA
	bundle  profile.Bundle
	secrets []string // the PKCS#12 passwords
}

// newFixture builds a bundle with three re-wrapped encryption identities,
// the middle one current. Thumbprints are fixed so golden files are stable.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	c := testpki.NewCA(t, ca.KeyTypeEC)
	is := testpki.NewIssuer(t)
	f := &fixture{ca: c}
	sum := sha1.Sum(c.Intermediate().Raw)
	f.bundle = profile.Bundle{
		User: "alice@example.com", Device: "iphone-1",
		SCEP: profile.SCEPRef{URL: "https://ca.example.com/scep", Challenge: "one-time-challenge", CommonName: "alice@example.com",
			RFC822Name: "alice@example.com", KeySize: 2048, KeyType: "RSA", AppleKeyUsage: profile.AppleKeyUsage(x509.KeyUsageDigitalSignature), CAFingerprint: sum[:]},
		Root: c.Root(), Intermediate: c.Intermediate(),
	}
	for i := 0; i < 3; i++ {
		key := testpki.RSAKey(t, 2048, i)
		cert := is.UserCert(t, key, testpki.CertOptions{Emails: []string{"alice@example.com"}, NotAfter: time.Now().Add(time.Duration(i+1) * 24 * time.Hour)})
		w, err := pfxconnector.Rewrap(key, cert, nil, pfxconnector.Legacy)
		if err != nil {
			t.Fatal(err)
		}
		f.secrets = append(f.secrets, w.Password)
		f.bundle.Encryption = append(f.bundle.Encryption, profile.Identity{
			PFX: w.PFX, Password: w.Password, SHA1: strings.Repeat(string(rune('a'+i)), 40), Current: i == 1,
		})
	}
	return f
}

func settings(t *testing.T, text string) *profile.Settings {
	t.Helper()
	s, err := profile.ParseSettings([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const fullSMIME = `
hostName: mail.example.com
accountName: Corporate mail
requireSmime: true
smimeSigningEnabled: true
signingCertificateType: certificate
encryptionCertificateType: certificate
smimeEncryptByDefaultEnabled: true
smimeEnablePerMessageSwitch: true
authenticationMethod: certificate
durationOfEmailToSync: twoWeeks
blockMovingMessagesToOtherEmailAccounts: true
perAppVPNProfileId: 5BA5B8E8-4A3F-4E2A-9A4C-1B2C3D4E5F60
`

func render(t *testing.T, f *fixture, s *profile.Settings) []byte {
	t.Helper()
	out, err := profile.Render(profile.Input{Bundle: f.bundle, Settings: s, Organization: "Example Corp"})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestProfilesValidateAgainstAppleSchema(t *testing.T) {
	sc := schema(t)
	f := newFixture(t)
	for name, text := range map[string]string{
		"defaults":    "hostName: mail.example.com",
		"full S/MIME": fullSMIME,
		"sam account": "hostName: mail.example.com\nusernameAADSource: samAccountName\ncustomDomainName: CORP\n",
		"intune JSON export": `{"@odata.type": "#microsoft.graph.iosEasEmailProfileConfiguration", "id": "x", "hostName": "outlook.office365.com",
			"easServices": "email,calendars", "requireSmime": true, "signingCertificateType": "certificate", "useOAuth": true}`,
	} {
		t.Run(name, func(t *testing.T) {
			in := profile.Input{Bundle: f.bundle, Settings: settings(t, text), User: profile.UserInfo{SAMAccountName: "alice"}}
			out, err := profile.Render(in)
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range sc.Validate(out) {
				t.Error(err)
			}
		})
	}
}

func TestValidatorCatchesMistakes(t *testing.T) {
	// The validator must fail on what it is there to catch, or its passing
	// verdicts mean nothing.
	sc := schema(t)
	f := newFixture(t)
	out := render(t, f, settings(t, fullSMIME))
	var top map[string]any
	if _, err := plist.Unmarshal(out, &top); err != nil {
		t.Fatal(err)
	}
	content := top["PayloadContent"].([]any)
	eas := content[len(content)-1].(map[string]any)
	eas["SMIMEEnabled"] = true                                 // deprecated
	eas["MailNumberOfPastDaysToSync"] = 5                      // not in rangelist
	eas["SMIMEEncryptionCertificateUUID"] = eas["PayloadUUID"] // points at the EAS payload itself
	eas["NoSuchKey"] = "x"
	eas["SSL"] = "yes" // wrong type
	bad, _ := plist.Marshal(top, plist.XMLFormat)
	errs := sc.Validate(bad)
	want := []string{"SMIMEEnabled", "MailNumberOfPastDaysToSync", "SMIMEEncryptionCertificateUUID", "NoSuchKey", "SSL"}
	joined := ""
	for _, e := range errs {
		joined += e.Error() + "\n"
	}
	for _, w := range want {
		if !strings.Contains(joined, w) {
			t.Errorf("validator missed the bad %s:\n%s", w, joined)
		}
	}
}

func TestPayloadsOpenAndUUIDsAreStable(t *testing.T) {
	f := newFixture(t)
	s := settings(t, fullSMIME)
	a, b := render(t, f, s), render(t, f, s)
	pa, _ := appleschema.Payloads(a)
	pb, _ := appleschema.Payloads(b)
	for typ := range pa {
		for i := range pa[typ] {
			if pa[typ][i]["PayloadUUID"] != pb[typ][i]["PayloadUUID"] || pa[typ][i]["PayloadIdentifier"] != pb[typ][i]["PayloadIdentifier"] {
				t.Errorf("%s payload %d changed identity between renderings", typ, i)
			}
		}
	}
	// Another device gets other UUIDs.
	other := *f
	other.bundle.Device = "ipad-2"
	po, _ := appleschema.Payloads(render(t, &other, s))
	if po["com.apple.eas.account"][0]["PayloadUUID"] == pa["com.apple.eas.account"][0]["PayloadUUID"] {
		t.Error("two devices share a payload UUID")
	}

	eas := pa["com.apple.eas.account"][0]
	p12 := pa["com.apple.security.pkcs12"]
	if len(p12) != 3 {
		t.Fatalf("%d PKCS#12 payloads, want 3", len(p12))
	}
	if eas["SMIMEEncryptionCertificateUUID"] != p12[1]["PayloadUUID"] {
		t.Error("SMIMEEncryptionCertificateUUID does not name the current certificate's payload")
	}
	if eas["SMIMESigningCertificateUUID"] != pa["com.apple.security.scep"][0]["PayloadUUID"] {
		t.Error("SMIMESigningCertificateUUID does not name the SCEP payload")
	}
	scep := pa["com.apple.security.scep"][0]["PayloadContent"].(map[string]any)
	if scep["Key Type"] != "RSA" || scep["Key Usage"] != uint64(1) || scep["KeyIsExtractable"] != false || scep["Keysize"] != uint64(2048) {
		t.Errorf("SCEP payload %v", scep)
	}

	// Each PKCS#12 payload opens with its password in openssl.
	dir := t.TempDir()
	for i, p := range p12 {
		pfx := filepath.Join(dir, hex.EncodeToString([]byte{byte(i)})+".p12")
		os.WriteFile(pfx, p["PayloadContent"].([]byte), 0o600)
		pw := filepath.Join(dir, "pw")
		os.WriteFile(pw, []byte(p["Password"].(string)), 0o600)
		out, err := exec.Command("openssl", "pkcs12", "-in", pfx, "-passin", "file:"+pw, "-nokeys", "-info").CombinedOutput()
		if err != nil {
			t.Errorf("openssl pkcs12 payload %d: %v\n%s", i, err, out)
		}
	}
}

func TestSignedProfileVerifiesWithOpenSSL(t *testing.T) {
	f := newFixture(t)
	out := render(t, f, settings(t, fullSMIME))
	cert, key := f.ca.ProfileSigner(t)
	signed, err := profile.Sign(out, cert, key, []*x509.Certificate{f.ca.Intermediate()})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "p.mobileconfig")
	os.WriteFile(in, signed, 0o600)
	rootPEM := filepath.Join(f.ca.Dir, "ca", ca.RootCertFile)
	got := filepath.Join(dir, "content.plist")
	o, err := exec.Command("openssl", "cms", "-verify", "-inform", "DER", "-in", in, "-CAfile", rootPEM, "-purpose", "any", "-out", got).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl cms -verify: %v\n%s", err, o)
	}
	content, _ := os.ReadFile(got)
	if !bytes.Equal(content, out) {
		t.Error("the signed content differs from the profile")
	}
	info, _ := exec.Command("openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", in).CombinedOutput()
	if !strings.Contains(string(info), "sha256") {
		t.Error("the signature does not use SHA-256")
	}
	// Another root does not verify it.
	other := testpki.NewOtherCA(t, ca.KeyTypeEC)
	if _, err := exec.Command("openssl", "cms", "-verify", "-inform", "DER", "-in", in, "-CAfile",
		filepath.Join(other.Dir, "ca", ca.RootCertFile), "-purpose", "any", "-out", got).CombinedOutput(); err == nil {
		t.Error("verified against a foreign root")
	}
}

// Golden tests: one per Intune option of "Exchange data to sync" and of the
// S/MIME certificate types. The golden files hold the EAS payload.
func TestGoldenEASPayloads(t *testing.T) {
	f := newFixture(t)
	cases := map[string]string{
		"sync-all-data":                "hostName: mail.example.com\n",
		"sync-email-only":              "hostName: mail.example.com\neasServices: email\n",
		"sync-calendar-only":           "hostName: mail.example.com\neasServices: calendars\n",
		"sync-calendar-and-contacts":   "hostName: mail.example.com\neasServices: calendars,contacts\n",
		"sync-contacts-only":           "hostName: mail.example.com\neasServices: contacts\n",
		"smime-signing-none":           "hostName: mail.example.com\nrequireSmime: true\nsmimeSigningEnabled: true\nsigningCertificateType: none\n",
		"smime-signing-certificate":    "hostName: mail.example.com\nrequireSmime: true\nsmimeSigningEnabled: true\nsigningCertificateType: certificate\nsmimeSigningCertificateUserOverrideEnabled: true\n",
		"smime-encryption-none":        "hostName: mail.example.com\nrequireSmime: true\nencryptionCertificateType: none\n",
		"smime-encryption-certificate": "hostName: mail.example.com\nrequireSmime: true\nencryptionCertificateType: certificate\nsmimeEncryptByDefaultEnabled: true\nsmimeEncryptionCertificateUserOverrideEnabled: true\n",
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			out := render(t, f, settings(t, text))
			p, _ := appleschema.Payloads(out)
			got, err := plist.MarshalIndent(p["com.apple.eas.account"][0], plist.XMLFormat, "\t")
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", name+".plist")
			if *update {
				os.MkdirAll(filepath.Dir(path), 0o755)
				os.WriteFile(path, got, 0o644)
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./profile -update once)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("EAS payload differs from %s:\n%s", path, got)
			}
		})
	}
}

func TestSettingsErrorsNameTheField(t *testing.T) {
	for text, field := range map[string]string{
		"accountName: x": "hostName",
		"hostName: h\ndurationOfEmailToSync: fortnight":          "durationOfEmailToSync",
		"hostName: h\neasServices: email,faxes":                  "easServices",
		"hostName: h\nsigningCertificateType: derivedCredential": "signingCertificateType",
		"hostName: h\nrequireSsl: maybe":                         "requireSsl",
		"hostName: h\nusernameAADSource: employeeId":             "usernameAADSource",
		"hostName: h\nperAppVPNProfileId: not-a-uuid":            "perAppVPNProfileId",
		"hostName: h\nauthenticationMethod: derivedCredential":   "authenticationMethod",
		"hostName: h\nuserDomainNameSource: dns":                 "userDomainNameSource",
		"hostName: h\neasServices: none,email":                   "easServices",
	} {
		_, err := profile.ParseSettings([]byte(text))
		se, ok := err.(*profile.SettingsError)
		if !ok || se.Field != field {
			t.Errorf("%q: %v, want an error naming %s", text, err, field)
		}
	}
	s, err := profile.ParseSettings([]byte(`{"hostName":"h","@odata.type":"x","id":"y","unknownFutureField":1}`))
	if err != nil || !*s.RequireSSL || s.EASServices == "" {
		t.Errorf("defaults: %+v %v", s, err)
	}
}

func TestSecretsOnlyInPKCS12Payloads(t *testing.T) {
	f := newFixture(t)
	out := render(t, f, settings(t, fullSMIME))
	p, _ := appleschema.Payloads(out)
	eas, _ := plist.Marshal(p["com.apple.eas.account"][0], plist.XMLFormat)
	for _, s := range f.secrets {
		if bytes.Contains(eas, []byte(s)) {
			t.Error("a PKCS#12 password leaked into the EAS payload")
		}
	}
	if _, ok := p["com.apple.eas.account"][0]["Password"]; ok {
		t.Error("the EAS payload carries an account password")
	}
}
