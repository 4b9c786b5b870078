package ca

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

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
