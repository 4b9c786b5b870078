package profile

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// Android installs escrowed identities through a device policy controller
// (DPC) or a delegated certificate installer, with
// DevicePolicyManager.installKeyPair(admin, key, chain, alias, flags): the
// document rendered here gives the DPC, per identity, a stable alias, the
// PKCS#12 and its password as CMS EnvelopedData to the device's
// registered identity — which only the device's own key opens — whether
// the user may pick it in the system's certificate chooser
// (INSTALLKEY_SET_USER_SELECTABLE), and the apps to grant it to
// (grantKeyPairToApp). The SCEP reference, when present, has its one-time
// challenge enveloped the same way.

// AndroidIdentity is one escrowed identity for an Android device.
type AndroidIdentity struct {
	SHA1, SHA256      string
	PFX               []byte
	EnvelopedPassword []byte
	Current, Expired  bool
}

// AndroidSCEP is the signing reference for a DPC that enrols over SCEP.
type AndroidSCEP struct {
	URL                 string `json:"url"`
	EnvelopedChallenge  []byte `json:"envelopedChallenge"`
	Subject             string `json:"subject"`
	RFC822Name          string `json:"rfc822Name"`
	KeySize             int    `json:"keySize"`
	CAFingerprintSHA256 string `json:"caFingerprintSha256"`
}

// AndroidInput is what RenderAndroid needs.
type AndroidInput struct {
	User, Device string
	// RecipientSHA256 names the device identity the envelopes are for.
	RecipientSHA256 string
	SCEP            *AndroidSCEP
	Identities      []AndroidIdentity
	// Grants are the package names each identity is granted to.
	Grants []string
	// UserSelectable lets the user pick the identities in the system's
	// certificate chooser.
	UserSelectable bool
	EscrowNotice   string
}

// AndroidAlias is the KeyChain alias of an escrowed certificate: stable
// across renderings, so installing again replaces the same entry.
func AndroidAlias(sha1 string) string { return "smime-" + strings.ToLower(sha1) }

var packageRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$`)

// RenderAndroid returns the DPC's JSON document.
func RenderAndroid(in AndroidInput) ([]byte, error) {
	for _, p := range in.Grants {
		if !packageRE.MatchString(p) {
			return nil, fmt.Errorf("profile: %q is not an Android package name", p)
		}
	}
	type keyPair struct {
		Alias             string   `json:"alias"`
		SHA1              string   `json:"sha1"`
		SHA256            string   `json:"sha256"`
		Current           bool     `json:"current"`
		Expired           bool     `json:"expired"`
		PKCS12            []byte   `json:"pkcs12"`
		EnvelopedPassword []byte   `json:"envelopedPassword"`
		UserSelectable    bool     `json:"userSelectable"`
		GrantTo           []string `json:"grantTo"`
	}
	doc := struct {
		Version         int          `json:"version"`
		User            string       `json:"user"`
		Device          string       `json:"device"`
		RecipientSHA256 string       `json:"recipientSha256"`
		SCEP            *AndroidSCEP `json:"scep,omitempty"`
		KeyPairs        []keyPair    `json:"keyPairs"`
		EscrowNotice    string       `json:"escrowNotice,omitempty"`
	}{Version: 1, User: in.User, Device: in.Device, RecipientSHA256: in.RecipientSHA256, SCEP: in.SCEP, EscrowNotice: in.EscrowNotice, KeyPairs: []keyPair{}}
	grants := in.Grants
	if grants == nil {
		grants = []string{}
	}
	for _, e := range in.Identities {
		if len(e.SHA1) != 40 || len(e.PFX) == 0 || len(e.EnvelopedPassword) == 0 {
			return nil, fmt.Errorf("profile: an identity lacks its thumbprint, file or enveloped password")
		}
		doc.KeyPairs = append(doc.KeyPairs, keyPair{Alias: AndroidAlias(e.SHA1), SHA1: strings.ToLower(e.SHA1), SHA256: e.SHA256,
			Current: e.Current, Expired: e.Expired, PKCS12: e.PFX, EnvelopedPassword: e.EnvelopedPassword,
			UserSelectable: in.UserSelectable, GrantTo: grants})
	}
	return json.MarshalIndent(doc, "", "  ")
}
