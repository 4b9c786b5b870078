package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/smimeca/smimeca/api"
	"github.com/smimeca/smimeca/internal/atomicfile"
	"github.com/smimeca/smimeca/internal/httplimit"
	"github.com/smimeca/smimeca/policy"
)

// assetSecretFile holds the secret DDM assets are derived from (under
// DATA/ca, 0600): every node must have the same, as they have the same CA
// directory.
const assetSecretFile = "asset.key"

// checkAssetFlags checks the asset endpoint's flags and derives its URL
// from the public URL u.
func (c *serveConfig) checkAssetFlags(u *url.URL) error {
	if c.assetAddr == "" {
		if c.assetURL != "" || c.assetTLSCert != "" || c.assetTLSKey != "" {
			return usagef("--asset-url, --asset-tls-cert and --asset-tls-key go with --asset-addr")
		}
		return nil
	}
	_, port, err := net.SplitHostPort(c.assetAddr)
	if err != nil {
		return usagef("--asset-addr %q: %v", c.assetAddr, err)
	}
	if c.assetURL == "" {
		c.assetURL = "https://" + net.JoinHostPort(u.Hostname(), port)
	}
	au, err := url.Parse(c.assetURL)
	if err != nil || au.Scheme != "https" || au.Host == "" || (au.Path != "" && au.Path != "/") {
		return usagef("--asset-url %q must be an https:// base URL without a path (Apple devices fetch assets over https only)", c.assetURL)
	}
	c.assetURL = strings.TrimRight(c.assetURL, "/")
	if (c.assetTLSCert == "") != (c.assetTLSKey == "") {
		return usagef("--asset-tls-cert and --asset-tls-key go together")
	}
	return nil
}

// assetSecret reads DATA/ca/asset.key, making it on the first start.
func assetSecret(caDir string) ([]byte, error) {
	path := filepath.Join(caDir, assetSecretFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		b = make([]byte, policy.MinAssetSecret)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		if err := atomicfile.Write(path, b, 0o600); err != nil {
			return nil, fmt.Errorf("write the asset secret: %w", err)
		}
		return b, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the asset secret: %w", err)
	}
	if len(b) < policy.MinAssetSecret {
		return nil, fmt.Errorf("%s holds %d bytes, fewer than %d: restore it from another node's CA directory", path, len(b), policy.MinAssetSecret)
	}
	return b, nil
}

// pinAssets records in the CA database what every node's assets are made
// from — the asset secret's fingerprint and the SCEP URL the SCEP asset
// names — or checks them against what the first node recorded: a device
// whose declarations one node rendered and whose assets another serves
// gets the declared bytes only when the nodes agree on both.
func pinAssets(store interface {
	PinSetting(name string, value []byte) ([]byte, error)
}, secret []byte, scepURL string) error {
	id := sha256.Sum256(append([]byte("smimeca ddm asset secret id\x00"), secret...))
	got, err := store.PinSetting("ddm-asset-secret", id[:16])
	if err != nil {
		return err
	}
	if !bytes.Equal(got, id[:16]) {
		return fmt.Errorf("DATA/ca/%s is not the asset secret the other nodes on this database use (their assets would not match the declarations they render): copy it from a node that serves assets", assetSecretFile)
	}
	if got, err = store.PinSetting("ddm-scep-url", []byte(scepURL)); err != nil {
		return err
	}
	if string(got) != scepURL {
		return fmt.Errorf("--public-url gives the SCEP URL %s, but the other nodes on this database serve DDM assets naming %s: give every node the same --public-url (the load balancer's)", scepURL, got)
	}
	return nil
}

// assetServer is the DDM asset endpoint: HTTPS that asks every client for
// a certificate (the device's identity, checked by the handler against the
// device's registration), with the SCEP listener's limits.
func (a *app) assetServer(assets api.AssetPolicy, serverCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) (*http.Server, error) {
	cfg, logger := a.cfg, a.log
	if cfg.assetTLSCert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.assetTLSCert, cfg.assetTLSKey)
		if err != nil {
			return nil, usagef("--asset-tls-cert/--asset-tls-key: %v", err)
		}
		serverCert = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil }
	} else {
		logger.Warn("asset endpoint: serving the gRPC API's certificate (smimeca's API CA): devices must trust " +
			filepath.Join(cfg.dataDir, "ca", "api_ca.crt") + ", or pass --asset-tls-cert/--asset-tls-key")
	}
	limits := httplimit.Limits{MaxInFlight: cfg.scepMaxInFlight, RatePerIP: cfg.scepRatePerIP, BurstPerIP: cfg.scepBurstPerIP,
		MaxPerIP: cfg.scepMaxPerIP, MaxBodyBytes: 1, BodyTimeout: cfg.bodyTimeout, TrustedProxies: cfg.trustedPrefixes}
	return &http.Server{
		Handler: httplimit.New(api.AssetHandler(assets, policy.EncodingLegacy, logger), nil, limits),
		TLSConfig: &tls.Config{
			GetCertificate: serverCert,
			// Any certificate: the handler accepts only the one registered
			// for the device the URL names (the handshake proved its key).
			ClientAuth: tls.RequireAnyClientCert,
			MinVersion: tls.VersionTLS12,
		},
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}, nil
}
