package profile_test

import (
	"encoding/xml"
	"errors"
	"strings"
	"testing"

	"github.com/smimeca/smimeca/profile"
)

// FuzzParseSettings: any settings file (JSON or YAML, as the profile
// service sends it) gives settings or a *SettingsError naming the field,
// never a panic.
func FuzzParseSettings(f *testing.F) {
	f.Add([]byte("hostName: mail.example.com\nrequireSmime: true\n"))
	f.Add([]byte(`{"hostName":"h","durationOfEmailToSync":"oneMonth","easServices":"email,calendars"}`))
	f.Add([]byte("hostName: [1, 2]\n"))
	f.Add([]byte("a: &a [*a, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := profile.ParseSettings(data)
		if err != nil {
			var se *profile.SettingsError
			if !errors.As(err, &se) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			return
		}
		if s.HostName == "" {
			t.Fatal("settings without hostName accepted")
		}
	})
}

// FuzzRenderSyncML: whatever node names a device reports and whatever key
// location is asked for, the SyncML is well-formed and deletes only
// smimeca's own nodes under PFXCertInstall, or the rendering is refused.
func FuzzRenderSyncML(f *testing.F) {
	f.Add("smimeca-"+strings.Repeat("0", 40)+",other", 2, false)
	f.Add("a/b,<x>", 3, true)
	f.Add("smimeca-x]]>&amp;", 1, false)
	ids := []profile.WindowsIdentity{{SHA1: strings.Repeat("a", 40), PFX: []byte{1}, EnvelopedPassword: []byte{2}}}
	f.Fuzz(func(t *testing.T, installed string, location int, exportable bool) {
		out, err := profile.RenderSyncML(profile.WindowsInput{Identities: ids, Installed: strings.Split(installed, ","), KeyLocation: location, Exportable: exportable})
		if err != nil {
			return
		}
		var doc struct {
			Cmds []struct {
				XMLName xml.Name
				Target  string `xml:"Item>Target>LocURI"`
			} `xml:",any"`
		}
		if err := xml.Unmarshal(out, &doc); err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, out)
		}
		for _, c := range doc.Cmds {
			if c.XMLName.Local == "Delete" && !strings.HasPrefix(c.Target, profile.WindowsCSPRoot+"smimeca-") {
				t.Fatalf("deletes %s", c.Target)
			}
			if c.Target != "" && !strings.HasPrefix(c.Target, profile.WindowsCSPRoot) {
				t.Fatalf("targets %s", c.Target)
			}
		}
	})
}
