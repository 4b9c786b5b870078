// Package apipki is the gRPC API's own small PKI for mutual TLS: a CA of
// its own (key in the CA's key store), the server certificate and the role
// client credentials. It is separate from the S/MIME PKI, so an S/MIME
// certificate can never authenticate to the API and vice versa.
package apipki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"encoding/pem"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"

	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/internal/atomicfile"
)

// The API CA only issues the gRPC server certificate and the role client
// certificates.
const (
	// CACertFile is the API CA's certificate under the CA directory.
	CACertFile = "api_ca.crt"

	// Client credential file names under DATA/credentials/<role>/.
	ClientCertFile = "client.crt"
	ClientKeyFile  = "client.key"
	ClientCAFile   = "ca.crt"

	apiCALifetime     = 20 * 365 * 24 * time.Hour
	apiClientLifetime = 2 * 365 * 24 * time.Hour
	apiServerLifetime = 90 * 24 * time.Hour
)

// PKI holds what the gRPC server needs for mutual TLS.
type PKI struct {
	// CA is the API CA certificate; client certificates must chain to it.
	CA *x509.Certificate

	// Clients are the client certificates Ensure keeps under the
	// credentials directory, by role: the credentials serve bootstraps.
	Clients map[string]*x509.Certificate

	caKey crypto.Signer
	hosts []string
	mu    sync.Mutex
	// server is issued at start for the host names, re-issued when it nears
	// expiry, and never written to disk.
	server tls.Certificate
}

// serverRenewBefore is how long before expiry the server certificate is
// replaced (on the next handshake).
const serverRenewBefore = 14 * 24 * time.Hour

// Server returns the current server certificate, re-issuing it when it is
// within two weeks of expiry.
func (p *PKI) Server() (*tls.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.server.Leaf == nil || time.Until(p.server.Leaf.NotAfter) < serverRenewBefore {
		c, err := issueServer(p.CA, p.caKey, p.hosts)
		if err != nil {
			return nil, err
		}
		p.server = c
	}
	return &p.server, nil
}

// TLSConfig returns a server TLS config that presents the server
// certificate and verifies client certificates against the API CA.
func (p *PKI) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA)
	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.Server() },
		ClientCAs:      pool,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		MinVersion:     tls.VersionTLS12,
	}
}

// Ensure loads or creates the API CA (certificate in caDir, key in
// keys), issues a fresh server certificate for hosts, and makes sure every
// role in roles (role name → URI SAN) has client credentials in
// credDir/<role>/ (created once, renewed when less than 30 days remain).
func Ensure(caDir string, keys keystore.Store, credDir string, hosts []string, roles map[string]string) (*PKI, error) {
	caCert, caKey, err := keystore.LoadPair(keys, filepath.Join(caDir, CACertFile), keystore.API, false)
	if errors.Is(err, fs.ErrNotExist) {
		caCert, caKey, err = createAPICA(caDir, keys)
	}
	if err != nil {
		return nil, err
	}
	p := &PKI{CA: caCert, caKey: caKey, hosts: hosts, Clients: map[string]*x509.Certificate{}}
	for role, uri := range roles {
		crt, err := ensureClient(caCert, caKey, filepath.Join(credDir, role), role, uri)
		if err != nil {
			return nil, err
		}
		p.Clients[role] = crt
	}
	if _, err := p.Server(); err != nil {
		return nil, err
	}
	return p, nil
}

func createAPICA(dir string, keys keystore.Store) (*x509.Certificate, crypto.Signer, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "smimeca API CA", Organization: []string{"smimeca"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(apiCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
	}
	key, err := keys.Create(keystore.API, keystore.Spec{Type: "EC", Bits: 256})
	if err != nil {
		return nil, nil, fmt.Errorf("apipki: API CA: %w", err)
	}
	crt, err := x509util.CreateCertificate(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("apipki: create API CA: %w", err)
	}
	return crt, key, writeCertificates(filepath.Join(dir, CACertFile), crt)
}

func ensureClient(caCert *x509.Certificate, caKey crypto.Signer, dir, role, uri string) (*x509.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, ClientCertFile), filepath.Join(dir, ClientKeyFile)
	crt, err := readClient(certPath, keyPath)
	if err == nil && time.Until(crt.NotAfter) > 30*24*time.Hour && crt.CheckSignatureFrom(caCert) == nil {
		return crt, writeCertificates(filepath.Join(dir, ClientCAFile), caCert)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, fmt.Errorf("apipki: generate %s client key: %w", role, err)
	}
	tmpl, err := clientTemplate(role, uri, apiClientLifetime)
	if err != nil {
		return nil, err
	}
	if crt, err = x509util.CreateCertificate(tmpl, caCert, key.Public(), caKey); err != nil {
		return nil, fmt.Errorf("apipki: create %s client certificate: %w", role, err)
	}
	if err := keystore.WriteKeyFile(keyPath, key); err != nil {
		return nil, err
	}
	if err := writeCertificates(certPath, crt); err != nil {
		return nil, err
	}
	return crt, writeCertificates(filepath.Join(dir, ClientCAFile), caCert)
}

// readClient reads a client certificate and checks its key file (0600, a
// key); the error wraps fs.ErrNotExist when either is missing.
func readClient(certPath, keyPath string) (*x509.Certificate, error) {
	if _, err := os.Stat(certPath); err != nil {
		return nil, err
	}
	crt, err := pemutil.ReadCertificate(certPath)
	if err != nil {
		return nil, fmt.Errorf("apipki: read %s: %w", certPath, err)
	}
	if _, err := keystore.ReadKeyFile(keyPath); err != nil {
		return nil, err
	}
	return crt, nil
}

func clientTemplate(name, uri string, lifetime time.Duration) (*x509.Certificate, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("apipki: role URI %q: %w", uri, err)
	}
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: "smimeca " + name, Organization: []string{"smimeca"}},
		URIs:        []*url.URL{u},
		NotBefore:   time.Now().Add(-time.Minute),
		NotAfter:    time.Now().Add(lifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, nil
}

// SignClient issues an API client certificate for the CSR's public key:
// CN "smimeca <name>", the role URI SAN, clientAuth, for lifetime. The
// caller checked the CSR.
func (p *PKI) SignClient(csr *x509.CertificateRequest, name, roleURI string, lifetime time.Duration) (*x509.Certificate, error) {
	tmpl, err := clientTemplate(name, roleURI, lifetime)
	if err != nil {
		return nil, err
	}
	crt, err := x509util.CreateCertificate(tmpl, p.CA, csr.PublicKey, p.caKey)
	if err != nil {
		return nil, fmt.Errorf("apipki: create client certificate: %w", err)
	}
	return crt, nil
}

func issueServer(caCert *x509.Certificate, caKey crypto.Signer, hosts []string) (tls.Certificate, error) {
	key, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("apipki: generate API server key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "smimeca API", Organization: []string{"smimeca"}},
		NotBefore:   time.Now().Add(-time.Minute),
		NotAfter:    time.Now().Add(apiServerLifetime),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	seen := map[string]bool{}
	for _, h := range append([]string{"localhost", "127.0.0.1", "::1"}, hosts...) {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	crt, err := x509util.CreateCertificate(tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("apipki: create API server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{crt.Raw, caCert.Raw}, PrivateKey: key, Leaf: crt}, nil
}

// writeCertificates writes certs as a PEM bundle to path (mode 0644).
func writeCertificates(path string, certs ...*x509.Certificate) error {
	var buf []byte
	for _, c := range certs {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	if err := atomicfile.Write(path, buf, 0o644); err != nil {
		return fmt.Errorf("apipki: %w", err)
	}
	return nil
}
