package ca

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"go.step.sm/crypto/pemutil"

	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/atomicfile"
)

// writeCertificates writes certs as a PEM bundle to path (mode 0644).
func writeCertificates(path string, certs ...*x509.Certificate) error {
	var buf []byte
	for _, c := range certs {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return writeFileAtomic(path, buf, 0o644)
}

// writeFileAtomic writes data to path through a synced temporary file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, data, mode); err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	return nil
}

// readKeyPair reads a certificate and its private key from files. It
// reports fs.ErrNotExist (wrapped) when either file is missing.
func readKeyPair(certPath, keyPath string) (*x509.Certificate, crypto.Signer, error) {
	crt, err := pemutil.ReadCertificate(certPath)
	if err != nil {
		if _, statErr := os.Stat(certPath); errors.Is(statErr, fs.ErrNotExist) {
			return nil, nil, statErr
		}
		return nil, nil, fmt.Errorf("ca: read %s: %w", certPath, err)
	}
	key, err := keystore.ReadKeyFile(keyPath)
	return crt, key, err
}

// ConnectorKeyFile is the PFX connector's key under the CA directory.
const ConnectorKeyFile = "pfx_connector.key"

// LoadOrCreateConnectorKey returns the RSA key admins encrypt PFX passwords
// to, from keys, creating it there (RSA 2048) on first start: the size
// Intune's PFX connector uses, and one RSA-OAEP decryption per import.
func LoadOrCreateConnectorKey(keys KeyStore) (crypto.Decrypter, error) {
	k, err := keys.Key(KeyConnector)
	if errors.Is(err, fs.ErrNotExist) {
		k, err = keys.Create(KeyConnector, KeySpec{Type: KeyTypeRSA, Bits: 2048})
	}
	if err != nil {
		return nil, fmt.Errorf("ca: connector key: %w", err)
	}
	d, ok := k.(crypto.Decrypter)
	if _, isRSA := k.Public().(*rsa.PublicKey); !ok || !isRSA {
		return nil, fmt.Errorf("ca: %s is not an RSA key that decrypts", keys.Location(KeyConnector))
	}
	return d, nil
}

// ReadProfileSigner reads, from a CA directory and its key store, the
// profile-signing certificate with its key (a key file readable by others
// is refused, like every key the CA reads) and the issuing CA that chains
// it to the root.
func ReadProfileSigner(dir string, keys KeyStore) (*x509.Certificate, crypto.Signer, *x509.Certificate, error) {
	crt, key, err := loadPair(keys, filepath.Join(dir, ProfileSignerCertFile), KeyProfile, false)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ca: profile signer in %s: %w", dir, err)
	}
	inter, err := pemutil.ReadCertificate(filepath.Join(dir, IntermediateCertFile))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("ca: issuing CA in %s: %w", dir, err)
	}
	return crt, key, inter, nil
}
