package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pins is a CA database's pinned settings, as nosqlstore keeps them.
type pins map[string][]byte

func (p pins) PinSetting(name string, value []byte) ([]byte, error) {
	if v, ok := p[name]; ok {
		return v, nil
	}
	p[name] = value
	return value, nil
}

// The asset secret is made once (0600, 256 bits) and kept; a node whose
// secret or SCEP URL is not the one its database has seen refuses to serve
// assets, naming the file to copy or the flag; a short file is refused.
func TestAssetSecretIsSharedOrRefused(t *testing.T) {
	dir := t.TempDir()
	a, err := assetSecret(dir)
	if err != nil || len(a) != 32 {
		t.Fatalf("%d bytes, %v", len(a), err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, assetSecretFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o", fi.Mode().Perm())
	}
	again, _ := assetSecret(dir)
	if !bytes.Equal(a, again) {
		t.Error("the secret changed across starts")
	}
	db := pins{}
	const url = "http://ca.example.com/scep"
	if err := pinAssets(db, a, url); err != nil {
		t.Fatal(err)
	}
	if err := pinAssets(db, a, url); err != nil {
		t.Errorf("the same secret again: %v", err)
	}
	other, _ := assetSecret(t.TempDir())
	if err := pinAssets(db, other, url); err == nil || !strings.Contains(err.Error(), assetSecretFile) {
		t.Errorf("another node's secret: %v", err)
	}
	if err := pinAssets(db, a, "http://node2.example.com/scep"); err == nil || !strings.Contains(err.Error(), "--public-url") {
		t.Errorf("another node's SCEP URL: %v", err)
	}
	if bytes.Contains(db["ddm-asset-secret"], a[:8]) {
		t.Error("the database holds the secret, not a fingerprint")
	}
	short := t.TempDir()
	os.WriteFile(filepath.Join(short, assetSecretFile), []byte("short"), 0o600)
	if _, err := assetSecret(short); err == nil {
		t.Error("a 5-byte secret was taken")
	}
}

// --asset-url defaults from the public URL's host and the asset port, and
// must be an https base; the asset flags need --asset-addr.
func TestAssetFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		url  string
		bad  string
	}{
		{args: []string{"--public-url", "http://ca.example.com:8080", "--asset-addr", ":8443"}, url: "https://ca.example.com:8443"},
		{args: []string{"--asset-addr", ":8443", "--asset-url", "https://assets.example.com/"}, url: "https://assets.example.com"},
		{args: []string{"--asset-addr", ":8443", "--asset-url", "http://assets.example.com"}, bad: "--asset-url"},
		{args: []string{"--asset-url", "https://assets.example.com"}, bad: "--asset-addr"},
		{args: []string{"--asset-addr", ":8443", "--asset-tls-cert", "c.pem"}, bad: "--asset-tls-key"},
	} {
		c, err := parseServe(append([]string{"--data", t.TempDir()}, tc.args...))
		switch {
		case tc.bad != "" && (err == nil || !strings.Contains(err.Error(), tc.bad)):
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.bad)
		case tc.bad == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.bad == "" && c.assetURL != tc.url:
			t.Errorf("%v: asset URL %q, want %q", tc.args, c.assetURL, tc.url)
		}
	}
}
