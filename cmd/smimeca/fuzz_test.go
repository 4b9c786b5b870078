package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzManifest: any manifest text gives jobs or an error, never a panic;
// every job has a user, a file and the password of its password file, and
// relative paths stay relative to the manifest's directory.
func FuzzManifest(f *testing.F) {
	f.Add("user,file,password_file,purpose\nalice@example.com,a.p12,pw.txt,smimeEncryption\n")
	f.Add("# comment\nbob@example.com, b.p12 , pw\n")
	f.Add("a,b\n")
	f.Add("\"unterminated,x,y\n")
	f.Fuzz(func(t *testing.T, text string) {
		const base = "/manifests"
		jobs, err := parseManifest(strings.NewReader(text), base, func(p string) (string, error) { return "pw:" + p, nil })
		if err != nil {
			if jobs != nil {
				t.Fatal("jobs with an error")
			}
			return
		}
		for _, j := range jobs {
			if !filepath.IsAbs(j.file) {
				t.Fatalf("file %q is not absolute", j.file)
			}
			if j.password == "" || !strings.HasPrefix(j.password, "pw:") {
				t.Fatalf("password %q not read from its file", j.password)
			}
		}
	})
}
