package profile

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Apple's Declarative Device Management (iOS 17+, macOS 14+): instead of
// a profile, the MDM serves declarations, and the device fetches each
// credential asset's data itself from its DataURL, authenticated as itself
// (Authentication Type MDM: the device's identity certificate). The
// declarations rendered here carry no secret: each asset's URL, size and
// SHA-256 only. The asset documents (SCEPCredential, IdentityCredential)
// carry the secrets and are served by smimeca to the device alone.

// Declaration types rendered.
const (
	DeclarationSCEP     = "com.apple.asset.credential.scep"
	DeclarationIdentity = "com.apple.asset.credential.identity"
	DeclarationExchange = "com.apple.configuration.account.exchange"
	DeclarationInstall  = "com.apple.configuration.security.identity"
)

// Declaration is one DDM declaration, as the MDM serves it in its
// declaration items.
type Declaration struct {
	Type        string         `json:"Type"`
	Identifier  string         `json:"Identifier"`
	ServerToken string         `json:"ServerToken"`
	Payload     map[string]any `json:"Payload"`
}

// AssetRef is where a device fetches an asset's data and what it must be.
type AssetRef struct {
	DataURL string
	Size    int
	SHA256  []byte
}

// NewAssetRef describes the document doc served at url.
func NewAssetRef(url string, doc []byte) AssetRef {
	s := sha256.Sum256(doc)
	return AssetRef{DataURL: url, Size: len(doc), SHA256: s[:]}
}

// DDMIdentity is one escrowed identity's asset.
type DDMIdentity struct {
	SHA1    string
	Current bool
	Asset   AssetRef
}

// DDMInput is everything RenderDeclarations needs.
type DDMInput struct {
	User, Device string
	Settings     *Settings
	// Signing is the SCEP credential asset of the signing identity.
	Signing AssetRef
	// Encryption are the escrowed identities, the current one (if any)
	// for new mail.
	Encryption []DDMIdentity
	// UserIdentityAsset, when set, is the identifier of the MDM's own
	// com.apple.asset.useridentity declaration (the user's name and
	// address for the account).
	UserIdentityAsset string
}

// SCEPCredential returns the com.apple.credential.scep document of the
// device's SCEP asset: the same fields as the SCEP payload of a profile.
func SCEPCredential(ref SCEPRef) ([]byte, error) {
	if ref.URL == "" || ref.Challenge == "" || ref.KeyType == "" || ref.AppleKeyUsage == 0 {
		return nil, fmt.Errorf("profile: the SCEP reference lacks the URL, challenge, key type or usage")
	}
	doc := struct {
		URL            string            `json:"URL"`
		Name           string            `json:"Name,omitempty"`
		Subject        [][][]string      `json:"Subject"`
		SubjectAltName map[string]string `json:"SubjectAltName"`
		Challenge      string            `json:"Challenge"`
		Keysize        int               `json:"Keysize"`
		KeyType        string            `json:"Key Type"`
		KeyUsage       int               `json:"Key Usage"`
		CAFingerprint  []byte            `json:"CAFingerprint,omitempty"`
		Retries        int               `json:"Retries"`
		RetryDelay     int               `json:"RetryDelay"`
	}{URL: ref.URL, Name: ref.CAName, Subject: [][][]string{{{"CN", ref.CommonName}}},
		SubjectAltName: map[string]string{"rfc822Name": ref.RFC822Name}, Challenge: ref.Challenge,
		Keysize: appleKeysize(ref.KeySize), KeyType: ref.KeyType, KeyUsage: ref.AppleKeyUsage,
		CAFingerprint: ref.CAFingerprint, Retries: 3, RetryDelay: 10}
	return json.Marshal(doc)
}

// appleKeysize is the smallest key size Apple's SCEP client offers (1024,
// 2048, 4096) that is at least bits.
func appleKeysize(bits int) int {
	if bits <= 2048 {
		return 2048
	}
	return 4096
}

// IdentityCredential returns the com.apple.credential.identity document
// of an identity asset: the PKCS#12 and its password.
func IdentityCredential(pfx []byte, password string) ([]byte, error) {
	if len(pfx) == 0 || password == "" {
		return nil, fmt.Errorf("profile: an identity credential needs the PKCS#12 and its password")
	}
	return json.Marshal(struct {
		Password string `json:"Password"`
		Identity []byte `json:"Identity"`
	}{password, pfx})
}

// RenderDeclarations returns the device's declarations: the SCEP
// credential asset, one identity asset per escrowed certificate, the
// Exchange account (with its S/MIME settings naming the signing asset and
// the current encryption identity) and one security.identity
// configuration per older identity, so that mail encrypted to it stays
// readable. Identifiers are stable for (user, device, certificate);
// ServerTokens change with the content, so the device fetches what
// changed.
func RenderDeclarations(in DDMInput) ([]Declaration, error) {
	s := in.Settings
	if s == nil {
		return nil, fmt.Errorf("profile: no settings")
	}
	if in.User == "" || in.Device == "" || in.Signing.DataURL == "" {
		return nil, fmt.Errorf("profile: the declarations need the user, the device and the signing asset")
	}
	var out []Declaration
	add := func(typ, kind, thumb string, payload map[string]any) string {
		d := Declaration{Type: typ, Identifier: identifier(in.User, in.Device, kind, thumb), Payload: payload}
		d.ServerToken = serverToken(d)
		out = append(out, d)
		return d.Identifier
	}
	assetPayload := func(a AssetRef) map[string]any {
		return dict{
			"Reference": dict{"DataURL": a.DataURL, "ContentType": "application/json", "Size": a.Size,
				"Hash-SHA-256": hex.EncodeToString(a.SHA256)},
			"Authentication": dict{"Type": "MDM"},
		}
	}
	scepID := add(DeclarationSCEP, "ddm.scep", "", assetPayload(in.Signing))
	var currentID string
	var older []string
	for _, e := range in.Encryption {
		if len(e.SHA1) < 16 || e.Asset.DataURL == "" {
			return nil, fmt.Errorf("profile: an identity asset lacks its thumbprint or URL")
		}
		id := add(DeclarationIdentity, "ddm.identity", e.SHA1, assetPayload(e.Asset))
		if e.Current && currentID == "" {
			currentID = id
		} else {
			older = append(older, e.SHA1)
		}
	}
	account, err := exchangeDeclaration(in, scepID, currentID)
	if err != nil {
		return nil, err
	}
	add(DeclarationExchange, "ddm.account", "", account)
	for _, sha1 := range older {
		add(DeclarationInstall, "ddm.install", sha1, dict{
			"CredentialAssetReference": identifier(in.User, in.Device, "ddm.identity", sha1)})
	}
	return out, nil
}

// exchangeDeclaration is the account.exchange payload from the Graph
// settings, as easPayload makes the profile's.
func exchangeDeclaration(in DDMInput, scepID, currentID string) (map[string]any, error) {
	s := in.Settings
	name := s.AccountName
	if name == "" {
		name = "Exchange"
	}
	p := dict{"VisibleName": name, "EnabledProtocolTypes": []any{"EAS"}, "HostName": s.HostName}
	if s.UseOAuth {
		p["OAuth"] = dict{"Enabled": true}
	}
	if in.UserIdentityAsset != "" {
		p["UserIdentityAssetReference"] = in.UserIdentityAsset
	}
	if s.AuthenticationMethod == "certificate" {
		p["AuthenticationIdentityAssetReference"] = scepID
	}
	services, _ := s.services()
	for _, svc := range serviceKeys {
		p[svc.ddm+"ServiceActive"] = services[svc.flag]
		p["Lock"+svc.ddm+"Service"] = !s.EASServicesUserOverrideEnabled
	}
	if s.RequireSmime {
		sign := dict{"Enabled": s.SmimeSigningEnabled, "UserOverrideable": s.SmimeSigningUserOverrideEnabled}
		if s.SigningCertificateType == "certificate" {
			sign["IdentityAssetReference"] = scepID
			sign["IdentityUserOverrideable"] = s.SmimeSigningCertificateUserOverrideEnabled
		}
		enc := dict{"Enabled": s.SmimeEncryptByDefaultEnabled, "UserOverrideable": s.SmimeEncryptByDefaultUserOverrideEnabled,
			"PerMessageSwitchEnabled": s.SmimeEnablePerMessageSwitch}
		if s.EncryptionCertificateType == "certificate" && currentID != "" {
			enc["IdentityAssetReference"] = currentID
			enc["IdentityUserOverrideable"] = s.SmimeEncryptionCertificateUserOverrideEnabled
		}
		p["SMIME"] = dict{"Signing": sign, "Encryption": enc}
	}
	return p, nil
}

// serverToken names a declaration's revision: the SHA-256 of its type,
// identifier and payload (encoding/json sorts map keys), 32 hex digits.
func serverToken(d Declaration) string {
	b, _ := json.Marshal(struct {
		T, I string
		P    map[string]any
	}{d.Type, d.Identifier, d.Payload})
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:16])
}
