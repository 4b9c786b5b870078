package pfxconnector

import (
	"crypto"
	"crypto/rsa"
	"errors"
	"fmt"
	"io/fs"

	"github.com/smimeca/smimeca/ca/keystore"
)

// LoadOrCreateKey returns the connector's RSA key — the one admins encrypt
// PFX passwords to (RSA-OAEP, as Intune's PFX connector does) — from keys,
// creating it there (RSA 2048, the size Intune's connector uses) on first
// start.
func LoadOrCreateKey(keys keystore.Store) (crypto.Decrypter, error) {
	k, err := keys.Key(keystore.Connector)
	if errors.Is(err, fs.ErrNotExist) {
		k, err = keys.Create(keystore.Connector, keystore.Spec{Type: "RSA", Bits: 2048})
	}
	if err != nil {
		return nil, fmt.Errorf("pfxconnector: connector key: %w", err)
	}
	d, ok := k.(crypto.Decrypter)
	if _, isRSA := k.Public().(*rsa.PublicKey); !ok || !isRSA {
		return nil, fmt.Errorf("pfxconnector: %s is not an RSA key that decrypts", keys.Location(keystore.Connector))
	}
	return d, nil
}
