package ca

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
	"path/filepath"
	"sync"
	"time"

	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/x509util"
)

// The API PKI is separate from the S/MIME PKI: its CA only issues the gRPC
// server certificate and the role client certificates, so an S/MIME
// certificate can never authenticate to the API and vice versa.
const (
	apiCACertFile = "api_ca.crt"
	apiCAKeyFile  = "api_ca.key"

	// Client credential file names under DATA/credentials/<role>/.
	ClientCertFile = "client.crt"
	ClientKeyFile  = "client.key"
	ClientCAFile   = "ca.crt"

	apiCALifetime     = 20 * 365 * 24 * time.Hour
	apiClientLifetime = 2 * 365 * 24 * time.Hour
	apiServerLifetime = 90 * 24 * time.Hour
)

// APIPKI holds what the gRPC server needs for mutual TLS.
type APIPKI struct {
	// CA is the API CA certificate; client certificates must chain to it.
	CA *x509.Certificate

	// Clients are the client certificates EnsureAPIPKI keeps under the
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
func (p *APIPKI) Server() (*tls.Certificate, error) {
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
func (p *APIPKI) TLSConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.CA)
	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.Server() },
		ClientCAs:      pool,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		MinVersion:     tls.VersionTLS12,
	}
}

// EnsureAPIPKI loads or creates the API CA (certificate in caDir, key in
// keys), issues a fresh server certificate for hosts, and makes sure every
// role in roles (role name → URI SAN) has client credentials in
// credDir/<role>/ (created once, renewed when less than 30 days remain).
func EnsureAPIPKI(caDir string, keys KeyStore, credDir string, hosts []string, roles map[string]string) (*APIPKI, error) {
	caCert, caKey, err := loadPair(keys, filepath.Join(caDir, apiCACertFile), KeyAPI, false)
	if errors.Is(err, fs.ErrNotExist) {
		caCert, caKey, err = createAPICA(caDir, keys)
	}
	if err != nil {
		return nil, err
	}
	p := &APIPKI{CA: caCert, caKey: caKey, hosts: hosts, Clients: map[string]*x509.Certificate{}}
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

func createAPICA(dir string, keys KeyStore) (*x509.Certificate, crypto.Signer, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "smimeca API CA", Organization: []string{"smimeca"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(apiCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
	}
	return issuePair(keys, KeyAPI, KeySpec{Type: KeyTypeEC, Bits: 256}, "API CA", filepath.Join(dir, apiCACertFile), tmpl, nil, nil)
}

func ensureClient(caCert *x509.Certificate, caKey crypto.Signer, dir, role, uri string) (*x509.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, ClientCertFile), filepath.Join(dir, ClientKeyFile)
	crt, _, err := readKeyPair(certPath, keyPath)
	if err == nil && time.Until(crt.NotAfter) > 30*24*time.Hour && crt.CheckSignatureFrom(caCert) == nil {
		return crt, writeCertificates(filepath.Join(dir, ClientCAFile), caCert)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return nil, fmt.Errorf("ca: generate %s client key: %w", role, err)
	}
	tmpl, err := clientTemplate(role, uri, apiClientLifetime)
	if err != nil {
		return nil, err
	}
	if crt, err = createAndStore(role+" client certificate", certPath, keyPath, tmpl, caCert, key, caKey); err != nil {
		return nil, err
	}
	return crt, writeCertificates(filepath.Join(dir, ClientCAFile), caCert)
}

func clientTemplate(name, uri string, lifetime time.Duration) (*x509.Certificate, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("ca: role URI %q: %w", uri, err)
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
func (p *APIPKI) SignClient(csr *x509.CertificateRequest, name, roleURI string, lifetime time.Duration) (*x509.Certificate, error) {
	tmpl, err := clientTemplate(name, roleURI, lifetime)
	if err != nil {
		return nil, err
	}
	crt, err := x509util.CreateCertificate(tmpl, p.CA, csr.PublicKey, p.caKey)
	if err != nil {
		return nil, fmt.Errorf("ca: create client certificate: %w", err)
	}
	return crt, nil
}

func issueServer(caCert *x509.Certificate, caKey crypto.Signer, hosts []string) (tls.Certificate, error) {
	key, err := keyutil.GenerateSigner("EC", "P-256", 0)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: generate API server key: %w", err)
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
		return tls.Certificate{}, fmt.Errorf("ca: create API server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{crt.Raw, caCert.Raw}, PrivateKey: key, Leaf: crt}, nil
}
