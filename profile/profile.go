// Package profile renders an Apple configuration profile (.mobileconfig)
// for one user's device from a bundle and e-mail settings: the CA chain,
// one SCEP payload for the device's own S/MIME signing identity, one
// PKCS#12 payload per escrowed encryption certificate, and an Exchange
// ActiveSync account with S/MIME settings, as Intune's iOS e-mail profile
// does. It can sign the profile (CMS SignedData, SHA-256).
//
// It is a leaf: it decrypts no key and does no I/O; callers hand it the
// bundle they fetched and write what it returns.
package profile

import (
	"crypto"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	"github.com/smallstep/pkcs7"
	"howett.net/plist"
)

var uuidRE = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)

// SCEPRef is how the device enrols its own signing identity.
type SCEPRef struct {
	URL        string
	Challenge  string
	CommonName string
	RFC822Name string
	// KeySize, KeyType ("RSA") and AppleKeyUsage (AppleKeyUsage of the
	// certificate's key usage) are the SCEP payload's key parameters.
	KeySize       int
	KeyType       string
	AppleKeyUsage int
	// CAFingerprint is the SHA-1 of the certificate GetCACert's chain ends
	// in (the root by default): Apple's client matches it against the top
	// of the chain it builds from GetCACert's certificates.
	CAFingerprint []byte
	// CAName is sent as the SCEP "Name" (optional).
	CAName string
}

// AppleKeyUsage returns the SCEP payload's "Key Usage" for a certificate's
// key usage: 1 signing (digitalSignature), 4 encryption (keyEncipherment),
// 5 both.
func AppleKeyUsage(ku x509.KeyUsage) int {
	n := 0
	if ku&x509.KeyUsageDigitalSignature != 0 {
		n |= 1
	}
	if ku&x509.KeyUsageKeyEncipherment != 0 {
		n |= 4
	}
	return n
}

// Identity is one re-wrapped encryption certificate.
type Identity struct {
	PFX      []byte
	Password string
	SHA1     string
	// Current marks the certificate for new mail.
	Current bool
	// Label names the certificate on the device (e.g. its expiry).
	Label string
}

// Bundle is what the profile carries for one user and one device.
type Bundle struct {
	User         string
	Device       string
	SCEP         SCEPRef
	Encryption   []Identity
	Root         *x509.Certificate
	Intermediate *x509.Certificate
	// EscrowNotice, when set, tells the user that the encryption keys are
	// escrowed; it goes into the profile's description.
	EscrowNotice string
}

// UserInfo are the per-user directory values the settings may draw on;
// smimeca holds no directory, so the caller gives them. Empty UPN and
// PrimarySMTP default to the bundle's user address.
type UserInfo struct {
	UPN            string
	PrimarySMTP    string
	SAMAccountName string
	FullDomain     string
	NetBIOSDomain  string
}

// Input is everything Render needs.
type Input struct {
	Bundle       Bundle
	Settings     *Settings
	User         UserInfo
	Organization string
	// Encrypt, when set, encrypts the payloads for one device: Render
	// then puts the PayloadContent array, as an XML property list,
	// through Encrypt into EncryptedPayloadContent (IsEncrypted true) and
	// leaves PayloadContent out, so that only the device can read the
	// payloads (Apple's encrypted profiles). The caller supplies it (CMS
	// EnvelopedData to the device's identity certificate); profile holds
	// no key.
	Encrypt func(payloads []byte) ([]byte, error)
}

// Payload kinds, part of each payload's stable identity.
const (
	kindRoot  = "root"
	kindInter = "intermediate"
	kindSCEP  = "scep"
	kindP12   = "pkcs12"
	kindEAS   = "eas"
	kindTop   = "profile"
)

// stableUUID derives a payload UUID from the user, device, kind and (for
// PKCS#12 payloads) the certificate thumbprint, so that rendering again
// replaces the payloads on the device instead of adding new ones.
func stableUUID(user, device, kind, thumb string) string {
	h := sha1.Sum([]byte("smimeca-profile\x00" + strings.ToLower(user) + "\x00" + device + "\x00" + kind + "\x00" + thumb))
	h[6] = (h[6] & 0x0f) | 0x50 // version 5 (name-based, SHA-1)
	h[8] = (h[8] & 0x3f) | 0x80 // RFC 4122 variant
	x := strings.ToUpper(hex.EncodeToString(h[:16]))
	return x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
}

func identifier(user, device, kind, thumb string) string {
	h := sha1.Sum([]byte(strings.ToLower(user) + "\x00" + device))
	id := "com.smimeca." + hex.EncodeToString(h[:8]) + "." + kind
	if thumb != "" {
		id += "." + thumb[:16]
	}
	return id
}

type dict = map[string]any

func payload(b *Bundle, typ, kind, thumb, name string) dict {
	return dict{
		"PayloadType":        typ,
		"PayloadVersion":     1,
		"PayloadIdentifier":  identifier(b.User, b.Device, kind, thumb),
		"PayloadUUID":        stableUUID(b.User, b.Device, kind, thumb),
		"PayloadDisplayName": name,
	}
}

// Render returns the profile as an XML property list.
func Render(in Input) ([]byte, error) {
	b, s := &in.Bundle, in.Settings
	if s == nil {
		return nil, fmt.Errorf("profile: no settings")
	}
	if b.User == "" || b.Device == "" || b.Root == nil || b.Intermediate == nil || b.SCEP.URL == "" {
		return nil, fmt.Errorf("profile: the bundle lacks user, device, CA chain or SCEP URL")
	}
	if in.Bundle.SCEP.KeySize == 0 || in.Bundle.SCEP.KeyType == "" || in.Bundle.SCEP.AppleKeyUsage == 0 {
		return nil, fmt.Errorf("profile: the SCEP reference lacks the key size, type or usage")
	}
	var content []any

	root := payload(b, "com.apple.security.root", kindRoot, "", b.Root.Subject.CommonName)
	root["PayloadContent"] = b.Root.Raw
	root["PayloadCertificateFileName"] = "root.cer"
	inter := payload(b, "com.apple.security.pkcs1", kindInter, "", b.Intermediate.Subject.CommonName)
	inter["PayloadContent"] = b.Intermediate.Raw
	inter["PayloadCertificateFileName"] = "issuing-ca.cer"
	content = append(content, root, inter)

	scep := payload(b, "com.apple.security.scep", kindSCEP, "", "S/MIME signing identity")
	sc := dict{
		"URL":              b.SCEP.URL,
		"Subject":          []any{[]any{[]any{"CN", b.SCEP.CommonName}}},
		"SubjectAltName":   dict{"rfc822Name": b.SCEP.RFC822Name},
		"Challenge":        b.SCEP.Challenge,
		"Keysize":          b.SCEP.KeySize,
		"Key Type":         b.SCEP.KeyType,
		"Key Usage":        b.SCEP.AppleKeyUsage,
		"Retries":          3,
		"RetryDelay":       10,
		"KeyIsExtractable": false,
	}
	if len(b.SCEP.CAFingerprint) > 0 {
		sc["CAFingerprint"] = b.SCEP.CAFingerprint
	}
	if b.SCEP.CAName != "" {
		sc["Name"] = b.SCEP.CAName
	}
	scep["PayloadContent"] = sc
	content = append(content, scep)
	scepUUID := scep["PayloadUUID"].(string)

	var currentUUID string
	for _, id := range b.Encryption {
		label := id.Label
		if label == "" {
			label = id.SHA1
		}
		p := payload(b, "com.apple.security.pkcs12", kindP12, id.SHA1, "S/MIME encryption "+label)
		p["PayloadContent"] = id.PFX
		p["Password"] = id.Password
		p["PayloadCertificateFileName"] = id.SHA1 + ".p12"
		// KeyIsExtractable and AllowAllAppsAccess exist for PKCS#12
		// payloads on macOS only; Apple's schema has them n/a on iOS.
		if id.Current {
			currentUUID = p["PayloadUUID"].(string)
		}
		content = append(content, p)
	}

	eas, err := easPayload(in, scepUUID, currentUUID)
	if err != nil {
		return nil, err
	}
	content = append(content, eas)

	top := payload(b, "Configuration", kindTop, "", "E-mail with S/MIME: "+b.User)
	if in.Encrypt != nil {
		inner, err := plist.Marshal(content, plist.XMLFormat)
		if err != nil {
			return nil, fmt.Errorf("profile: encode payloads: %w", err)
		}
		ct, err := in.Encrypt(inner)
		clear(inner)
		if err != nil {
			return nil, fmt.Errorf("profile: encrypt payloads: %w", err)
		}
		top["IsEncrypted"] = true
		top["EncryptedPayloadContent"] = ct
	} else {
		top["PayloadContent"] = content
	}
	if in.Organization != "" {
		top["PayloadOrganization"] = in.Organization
	}
	desc := "Exchange account " + b.User + " with S/MIME signing and encryption identities, issued by smimeca."
	if b.EscrowNotice != "" {
		desc += " " + b.EscrowNotice
	}
	top["PayloadDescription"] = desc
	out, err := plist.MarshalIndent(top, plist.XMLFormat, "\t")
	if err != nil {
		return nil, fmt.Errorf("profile: encode plist: %w", err)
	}
	return out, nil
}

// serviceKeys name each easServices flag's keys: the profile's
// com.apple.eas.account Enable* and the declaration's *ServiceActive.
var serviceKeys = []struct{ flag, profile, ddm string }{
	{"email", "EnableMail", "Mail"}, {"contacts", "EnableContacts", "Contacts"}, {"calendars", "EnableCalendars", "Calendar"},
	{"reminders", "EnableReminders", "Reminders"}, {"notes", "EnableNotes", "Notes"},
}

// easPayload is the com.apple.eas.account payload.
func easPayload(in Input, scepUUID, currentUUID string) (dict, error) {
	b, s := &in.Bundle, in.Settings
	name := s.AccountName
	if name == "" {
		name = "Exchange"
	}
	p := payload(b, "com.apple.eas.account", kindEAS, "", name)
	p["Host"] = s.HostName
	p["SSL"] = *s.RequireSSL
	p["OAuth"] = s.UseOAuth

	upn, smtp := in.User.UPN, in.User.PrimarySMTP
	if upn == "" {
		upn = b.User
	}
	if smtp == "" {
		smtp = b.User
	}
	src := s.UsernameSource
	if s.UsernameAADSource != "" {
		src = s.UsernameAADSource
	}
	switch src {
	case "userPrincipalName":
		p["UserName"] = upn
	case "primarySmtpAddress":
		p["UserName"] = smtp
	case "samAccountName":
		if in.User.SAMAccountName == "" {
			return nil, &SettingsError{Field: "usernameAADSource", Detail: "samAccountName needs the user's sAMAccountName (--sam-account-name)"}
		}
		domain := s.CustomDomainName
		if domain == "" {
			domain = in.User.FullDomain
			if s.UserDomainNameSource == "netBiosDomainName" {
				domain = in.User.NetBIOSDomain
			}
		}
		if domain == "" {
			return nil, &SettingsError{Field: "userDomainNameSource", Detail: "a domain is needed for DOMAIN\\user: set customDomainName or pass the user's domain"}
		}
		p["UserName"] = domain + `\` + in.User.SAMAccountName
	}
	if s.EmailAddressSource == "userPrincipalName" {
		p["EmailAddress"] = upn
	} else {
		p["EmailAddress"] = smtp
	}
	if s.AuthenticationMethod == "certificate" {
		p["PayloadCertificateUUID"] = scepUUID
	}

	services, _ := s.services()
	for _, svc := range serviceKeys {
		p[svc.profile] = services[svc.flag]
		p[svc.profile+"UserOverridable"] = s.EASServicesUserOverrideEnabled
	}

	if s.RequireSmime {
		p["SMIMESigningEnabled"] = s.SmimeSigningEnabled
		p["SMIMESigningUserOverrideable"] = s.SmimeSigningUserOverrideEnabled
		if s.SigningCertificateType == "certificate" {
			p["SMIMESigningCertificateUUID"] = scepUUID
			p["SMIMESigningCertificateUUIDUserOverrideable"] = s.SmimeSigningCertificateUserOverrideEnabled
		}
		p["SMIMEEncryptByDefault"] = s.SmimeEncryptByDefaultEnabled
		p["SMIMEEncryptByDefaultUserOverrideable"] = s.SmimeEncryptByDefaultUserOverrideEnabled
		p["SMIMEEnableEncryptionPerMessageSwitch"] = s.SmimeEnablePerMessageSwitch
		if s.EncryptionCertificateType == "certificate" && currentUUID != "" {
			p["SMIMEEncryptionCertificateUUID"] = currentUUID
			p["SMIMEEncryptionCertificateUUIDUserOverrideable"] = s.SmimeEncryptionCertificateUserOverrideEnabled
		}
	}
	if d := syncDurations[s.DurationOfEmailToSync]; d >= 0 {
		p["MailNumberOfPastDaysToSync"] = d
	}
	p["PreventMove"] = s.BlockMovingMessagesToOtherEmailAccounts
	p["PreventAppSheet"] = s.BlockSendingEmailFromThirdPartyApps
	p["disableMailRecentsSyncing"] = s.BlockSyncingRecentlyUsedEmailAddresses
	if s.PerAppVPNProfileID != "" {
		p["VPNUUID"] = s.PerAppVPNProfileID
	}
	return p, nil
}

// Sign wraps a rendered profile in CMS SignedData (content attached,
// SHA-256 — the pkcs7 library's default would be SHA-1), with the signer's
// chain included so devices can build the path to a trusted root.
func Sign(profile []byte, signer *x509.Certificate, key crypto.Signer, chain []*x509.Certificate) ([]byte, error) {
	sd, err := pkcs7.NewSignedData(profile)
	if err != nil {
		return nil, fmt.Errorf("profile: sign: %w", err)
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	if err := sd.AddSignerChain(signer, key, chain, pkcs7.SignerInfoConfig{}); err != nil {
		return nil, fmt.Errorf("profile: sign: %w", err)
	}
	der, err := sd.Finish()
	if err != nil {
		return nil, fmt.Errorf("profile: sign: %w", err)
	}
	return der, nil
}
