package main

import "testing"

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
		{[]string{"--http-addr", ":8080", "--public-url", "https://ca.example.com/"}, false, "https://ca.example.com"},
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
