package profile

import (
	"encoding/json"
	"fmt"

	"howett.net/plist"
)

// Outlook for iOS and Android reads its S/MIME settings from managed app
// configuration, which any MDM delivers (iOS managed app configuration,
// Android managed configurations). The keys and their types are those of
// Microsoft's "Deploying Outlook for iOS and Android app configuration
// settings" (S/MIME settings: six Booleans), and LDAPHostName (a string:
// where Outlook looks up recipients' certificates), which Intune's
// Outlook app configuration sets beside them.
const (
	OutlookSMIMEEnabled              = "com.microsoft.outlook.Mail.SMIMEEnabled"
	OutlookSMIMEUserChangeAllowed    = "com.microsoft.outlook.Mail.SMIMEEnabled.UserChangeAllowed"
	OutlookEncryptAllMail            = "com.microsoft.outlook.Mail.SMIMEEnabled.EncryptAllMail"
	OutlookEncryptAllMailUserChange  = "com.microsoft.outlook.Mail.SMIMEEnabled.EncryptAllMail.UserChangeAllowed"
	OutlookSignAllMail               = "com.microsoft.outlook.Mail.SMIMEEnabled.SignAllMail"
	OutlookSignAllMailUserChange     = "com.microsoft.outlook.Mail.SMIMEEnabled.SignAllMail.UserChangeAllowed"
	OutlookLDAPHostName              = "com.microsoft.outlook.Mail.SMIMEEnabled.LDAPHostName"
	outlookAndroidPackage            = "com.microsoft.office.outlook"
	androidManagedConfigurationKind  = "androidenterprise#managedConfiguration"
	androidManagedConfigurationAppID = "app:" + outlookAndroidPackage
)

// OutlookSetting is one key of Outlook's app configuration: Value is a
// bool or a string.
type OutlookSetting struct {
	Key   string
	Value any
}

// OutlookSettings maps the Graph e-mail settings onto Outlook's S/MIME
// keys: S/MIME on with requireSmime; sign and encrypt all mail with
// smimeSigningEnabled and smimeEncryptByDefaultEnabled, each changeable by
// the user as its *UserOverrideEnabled says; S/MIME itself changeable only
// when both are (a user who may not turn signing off may not turn S/MIME
// off). ldapHost (optional) is the recipient directory's host name.
func OutlookSettings(s *Settings, ldapHost string) ([]OutlookSetting, error) {
	if s == nil {
		return nil, fmt.Errorf("profile: no settings")
	}
	out := []OutlookSetting{
		{OutlookSMIMEEnabled, s.RequireSmime},
		{OutlookSMIMEUserChangeAllowed, s.SmimeSigningUserOverrideEnabled && s.SmimeEncryptByDefaultUserOverrideEnabled},
		{OutlookEncryptAllMail, s.SmimeEncryptByDefaultEnabled},
		{OutlookEncryptAllMailUserChange, s.SmimeEncryptByDefaultUserOverrideEnabled},
		{OutlookSignAllMail, s.SmimeSigningEnabled},
		{OutlookSignAllMailUserChange, s.SmimeSigningUserOverrideEnabled},
	}
	if ldapHost != "" {
		if err := CheckHostName(ldapHost); err != nil {
			return nil, &SettingsError{Field: "ldapHostName", Detail: err.Error()}
		}
		out = append(out, OutlookSetting{OutlookLDAPHostName, ldapHost})
	}
	return out, nil
}

// CheckHostName refuses what cannot be a host name (or host:port, or an
// ldap:// or ldaps:// URL) for an app configuration value.
func CheckHostName(h string) error {
	if len(h) > 255 {
		return fmt.Errorf("%d characters is too long for a host name", len(h))
	}
	for _, r := range h {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == ':', r == '/', r == '[', r == ']':
		default:
			return fmt.Errorf("%q has a character a host name cannot have", h)
		}
	}
	return nil
}

// RenderOutlookIOS returns Outlook's managed app configuration for iOS:
// the XML property list dictionary an MDM puts in the app's configuration
// (ManagedAppConfiguration).
func RenderOutlookIOS(settings []OutlookSetting) ([]byte, error) {
	d := dict{}
	for _, s := range settings {
		d[s.Key] = s.Value
	}
	return plist.MarshalIndent(d, plist.XMLFormat, "\t")
}

// RenderOutlookAndroid returns Outlook's managed configuration for Android
// Enterprise, as Google Play's EMM API ManagedConfiguration resource
// (productId app:com.microsoft.office.outlook; one managedProperty per key,
// valueBool or valueString).
func RenderOutlookAndroid(settings []OutlookSetting) ([]byte, error) {
	type property struct {
		Key         string  `json:"key"`
		ValueBool   *bool   `json:"valueBool,omitempty"`
		ValueString *string `json:"valueString,omitempty"`
	}
	doc := struct {
		Kind     string     `json:"kind"`
		Product  string     `json:"productId"`
		Property []property `json:"managedProperty"`
	}{Kind: androidManagedConfigurationKind, Product: androidManagedConfigurationAppID}
	for _, s := range settings {
		p := property{Key: s.Key}
		switch v := s.Value.(type) {
		case bool:
			p.ValueBool = &v
		case string:
			p.ValueString = &v
		default:
			return nil, fmt.Errorf("profile: Outlook key %s has a %T value", s.Key, s.Value)
		}
		doc.Property = append(doc.Property, p)
	}
	return json.MarshalIndent(doc, "", "  ")
}
