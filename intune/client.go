// Package intune is smimeca's client of Microsoft Intune's services for
// third-party certificate authorities: SCEP challenge validation and its
// notifications (ScepRequestValidationFEService), the revocation feed
// (PkiConnectorFEService) and Graph's imported-PFX store
// (userPfxCertificates). It speaks the wire contract Microsoft's own client
// library (microsoft/Intune-Resource-Access, src/CsrValidation) speaks,
// authenticates as an Entra application with azidentity, and decides
// nothing: policy says what to ask and what an answer means.
package intune

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azpolicy "github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/google/uuid"
)

// Defaults of Config, those of Microsoft's public cloud.
const (
	DefaultAuthorityURL = "https://login.microsoftonline.com/"
	DefaultGraphURL     = "https://graph.microsoft.com"
	DefaultResourceURL  = "https://api.manage.microsoft.com/"
)

// Intune's service principal, whose endpoints discovery lists, and the
// services smimeca uses.
const (
	intuneAppID       = "0000000a-0000-0000-c000-000000000000"
	ServiceValidation = "ScepRequestValidationFEService"
	ServicePKI        = "PkiConnectorFEService"
	// API versions Microsoft's library sends.
	validationAPIVersion = "2018-02-20"
	pkiAPIVersion        = "5019-05-05"
)

// Bounds of the calls: a validation (a device waits for it) and any other.
const (
	DefaultValidateTimeout = 10 * time.Second
	callTimeout            = 30 * time.Second
	// maxResponseBytes bounds what is read of an answer.
	maxResponseBytes = 8 << 20
)

// ErrUnavailable wraps every failure to reach Intune or to get an answer
// it means (network, HTTP status, token, discovery, a body that is not the
// contract's): the caller cannot know what Intune decided.
var ErrUnavailable = errors.New("intune: unavailable")

// Config says which tenant and application smimeca is, and where Intune
// is.
type Config struct {
	// Tenant is the Entra tenant (ID or name, contoso.onmicrosoft.com).
	Tenant string
	// ClientID is the application (client) ID of smimeca's app registration.
	ClientID string
	// ClientSecret or ClientCertPEM (certificate and private key, PEM) is
	// its credential; exactly one is set.
	ClientSecret  string
	ClientCertPEM []byte
	// AuthorityURL, GraphURL and ResourceURL default to the public cloud's.
	AuthorityURL, GraphURL, ResourceURL string
	// CallerInfo names smimeca and its version in every call (the
	// library's "providerNameAndVersion").
	CallerInfo string
	// HTTPClient carries every call (default: one with the system trust
	// store, so SSL_CERT_FILE applies).
	HTTPClient *http.Client
	// ValidateTimeout bounds each validation attempt and each notification
	// (default DefaultValidateTimeout).
	ValidateTimeout time.Duration
}

// Client calls Intune. It is safe for concurrent use.
type Client struct {
	cfg  Config
	cred azcore.TokenCredential
	http *http.Client

	mu        sync.Mutex
	endpoints map[string]string // lower-case service name → base URI
	// lastErr and lastAt are the outcome of the last call to Intune.
	lastErr error
	lastAt  time.Time
}

// New returns a client for cfg; it makes no call until one is asked for.
func New(cfg Config) (*Client, error) {
	if cfg.Tenant == "" || cfg.ClientID == "" {
		return nil, errors.New("intune: the tenant and the client ID are required (--intune-tenant, --intune-client-id)")
	}
	if (cfg.ClientSecret == "") == (len(cfg.ClientCertPEM) == 0) {
		return nil, errors.New("intune: give exactly one credential: a client secret (--intune-client-secret-file) or a client certificate (--intune-client-cert)")
	}
	if cfg.AuthorityURL == "" {
		cfg.AuthorityURL = DefaultAuthorityURL
	}
	if cfg.GraphURL == "" {
		cfg.GraphURL = DefaultGraphURL
	}
	if cfg.ResourceURL == "" {
		cfg.ResourceURL = DefaultResourceURL
	}
	cfg.GraphURL = strings.TrimRight(cfg.GraphURL, "/")
	if cfg.CallerInfo == "" {
		cfg.CallerInfo = "smimeca"
	}
	if cfg.ValidateTimeout <= 0 {
		cfg.ValidateTimeout = DefaultValidateTimeout
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: callTimeout}
	}
	opts := azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: cfg.AuthorityURL},
		Transport: cfg.HTTPClient,
	}
	// Instance discovery asks the public cloud about the authority; a
	// sovereign cloud's or a test's authority is taken as given.
	noDiscovery := cfg.AuthorityURL != DefaultAuthorityURL
	var cred azcore.TokenCredential
	var err error
	if cfg.ClientSecret != "" {
		cred, err = azidentity.NewClientSecretCredential(cfg.Tenant, cfg.ClientID, cfg.ClientSecret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: noDiscovery})
	} else {
		certs, key, perr := azidentity.ParseCertificates(cfg.ClientCertPEM, nil)
		if perr != nil {
			return nil, fmt.Errorf("intune: the client certificate file must hold the certificate and its unencrypted private key (PEM): %w", perr)
		}
		cred, err = azidentity.NewClientCertificateCredential(cfg.Tenant, cfg.ClientID, certs, key,
			&azidentity.ClientCertificateCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: noDiscovery})
	}
	if err != nil {
		return nil, fmt.Errorf("intune: credential: %w", err)
	}
	return &Client{cfg: cfg, cred: cred, http: cfg.HTTPClient}, nil
}

// CallerInfo returns what the client says it is in every call.
func (c *Client) CallerInfo() string { return c.cfg.CallerInfo }

// token returns a bearer token for scope (azidentity caches it until it
// nears expiry).
func (c *Client) token(ctx context.Context, scope string) (string, error) {
	t, err := c.cred.GetToken(ctx, azpolicy.TokenRequestOptions{Scopes: []string{scope}})
	if err != nil {
		err = fmt.Errorf("%w: token for %s (check the tenant, the client ID, the credential and the app's permissions): %s", ErrUnavailable, scope, firstLine(err.Error()))
		c.record(err)
		return "", err
	}
	return t.Token, nil
}

// graphScope and intuneScope are the two audiences smimeca's app asks
// tokens for.
func (c *Client) graphScope() string  { return c.cfg.GraphURL + "/.default" }
func (c *Client) intuneScope() string { return c.cfg.ResourceURL + "/.default" }

// Discover returns the services' base URIs, from the cache or from Graph
// (servicePrincipals/appId=<Intune>/endpoints).
func (c *Client) Discover(ctx context.Context) (map[string]string, error) {
	m, _, err := c.discover(ctx)
	return m, err
}

// discover is Discover, saying whether the map came from the cache.
func (c *Client) discover(ctx context.Context) (endpoints map[string]string, cached bool, err error) {
	c.mu.Lock()
	cachedMap := c.endpoints
	c.mu.Unlock()
	if cachedMap != nil {
		return cachedMap, true, nil
	}
	tok, err := c.token(ctx, c.graphScope())
	if err != nil {
		return nil, false, err
	}
	u := c.cfg.GraphURL + "/v1.0/servicePrincipals/appId=" + intuneAppID + "/endpoints"
	var out struct {
		Value []struct {
			ProviderName string `json:"providerName"`
			ServiceName  string `json:"serviceName"`
			URI          string `json:"uri"`
		} `json:"value"`
	}
	if err := c.do(ctx, http.MethodGet, u, tok, nil, nil, &out); err != nil {
		return nil, false, fmt.Errorf("service discovery: %w", err)
	}
	m := map[string]string{}
	for _, v := range out.Value {
		name := v.ProviderName
		if name == "" {
			name = v.ServiceName
		}
		if name != "" && strings.HasPrefix(v.URI, "https://") {
			m[strings.ToLower(name)] = strings.TrimRight(v.URI, "/")
		}
	}
	c.mu.Lock()
	c.endpoints = m
	c.mu.Unlock()
	return m, false, nil
}

// forget drops the discovered endpoints, so that the next call discovers
// them again (a service may have moved).
func (c *Client) forget() {
	c.mu.Lock()
	c.endpoints = nil
	c.mu.Unlock()
}

// endpoint returns the base URI of service; a service missing from the
// cached endpoints is looked up again once.
func (c *Client) endpoint(ctx context.Context, service string) (string, error) {
	for {
		m, cached, err := c.discover(ctx)
		if err != nil {
			return "", err
		}
		if u, ok := m[strings.ToLower(service)]; ok {
			return u, nil
		}
		c.forget()
		if !cached {
			return "", fmt.Errorf("%w: service discovery lists no %s for this tenant (is Intune licensed and the app granted its permissions?)", ErrUnavailable, service)
		}
	}
}

// post calls service's path with body and decodes the answer into out. A
// failure to reach the service makes the next call discover it again.
func (c *Client) post(ctx context.Context, service, path, apiVersion string, body, out any) error {
	base, err := c.endpoint(ctx, service)
	if err != nil {
		return err
	}
	tok, err := c.token(ctx, c.intuneScope())
	if err != nil {
		return err
	}
	err = c.do(ctx, http.MethodPost, base+"/"+path, tok, map[string]string{"api-version": apiVersion}, body, out)
	if err != nil {
		c.forget()
	}
	return err
}

// statusError is an HTTP answer outside 2xx.
type statusError struct {
	Status int
	Body   string
}

func (e *statusError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("HTTP %d", e.Status)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, e.Body)
}

// retryable reports whether a call that failed with err may be sent once
// more: a timeout, a refused or cut connection, or a 5xx.
func retryable(err error) bool {
	var se *statusError
	if errors.As(err, &se) {
		return se.Status >= 500
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF)
}

// do sends one request with a fresh client-request-id and decodes a JSON
// answer into out (nil: discard it).
func (c *Client) do(ctx context.Context, method, url, token string, headers map[string]string, body, out any) error {
	err := c.doOnce(ctx, method, url, token, headers, body, out)
	c.record(err)
	return err
}

func (c *Client) doOnce(ctx context.Context, method, url, token string, headers map[string]string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("client-request-id", uuid.NewString())
	req.Header.Set("User-Agent", c.cfg.CallerInfo)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrUnavailable, method, redactURL(url), err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("%w: %s %s: reading the answer: %w", ErrUnavailable, method, redactURL(url), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%w: %s %s: %w", ErrUnavailable, method, redactURL(url), &statusError{Status: resp.StatusCode, Body: firstLine(string(raw))})
	}
	if out == nil || len(bytes.TrimSpace(raw)) == 0 && resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%w: %s %s: the answer is not the JSON expected: %v", ErrUnavailable, method, redactURL(url), err)
	}
	return nil
}

// record keeps the outcome of a call for Reachable.
func (c *Client) record(err error) {
	c.mu.Lock()
	c.lastErr, c.lastAt = err, time.Now()
	c.mu.Unlock()
}

// recentCall is how long the last call's outcome stands for Intune's
// reachability.
const recentCall = 5 * time.Minute

// Reachable reports whether Intune answered: the last call's outcome when
// it was recent, otherwise a token and a fresh service discovery (so an
// idle node asks Graph once per recentCall; for /healthz and doctor).
func (c *Client) Reachable(ctx context.Context) error {
	c.mu.Lock()
	err, at := c.lastErr, c.lastAt
	c.mu.Unlock()
	if !at.IsZero() && time.Since(at) < recentCall {
		return err
	}
	c.forget()
	return c.Ping(ctx)
}

// redactURL drops a URL's query (it may carry a filter with a user's
// name; never a secret, but logs need not hold it).
func redactURL(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

// firstLine returns s's first line, at most 300 bytes: enough to say what
// went wrong, bounded for logs.
func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
