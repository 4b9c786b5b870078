package ca

import "github.com/smimeca/smimeca/ca/keystore"

// The CA's key names and key store are package keystore's; these names are
// kept for the CA's callers.
type (
	// KeyName names one of the CA's private keys (keystore.Name).
	KeyName = keystore.Name
	// KeyStore is where the CA's keys are made and used (keystore.Store).
	KeyStore = keystore.Store
	// KeySpec is the kind of key KeyStore.Create makes (keystore.Spec).
	KeySpec = keystore.Spec
	// FileKeys is the key store of PEM files (keystore.Files).
	FileKeys = keystore.Files
)

// The CA's private keys (keystore's names).
const (
	KeyRoot      = keystore.Root
	KeyIssuing   = keystore.Issuing
	KeyRA        = keystore.RA
	KeyProfile   = keystore.Profile
	KeyOCSP      = keystore.OCSP
	KeyConnector = keystore.Connector
	KeyAPI       = keystore.API
	// KMSSoft is the --kms value of key files (keystore.KMSSoft).
	KMSSoft = keystore.KMSSoft
)

// KeyNames lists every key a KeyStore holds for the CA, root first.
var KeyNames = keystore.Names

// OpenKeyStore opens the key store kms names (keystore.Open).
func OpenKeyStore(kms, dir, pin string) (KeyStore, error) { return keystore.Open(kms, dir, pin) }

// RedactKMS returns a --kms value without its PIN (keystore.RedactKMS).
func RedactKMS(raw string) string { return keystore.RedactKMS(raw) }
