//go:build !libcrypto || !cgo

package libcrypto

import "crypto"

// Enabled reports whether this build uses OpenSSL for RSA keys.
const Enabled = false

// Wrap returns key: this build has no OpenSSL binding.
func Wrap(key crypto.Signer) (crypto.Signer, error) { return key, nil }
