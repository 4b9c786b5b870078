package main

import (
	"strings"
	"testing"
)

// The public URL derived from a listen address that other machines reach
// is flagged (serve then warns loudly: certificates would name localhost);
// loopback listeners and an explicit --public-url are not.
func TestPublicURLWarning(t *testing.T) {
	for _, tc := range []struct {
		args []string
		warn bool
		url  string
	}{
		{[]string{"--http-addr", ":8080"}, true, "http://localhost:8080"},
		{[]string{"--http-addr", "0.0.0.0:8080"}, true, "http://localhost:8080"},
		{[]string{"--http-addr", "192.0.2.10:8080"}, true, "http://192.0.2.10:8080"},
		{[]string{"--http-addr", "127.0.0.1:8080"}, false, "http://127.0.0.1:8080"},
		{[]string{"--http-addr", "localhost:8080"}, false, "http://localhost:8080"},
		{[]string{"--http-addr", ":8080", "--public-url", "https://ca.example.com/", "--cert-base-url", "http://ca.example.com"}, false, "https://ca.example.com"},
	} {
		c, err := parseServe(tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.publicURLDefaulted != tc.warn || c.publicURL != tc.url {
			t.Errorf("%v: warn %v url %q, want %v %q", tc.args, c.publicURLDefaulted, c.publicURL, tc.warn, tc.url)
		}
	}
}

// Certificates carry plain http URLs for the CRL and OCSP (RFC 5280, the
// S/MIME BR), a validity within 825 days and OCSP answers valid 8 h to
// 10 days; flags that would break that are refused naming the flag.
func TestServeRefusesNonSBRSettings(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--public-url", "https://ca.example.com"}, "--cert-base-url"},
		{[]string{"--cert-base-url", "https://ca.example.com"}, "--cert-base-url"},
		{[]string{"--cert-validity", "826d"}, "--cert-validity"},
		{[]string{"--cert-validity", "19825h"}, "825 days"},
		{[]string{"--ocsp-validity", "1h"}, "--ocsp-validity"},
		{[]string{"--ocsp-validity", "241h"}, "--ocsp-validity"},
	} {
		_, err := parseServe(append([]string{"--http-addr", "127.0.0.1:8080"}, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
	c, err := parseServe([]string{"--http-addr", "127.0.0.1:8080", "--public-url", "https://ca.example.com", "--cert-base-url", "http://ca.example.com/"})
	if err != nil || c.certBaseURL != "http://ca.example.com" {
		t.Errorf("https public URL with an http cert base: %v %+v", err, c)
	}
}
