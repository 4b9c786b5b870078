package profile

import (
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Windows installs PKCS#12 files through the ClientCertificateInstall
// configuration service provider: one PFXCertInstall/{UniqueID} node per
// file, whose KeyLocation, PFXCertPassword, PFXCertPasswordEncryptionType
// (and PFXKeyExportable, for software keys) are set before PFXCertBlob,
// whose Add installs the file. Formats are the CSP's DDF's: KeyLocation and
// PFXCertPasswordEncryptionType int, PFXCertPassword chr, PFXCertBlob bin
// (sent base64, SyncML format b64), PFXKeyExportable bool. Deleting a
// UniqueID node removes the certificates and keys its blob installed.

// WindowsCSPRoot is where the escrowed identities go: the user's
// certificate store, where Outlook looks for S/MIME keys.
const WindowsCSPRoot = "./User/Vendor/MSFT/ClientCertificateInstall/PFXCertInstall/"

// windowsIDPrefix marks the UniqueIDs smimeca installs, so that only ours
// are ever deleted.
const windowsIDPrefix = "smimeca-"

// Key locations (the DDF's KeyLocation; 4, a Windows Hello container, is
// not offered: it needs a container name per user).
const (
	WindowsKeyTPM         = 1 // in the TPM, failing without one
	WindowsKeyTPMFallback = 2 // in the TPM if present, else in software (default)
	WindowsKeySoftware    = 3 // in software
)

// WindowsIdentity is one escrowed identity for a Windows device.
type WindowsIdentity struct {
	SHA1 string
	PFX  []byte
	// EnvelopedPassword is the PKCS#12's password as CMS EnvelopedData to
	// the device's MDM identity certificate
	// (PFXCertPasswordEncryptionType 1).
	EnvelopedPassword []byte
}

// WindowsInput is what RenderSyncML needs.
type WindowsInput struct {
	Identities []WindowsIdentity
	// Installed are the UniqueIDs the device reports under PFXCertInstall
	// (a Get of the node); those smimeca made that are not in Identities
	// (purged from escrow) are deleted.
	Installed []string
	// KeyLocation is one of the WindowsKey constants (0: TPM with
	// fallback).
	KeyLocation int
	// Exportable, with WindowsKeySoftware only, lets the user export the
	// key (PFXKeyExportable; otherwise false).
	Exportable bool
}

// WindowsUniqueID is the PFXCertInstall node smimeca uses for an escrowed
// certificate: stable across renderings, so a rendering replaces nothing
// the device already has.
func WindowsUniqueID(sha1 string) string { return windowsIDPrefix + strings.ToLower(sha1) }

var windowsIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

type syncItem struct {
	Target string `xml:"Target>LocURI"`
	Format *struct {
		XMLNS string `xml:"xmlns,attr"`
		Value string `xml:",chardata"`
	} `xml:"Meta>Format,omitempty"`
	Data *string `xml:"Data,omitempty"`
}

type syncCmd struct {
	XMLName xml.Name
	CmdID   int      `xml:"CmdID"`
	Item    syncItem `xml:"Item"`
}

type syncAtomic struct {
	XMLName xml.Name  `xml:"Atomic"`
	CmdID   int       `xml:"CmdID"`
	Cmds    []syncCmd `xml:",any"`
}

// RenderSyncML returns one SyncML <Atomic> command (the device applies all
// of it or none) that deletes the smimeca-made nodes whose certificate is
// no longer in escrow and adds one PFXCertInstall node per identity not
// yet installed (a node the device already reports is left as it is: the
// UniqueID names the certificate). The passwords are enveloped to the
// device's MDM certificate (PFXCertPasswordEncryptionType 1); the PKCS#12
// files themselves are useless without them.
func RenderSyncML(in WindowsInput) ([]byte, error) {
	loc := in.KeyLocation
	if loc == 0 {
		loc = WindowsKeyTPMFallback
	}
	if loc < WindowsKeyTPM || loc > WindowsKeySoftware {
		return nil, fmt.Errorf("profile: key location %d: use 1 (TPM), 2 (TPM, else software) or 3 (software)", loc)
	}
	if in.Exportable && loc != WindowsKeySoftware {
		return nil, fmt.Errorf("profile: an exportable key needs key location 3 (software)")
	}
	installed := map[string]bool{}
	for _, id := range in.Installed {
		if !windowsIDRE.MatchString(id) {
			return nil, fmt.Errorf("profile: installed UniqueID %q is not a node name", id)
		}
		installed[id] = true
	}
	want := map[string]bool{}
	for _, e := range in.Identities {
		if len(e.SHA1) != 40 || len(e.PFX) == 0 || len(e.EnvelopedPassword) == 0 {
			return nil, fmt.Errorf("profile: an identity lacks its thumbprint, file or enveloped password")
		}
		want[WindowsUniqueID(e.SHA1)] = true
	}
	at := syncAtomic{CmdID: 1}
	id := 1
	cmd := func(verb, path, format, data string) {
		id++
		c := syncCmd{XMLName: xml.Name{Local: verb}, CmdID: id, Item: syncItem{Target: path}}
		if format != "" {
			c.Item.Format = &struct {
				XMLNS string `xml:"xmlns,attr"`
				Value string `xml:",chardata"`
			}{"syncml:metinf", format}
			if format != "node" {
				c.Item.Data = &data
			}
		}
		at.Cmds = append(at.Cmds, c)
	}
	var stale []string
	for n := range installed {
		if strings.HasPrefix(n, windowsIDPrefix) && !want[n] {
			stale = append(stale, n)
		}
	}
	sort.Strings(stale)
	for _, n := range stale {
		cmd("Delete", WindowsCSPRoot+n, "", "")
	}
	for _, e := range in.Identities {
		n := WindowsUniqueID(e.SHA1)
		if installed[n] {
			continue
		}
		node := WindowsCSPRoot + n
		cmd("Add", node, "node", "")
		cmd("Add", node+"/KeyLocation", "int", strconv.Itoa(loc))
		cmd("Add", node+"/PFXCertPassword", "chr", base64.StdEncoding.EncodeToString(e.EnvelopedPassword))
		cmd("Add", node+"/PFXCertPasswordEncryptionType", "int", "1")
		if loc == WindowsKeySoftware {
			cmd("Add", node+"/PFXKeyExportable", "bool", strconv.FormatBool(in.Exportable))
		}
		cmd("Add", node+"/PFXCertBlob", "b64", base64.StdEncoding.EncodeToString(e.PFX))
	}
	out, err := xml.MarshalIndent(at, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("profile: SyncML: %w", err)
	}
	return append(out, '\n'), nil
}
