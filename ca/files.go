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
)

// keyFileMode is the permission of every private key file the CA writes.
const keyFileMode = 0o600

// writeCertificates writes certs as a PEM bundle to path (mode 0644).
func writeCertificates(path string, certs ...*x509.Certificate) error {
	var buf []byte
	for _, c := range certs {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return writeFileAtomic(path, buf, 0o644)
}

// writeKey writes a private key as PKCS#8 PEM to path with mode 0600.
func writeKey(path string, key crypto.PrivateKey) error {
	block, err := pemutil.Serialize(key, pemutil.WithPKCS8(true))
	if err != nil {
		return fmt.Errorf("ca: serialize key for %s: %w", filepath.Base(path), err)
	}
	return writeFileAtomic(path, pem.EncodeToMemory(block), keyFileMode)
}

// writeFileAtomic writes data to a temporary file next to path and renames
// it into place, so that a crash never leaves a half-written file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("ca: create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("ca: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("ca: write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("ca: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("ca: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("ca: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("ca: write %s: %w", path, err)
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
	key, err := readKeyFile(keyPath)
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
