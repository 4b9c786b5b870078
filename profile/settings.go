package profile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// Settings are the e-mail profile settings, named and valued as Microsoft
// Graph's iosEasEmailProfileConfiguration, so that a profile exported from
// Intune can be used as it is. Unknown fields (such as "@odata.type" or
// "id") are ignored; a known field with a bad value is refused, naming the
// field. Only HostName is required; every other field has Intune's default.
type Settings struct {
	HostName                                      string `json:"hostName"`
	AccountName                                   string `json:"accountName"`
	UsernameSource                                string `json:"usernameSource"`
	UsernameAADSource                             string `json:"usernameAADSource"`
	UserDomainNameSource                          string `json:"userDomainNameSource"`
	CustomDomainName                              string `json:"customDomainName"`
	EmailAddressSource                            string `json:"emailAddressSource"`
	AuthenticationMethod                          string `json:"authenticationMethod"`
	RequireSSL                                    *bool  `json:"requireSsl"`
	UseOAuth                                      bool   `json:"useOAuth"`
	EASServices                                   string `json:"easServices"`
	EASServicesUserOverrideEnabled                bool   `json:"easServicesUserOverrideEnabled"`
	RequireSmime                                  bool   `json:"requireSmime"`
	SmimeSigningEnabled                           bool   `json:"smimeSigningEnabled"`
	SmimeSigningUserOverrideEnabled               bool   `json:"smimeSigningUserOverrideEnabled"`
	SigningCertificateType                        string `json:"signingCertificateType"`
	SmimeSigningCertificateUserOverrideEnabled    bool   `json:"smimeSigningCertificateUserOverrideEnabled"`
	SmimeEncryptByDefaultEnabled                  bool   `json:"smimeEncryptByDefaultEnabled"`
	SmimeEncryptByDefaultUserOverrideEnabled      bool   `json:"smimeEncryptByDefaultUserOverrideEnabled"`
	SmimeEnablePerMessageSwitch                   bool   `json:"smimeEnablePerMessageSwitch"`
	EncryptionCertificateType                     string `json:"encryptionCertificateType"`
	SmimeEncryptionCertificateUserOverrideEnabled bool   `json:"smimeEncryptionCertificateUserOverrideEnabled"`
	DurationOfEmailToSync                         string `json:"durationOfEmailToSync"`
	BlockMovingMessagesToOtherEmailAccounts       bool   `json:"blockMovingMessagesToOtherEmailAccounts"`
	BlockSendingEmailFromThirdPartyApps           bool   `json:"blockSendingEmailFromThirdPartyApps"`
	BlockSyncingRecentlyUsedEmailAddresses        bool   `json:"blockSyncingRecentlyUsedEmailAddresses"`
	PerAppVPNProfileID                            string `json:"perAppVPNProfileId"`
}

// SettingsError names the field of the settings file that is wrong.
type SettingsError struct {
	Field  string
	Detail string
}

// Error implements error.
func (e *SettingsError) Error() string {
	return fmt.Sprintf("profile: settings: %s: %s", e.Field, e.Detail)
}

// Values accepted for the enumerated fields (Graph enum names).
var (
	userEmailSources   = []string{"userPrincipalName", "primarySmtpAddress"}
	usernameSources    = []string{"userPrincipalName", "primarySmtpAddress", "samAccountName"}
	domainNameSources  = []string{"fullDomainName", "netBiosDomainName"}
	authMethods        = []string{"usernameAndPassword", "certificate"}
	certificateTypes   = []string{"none", "certificate"}
	easServiceNames    = []string{"none", "calendars", "contacts", "email", "notes", "reminders"}
	syncDurations      = map[string]int{"userDefined": -1, "oneDay": 1, "threeDays": 3, "oneWeek": 7, "twoWeeks": 14, "oneMonth": 31, "unlimited": 0}
	unsupportedChoices = map[string]string{"derivedCredential": "derived credentials are not supported by smimeca; use certificate"}
)

// ParseSettings reads settings from JSON or YAML, fills Intune's defaults
// and checks every value.
func ParseSettings(data []byte) (*Settings, error) {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, &SettingsError{Field: "(file)", Detail: "not JSON or YAML: " + err.Error()}
	}
	var s Settings
	dec := json.NewDecoder(bytes.NewReader(j))
	if err := dec.Decode(&s); err != nil {
		var te *json.UnmarshalTypeError
		if ok := asType(err, &te); ok {
			return nil, &SettingsError{Field: te.Field, Detail: fmt.Sprintf("must be a %s", te.Type)}
		}
		return nil, &SettingsError{Field: "(file)", Detail: err.Error()}
	}
	if err := s.fill(); err != nil {
		return nil, err
	}
	return &s, nil
}

func asType(err error, te **json.UnmarshalTypeError) bool {
	t, ok := err.(*json.UnmarshalTypeError)
	if ok {
		*te = t
	}
	return ok
}

func oneOf(field, v string, allowed []string) error {
	if why, ok := unsupportedChoices[v]; ok {
		return &SettingsError{Field: field, Detail: why}
	}
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return &SettingsError{Field: field, Detail: fmt.Sprintf("%q is not one of %s", v, strings.Join(allowed, ", "))}
}

func orDefault(p *string, d string) {
	if *p == "" {
		*p = d
	}
}

// fill applies Intune's defaults and checks the values.
func (s *Settings) fill() error {
	if strings.TrimSpace(s.HostName) == "" {
		return &SettingsError{Field: "hostName", Detail: "is required (the Exchange server host name)"}
	}
	if s.RequireSSL == nil {
		t := true
		s.RequireSSL = &t
	}
	orDefault(&s.UsernameSource, "userPrincipalName")
	orDefault(&s.EmailAddressSource, "primarySmtpAddress")
	orDefault(&s.UserDomainNameSource, "fullDomainName")
	orDefault(&s.AuthenticationMethod, "usernameAndPassword")
	orDefault(&s.SigningCertificateType, "none")
	orDefault(&s.EncryptionCertificateType, "none")
	orDefault(&s.DurationOfEmailToSync, "userDefined")
	orDefault(&s.EASServices, "calendars,contacts,email,notes,reminders")
	for _, c := range []struct {
		field, v string
		allowed  []string
	}{
		{"usernameSource", s.UsernameSource, userEmailSources},
		{"emailAddressSource", s.EmailAddressSource, userEmailSources},
		{"userDomainNameSource", s.UserDomainNameSource, domainNameSources},
		{"authenticationMethod", s.AuthenticationMethod, authMethods},
		{"signingCertificateType", s.SigningCertificateType, certificateTypes},
		{"encryptionCertificateType", s.EncryptionCertificateType, certificateTypes},
	} {
		if err := oneOf(c.field, c.v, c.allowed); err != nil {
			return err
		}
	}
	if s.UsernameAADSource != "" {
		if err := oneOf("usernameAADSource", s.UsernameAADSource, usernameSources); err != nil {
			return err
		}
	}
	if _, ok := syncDurations[s.DurationOfEmailToSync]; !ok {
		return &SettingsError{Field: "durationOfEmailToSync", Detail: fmt.Sprintf("%q is not one of userDefined, oneDay, threeDays, oneWeek, twoWeeks, oneMonth, unlimited", s.DurationOfEmailToSync)}
	}
	if _, err := s.services(); err != nil {
		return err
	}
	if s.PerAppVPNProfileID != "" && !uuidRE.MatchString(s.PerAppVPNProfileID) {
		return &SettingsError{Field: "perAppVPNProfileId", Detail: "must be the UUID of the VPN payload"}
	}
	return nil
}

// services returns the set of easServices flags.
func (s *Settings) services() (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range strings.Split(s.EASServices, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if err := oneOf("easServices", f, easServiceNames); err != nil {
			return nil, err
		}
		out[strings.ToLower(f)] = true
	}
	if out["none"] && len(out) > 1 {
		return nil, &SettingsError{Field: "easServices", Detail: "\"none\" cannot be combined with other services"}
	}
	return out, nil
}
