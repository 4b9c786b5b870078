package profile_test

import (
	"errors"
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
