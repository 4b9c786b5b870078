package keystore_test

import (
	"strings"
	"testing"

	"github.com/smimeca/smimeca/ca/keystore"
)

// A PIN in a --kms URI never reaches a message, wherever the URI puts it.
func TestRedactKMS(t *testing.T) {
	for _, uri := range []string{
		"pkcs11:token=a?pin-value=secret",
		"pkcs11:token=a;pin-value=secret?module-path=/m.so",
		"pkcs11:pin-value=secret;token=a",
		"pkcs11:token=a;PIN-VALUE=secret",
		"pkcs11:token=a;pin%2Dvalue=secret",
		"pkcs11:token=a?module-path=/m.so&pin%2dvalue=secret&max-sessions=4",
	} {
		got := keystore.RedactKMS(uri)
		if strings.Contains(got, "secret") || !strings.Contains(got, "REDACTED") || !strings.Contains(got, "token=a") {
			t.Errorf("RedactKMS(%q) = %q", uri, got)
		}
	}
}
