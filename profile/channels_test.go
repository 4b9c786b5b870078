package profile_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"slices"
	"strings"
	"testing"

	"howett.net/plist"

	"github.com/smimeca/smimeca/internal/testing/appleschema"
	"github.com/smimeca/smimeca/profile"
)

func declarative(t *testing.T) *appleschema.Declarative {
	t.Helper()
	dir, err := appleschema.DeclarativeDir()
	if err != nil {
		t.Fatal(err)
	}
	d, err := appleschema.LoadDeclarative(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// ddmFixture renders the declarations of newFixture's bundle: assets at
// made-up URLs whose documents are the real ones.
func ddmFixture(t *testing.T, f *fixture, s *profile.Settings) ([]profile.Declaration, map[string][]byte) {
	t.Helper()
	docs := map[string][]byte{}
	scep, err := profile.SCEPCredential(f.bundle.SCEP)
	if err != nil {
		t.Fatal(err)
	}
	in := profile.DDMInput{User: f.bundle.User, Device: f.bundle.Device, Settings: s}
	in.Signing = profile.NewAssetRef("https://ca.example.com/ddm/v1/assets/scep", scep)
	docs[in.Signing.DataURL] = scep
	for i, e := range f.bundle.Encryption {
		doc, err := profile.IdentityCredential(e.PFX, e.Password)
		if err != nil {
			t.Fatal(err)
		}
		url := fmt.Sprintf("https://ca.example.com/ddm/v1/assets/identity/%d", i)
		docs[url] = doc
		in.Encryption = append(in.Encryption, profile.DDMIdentity{SHA1: e.SHA1, Current: e.Current, Asset: profile.NewAssetRef(url, doc)})
	}
	decls, err := profile.RenderDeclarations(in)
	if err != nil {
		t.Fatal(err)
	}
	return decls, docs
}

// The declarations and both asset documents validate against Apple's
// declarative schema, asset references point at assets of the right type,
// the account names the SCEP asset for signing and the current identity
// for encryption, every older identity is installed by its own
// security.identity, and each asset's hash and size are its document's.
func TestDeclarationsValidateAgainstAppleSchema(t *testing.T) {
	sc := declarative(t)
	f := newFixture(t)
	decls, docs := ddmFixture(t, f, settings(t, fullSMIME))
	js, err := json.Marshal(decls)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range sc.Validate(js) {
		t.Error(e)
	}
	byType := map[string][]profile.Declaration{}
	byID := map[string]profile.Declaration{}
	for _, d := range decls {
		byType[d.Type] = append(byType[d.Type], d)
		byID[d.Identifier] = d
	}
	if len(byType[profile.DeclarationSCEP]) != 1 || len(byType[profile.DeclarationIdentity]) != 3 ||
		len(byType[profile.DeclarationExchange]) != 1 || len(byType[profile.DeclarationInstall]) != 2 {
		t.Fatalf("declarations by type: %v", byType)
	}
	smime := byType[profile.DeclarationExchange][0].Payload["SMIME"].(map[string]any)
	signRef := smime["Signing"].(map[string]any)["IdentityAssetReference"].(string)
	encRef := smime["Encryption"].(map[string]any)["IdentityAssetReference"].(string)
	if byID[signRef].Type != profile.DeclarationSCEP {
		t.Errorf("signing identity is %s", byID[signRef].Type)
	}
	current := f.bundle.Encryption[1]
	if got := byID[encRef].Payload["Reference"].(map[string]any)["DataURL"]; got != "https://ca.example.com/ddm/v1/assets/identity/1" {
		t.Errorf("encryption identity is the asset at %v, want the current one's", got)
	}
	for _, d := range byType[profile.DeclarationInstall] {
		if ref := d.Payload["CredentialAssetReference"].(string); ref == encRef || byID[ref].Type != profile.DeclarationIdentity {
			t.Errorf("security.identity installs %s (%s)", ref, byID[ref].Type)
		}
	}
	for _, d := range append(byType[profile.DeclarationIdentity], byType[profile.DeclarationSCEP]...) {
		ref := d.Payload["Reference"].(map[string]any)
		doc := docs[ref["DataURL"].(string)]
		sum := sha256.Sum256(doc)
		if ref["Hash-SHA-256"] != hex.EncodeToString(sum[:]) || ref["Size"] != len(doc) {
			t.Errorf("%s: hash %v size %v, the document's are %x %d", d.Identifier, ref["Hash-SHA-256"], ref["Size"], sum, len(doc))
		}
		if d.Payload["Authentication"].(map[string]any)["Type"] != "MDM" {
			t.Errorf("%s: not fetched with the device's MDM identity", d.Identifier)
		}
		credType := "com.apple.credential.identity"
		if d.Type == profile.DeclarationSCEP {
			credType = "com.apple.credential.scep"
		}
		for _, e := range sc.ValidateCredential(credType, doc) {
			t.Errorf("%s document: %v", d.Type, e)
		}
	}
	// No secret in the declarations: the MDM holds them.
	for _, secret := range append(slices.Clone(f.secrets), f.bundle.SCEP.Challenge, current.Password) {
		if bytes.Contains(js, []byte(secret)) {
			t.Errorf("a secret is in the declarations")
		}
	}
	// A second rendering is the same; a changed document changes its
	// asset's ServerToken and nothing else's identifier.
	again, _ := ddmFixture(t, f, settings(t, fullSMIME))
	if js2, _ := json.Marshal(again); !bytes.Equal(js, js2) {
		t.Error("two renderings of the same assets differ")
	}
}

// The validator catches what a broken declaration would carry.
func TestDeclarativeValidatorCatchesMistakes(t *testing.T) {
	sc := declarative(t)
	f := newFixture(t)
	decls, _ := ddmFixture(t, f, settings(t, fullSMIME))
	for name, breakIt := range map[string]func([]profile.Declaration){
		"unknown key":  func(d []profile.Declaration) { d[0].Payload["Bogus"] = true },
		"dangling ref": func(d []profile.Declaration) { d[len(d)-1].Payload["CredentialAssetReference"] = "nope" },
		"wrong ref type": func(d []profile.Declaration) {
			d[len(d)-1].Payload["CredentialAssetReference"] = d[len(d)-3].Identifier
		},
		"missing token":   func(d []profile.Declaration) { d[1].ServerToken = strings.Repeat("x", 65) },
		"bad auth":        func(d []profile.Declaration) { d[0].Payload["Authentication"] = map[string]any{"Type": "Basic"} },
		"size not an int": func(d []profile.Declaration) { d[0].Payload["Reference"].(map[string]any)["Size"] = "12" },
	} {
		c := slices.Clone(decls)
		for i := range c {
			c[i].Payload = cloneMap(c[i].Payload)
		}
		breakIt(c)
		js, _ := json.Marshal(c)
		if errs := sc.Validate(js); len(errs) == 0 {
			t.Errorf("%s: no problem found", name)
		}
	}
	if errs := sc.ValidateCredential("com.apple.credential.scep", []byte(`{"URL":"https://x","Keysize":3072}`)); len(errs) == 0 {
		t.Error("a 3072-bit SCEP Keysize passed (Apple's client offers 1024, 2048, 4096)")
	}
}

func cloneMap(m map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		if sub, ok := v.(map[string]any); ok {
			v = cloneMap(sub)
		}
		out[k] = v
	}
	return out
}

// Outlook's app configuration has exactly Microsoft's S/MIME keys (and the
// directory's host when given), with their documented types, on both
// platforms, and follows the settings.
func TestOutlookAppConfiguration(t *testing.T) {
	s := settings(t, fullSMIME+"smimeSigningUserOverrideEnabled: true\n")
	set, err := profile.OutlookSettings(s, "ldap.example.com:389")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{ // Microsoft's S/MIME settings table
		"com.microsoft.outlook.Mail.SMIMEEnabled":                                  "bool",
		"com.microsoft.outlook.Mail.SMIMEEnabled.UserChangeAllowed":                "bool",
		"com.microsoft.outlook.Mail.SMIMEEnabled.EncryptAllMail":                   "bool",
		"com.microsoft.outlook.Mail.SMIMEEnabled.EncryptAllMail.UserChangeAllowed": "bool",
		"com.microsoft.outlook.Mail.SMIMEEnabled.SignAllMail":                      "bool",
		"com.microsoft.outlook.Mail.SMIMEEnabled.SignAllMail.UserChangeAllowed":    "bool",
		"com.microsoft.outlook.Mail.SMIMEEnabled.LDAPHostName":                     "string",
	}
	want := map[string]any{
		"com.microsoft.outlook.Mail.SMIMEEnabled": true, "com.microsoft.outlook.Mail.SMIMEEnabled.UserChangeAllowed": false,
		"com.microsoft.outlook.Mail.SMIMEEnabled.EncryptAllMail": true, "com.microsoft.outlook.Mail.SMIMEEnabled.EncryptAllMail.UserChangeAllowed": false,
		"com.microsoft.outlook.Mail.SMIMEEnabled.SignAllMail": true, "com.microsoft.outlook.Mail.SMIMEEnabled.SignAllMail.UserChangeAllowed": true,
		"com.microsoft.outlook.Mail.SMIMEEnabled.LDAPHostName": "ldap.example.com:389",
	}
	ios, err := profile.RenderOutlookIOS(set)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if _, err := plist.Unmarshal(ios, &d); err != nil {
		t.Fatalf("iOS app configuration is not a property list: %v", err)
	}
	if len(d) != len(documented) {
		t.Errorf("iOS: %d keys, want %d", len(d), len(documented))
	}
	for k, v := range d {
		typ, ok := documented[k]
		if !ok {
			t.Errorf("iOS: key %s is not Microsoft's", k)
		}
		if _, isBool := v.(bool); (typ == "bool") != isBool {
			t.Errorf("iOS: %s is a %T, documented %s", k, v, typ)
		}
		if v != want[k] {
			t.Errorf("iOS: %s = %v, want %v", k, v, want[k])
		}
	}
	android, err := profile.RenderOutlookAndroid(set)
	if err != nil {
		t.Fatal(err)
	}
	var mc struct {
		Kind      string           `json:"kind"`
		ProductID string           `json:"productId"`
		Property  []map[string]any `json:"managedProperty"`
	}
	if err := json.Unmarshal(android, &mc); err != nil {
		t.Fatal(err)
	}
	if mc.Kind != "androidenterprise#managedConfiguration" || mc.ProductID != "app:com.microsoft.office.outlook" || len(mc.Property) != len(documented) {
		t.Fatalf("Android managed configuration: %s", android)
	}
	for _, p := range mc.Property {
		k := p["key"].(string)
		field := map[string]string{"bool": "valueBool", "string": "valueString"}[documented[k]]
		if len(p) != 2 || p[field] != want[k] {
			t.Errorf("Android: %v, want %s = %v", p, field, want[k])
		}
	}
	if _, err := profile.OutlookSettings(s, "ldap.example.com\n<x>"); err == nil {
		t.Error("a host name with markup was taken")
	}
	noLDAP, _ := profile.OutlookSettings(s, "")
	if len(noLDAP) != 6 {
		t.Errorf("without a directory host: %d keys, want Microsoft's six", len(noLDAP))
	}
}

// The nodes of ClientCertificateInstall's PFXCertInstall/{UniqueID} and
// their formats, from the CSP's DDF (Microsoft's "ClientCertificateInstall
// DDF file"): PFXCertBlob is bin, sent as b64.
var pfxCertInstallDDF = map[string]string{
	"":                               "node",
	"KeyLocation":                    "int",
	"ContainerName":                  "chr",
	"PFXCertBlob":                    "b64",
	"PFXCertPassword":                "chr",
	"PFXCertPasswordEncryptionType":  "int",
	"PFXKeyExportable":               "bool",
	"PFXCertPasswordEncryptionStore": "chr",
}

type syncML struct {
	XMLName xml.Name `xml:"Atomic"`
	CmdID   int      `xml:"CmdID"`
	Cmds    []struct {
		XMLName xml.Name
		CmdID   int     `xml:"CmdID"`
		Target  string  `xml:"Item>Target>LocURI"`
		Format  string  `xml:"Item>Meta>Format"`
		Data    *string `xml:"Item>Data"`
	} `xml:",any"`
}

// The Windows SyncML is one well-formed Atomic whose node paths and
// formats are the DDF's, sets the password and its encryption type before
// the blob, deletes only smimeca's nodes whose certificate is gone, and
// leaves installed ones alone.
func TestWindowsSyncML(t *testing.T) {
	f := newFixture(t)
	var ids []profile.WindowsIdentity
	for _, e := range f.bundle.Encryption {
		ids = append(ids, profile.WindowsIdentity{SHA1: e.SHA1, PFX: e.PFX, EnvelopedPassword: []byte("enveloped:" + e.SHA1)})
	}
	purged := profile.WindowsUniqueID(strings.Repeat("f", 40))
	out, err := profile.RenderSyncML(profile.WindowsInput{Identities: ids, KeyLocation: profile.WindowsKeySoftware,
		Installed: []string{purged, profile.WindowsUniqueID(ids[0].SHA1), "someone-elses-cert"}})
	if err != nil {
		t.Fatal(err)
	}
	var doc syncML
	if err := xml.Unmarshal(out, &doc); err != nil {
		t.Fatalf("not well-formed: %v\n%s", err, out)
	}
	seen := map[int]bool{doc.CmdID: true}
	var order []string
	deleted := []string{}
	blobs := map[string]string{}
	for _, c := range doc.Cmds {
		if seen[c.CmdID] {
			t.Errorf("CmdID %d twice", c.CmdID)
		}
		seen[c.CmdID] = true
		rest, ok := strings.CutPrefix(c.Target, profile.WindowsCSPRoot)
		if !ok {
			t.Fatalf("%s: not under %s", c.Target, profile.WindowsCSPRoot)
		}
		node, leaf, _ := strings.Cut(rest, "/")
		if c.XMLName.Local == "Delete" {
			deleted = append(deleted, node)
			continue
		}
		format, ok := pfxCertInstallDDF[leaf]
		if !ok || c.Format != format {
			t.Errorf("%s: format %q, the DDF's is %q", c.Target, c.Format, format)
		}
		if (format == "node") != (c.Data == nil) {
			t.Errorf("%s: data %v", c.Target, c.Data)
		}
		order = append(order, node+"/"+leaf)
		if leaf == "PFXCertBlob" {
			blobs[node] = *c.Data
		}
		if leaf == "PFXCertPasswordEncryptionType" && *c.Data != "1" {
			t.Errorf("%s = %s, want 1 (encrypted to the MDM certificate)", c.Target, *c.Data)
		}
	}
	if !slices.Equal(deleted, []string{purged}) {
		t.Errorf("deleted %v, want only %s", deleted, purged)
	}
	if len(blobs) != 2 {
		t.Errorf("%d blobs, want the 2 not installed yet", len(blobs))
	}
	for _, e := range ids[1:] {
		n := profile.WindowsUniqueID(e.SHA1)
		if got, _ := base64.StdEncoding.DecodeString(blobs[n]); !bytes.Equal(got, e.PFX) {
			t.Errorf("%s: the blob is not the PKCS#12", n)
		}
		blob := slices.Index(order, n+"/PFXCertBlob")
		for _, before := range []string{"", "KeyLocation", "PFXCertPassword", "PFXCertPasswordEncryptionType", "PFXKeyExportable"} {
			if i := slices.Index(order, n+"/"+before); i < 0 || i > blob {
				t.Errorf("%s/%s is not set before the blob (%v)", n, before, order)
			}
		}
	}
	for _, secret := range f.secrets {
		if bytes.Contains(out, []byte(secret)) {
			t.Error("a plain PKCS#12 password is in the SyncML")
		}
	}
	if _, err := profile.RenderSyncML(profile.WindowsInput{Identities: ids, Exportable: true}); err == nil {
		t.Error("an exportable key in the TPM was accepted")
	}
	if _, err := profile.RenderSyncML(profile.WindowsInput{Identities: ids, Installed: []string{"a/b"}}); err == nil {
		t.Error("an installed id with a slash was accepted")
	}
}

// The Android document names each identity by a stable alias and carries
// only enveloped passwords.
func TestAndroidDocument(t *testing.T) {
	f := newFixture(t)
	in := profile.AndroidInput{User: "alice@example.com", Device: "pixel", Grants: []string{"com.microsoft.office.outlook"}, UserSelectable: true}
	for _, e := range f.bundle.Encryption {
		in.Identities = append(in.Identities, profile.AndroidIdentity{SHA1: strings.ToUpper(e.SHA1), PFX: e.PFX, EnvelopedPassword: []byte("env"), Current: e.Current})
	}
	out, err := profile.RenderAndroid(in)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		KeyPairs []struct {
			Alias   string   `json:"alias"`
			PKCS12  []byte   `json:"pkcs12"`
			GrantTo []string `json:"grantTo"`
		} `json:"keyPairs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil || len(doc.KeyPairs) != 3 {
		t.Fatalf("%v: %s", err, out)
	}
	for i, k := range doc.KeyPairs {
		if k.Alias != "smime-"+f.bundle.Encryption[i].SHA1 || !bytes.Equal(k.PKCS12, f.bundle.Encryption[i].PFX) || k.GrantTo[0] != "com.microsoft.office.outlook" {
			t.Errorf("key pair %d: %s", i, k.Alias)
		}
	}
	again, _ := profile.RenderAndroid(in)
	if !bytes.Equal(out, again) {
		t.Error("two renderings differ")
	}
	for _, secret := range f.secrets {
		if bytes.Contains(out, []byte(secret)) {
			t.Error("a plain password is in the Android document")
		}
	}
	in.Grants = []string{"not a package"}
	if _, err := profile.RenderAndroid(in); err == nil {
		t.Error("a bad package name was accepted")
	}
}
