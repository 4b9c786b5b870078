// Package intunemock is a conformance mock of the Microsoft services
// smimeca calls for Intune, over HTTPS with its own CA: the Entra token
// endpoint (with its OpenID metadata), Graph's service discovery and
// userPfxCertificates, Intune's ScepActions (validateRequest and the two
// notifications) and its revocation feed. It checks what Microsoft's client
// library sends (bearer token of the right audience, api-version,
// client-request-id, the bodies' fields) and injects the failures of that
// library's test matrix. A test fixture only.
package intunemock

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/scep/x509util"
)

// Tenant, client ID and secret the mock accepts.
const (
	Tenant   = "contoso.onmicrosoft.com"
	ClientID = "11111111-2222-3333-4444-555555555555"
	Secret   = "mock-client-secret"
)

// Notification is a success or failure notification the mock received.
type Notification struct {
	Success       bool
	TransactionID string
	CSR           []byte
	// Success notifications.
	Thumbprint, Serial, Expiry, Issuer string
	// Failure notifications.
	HResult     int64
	Description string
}

// Mock is a running mock. Its fields inject failures; set them before the
// calls they affect (they are read under the mock's lock).
type Mock struct {
	srv *httptest.Server
	// URL is the mock's base URL (https://127.0.0.1:port).
	URL string
	// CAFile is a PEM file with the mock's TLS certificate, for
	// SSL_CERT_FILE.
	CAFile string

	mu sync.Mutex
	// TokenStatus, when not 0, is the token endpoint's HTTP status.
	TokenStatus int
	// Missing lists services discovery leaves out.
	Missing []string
	// ValidateStatus, SuccessStatus: HTTP status of those calls (0: 200).
	ValidateStatus, SuccessStatus int
	// ValidateDelay delays validateRequest's answer.
	ValidateDelay time.Duration
	// SuccessCode, when set, is the success notification's code.
	SuccessCode string
	// challenges maps a challenge to the code validateRequest answers.
	challenges map[string]string

	validations   int
	notifications []Notification
	revocations   []revocationRequest
	results       []RevocationResult
	pfx           map[string]UserPFX
	nextID        int
	scopes        map[string]int
}

type revocationRequest struct {
	RequestContext string `json:"requestContext"`
	SerialNumber   string `json:"serialNumber"`
	IssuerName     string `json:"issuerName"`
}

// RevocationResult is an uploaded revocation result.
type RevocationResult struct {
	RequestContext string `json:"requestContext"`
	Succeeded      bool   `json:"succeeded"`
	ErrorCode      int    `json:"errorCode"`
	ErrorMessage   string `json:"errorMessage"`
}

// UserPFX is a stored userPFXCertificate. The mock spells the wire format
// out itself rather than reusing package intune's types, so that a wrong
// field name on either side fails the tests instead of agreeing with itself.
type UserPFX struct {
	ID                   string    `json:"id"`
	Thumbprint           string    `json:"thumbprint"`
	IntendedPurpose      string    `json:"intendedPurpose"`
	UserPrincipalName    string    `json:"userPrincipalName"`
	StartDateTime        time.Time `json:"startDateTime"`
	ExpirationDateTime   time.Time `json:"expirationDateTime"`
	ProviderName         string    `json:"providerName"`
	KeyName              string    `json:"keyName"`
	PaddingScheme        string    `json:"paddingScheme"`
	EncryptedPfxBlob     []byte    `json:"encryptedPfxBlob"`
	EncryptedPfxPassword string    `json:"encryptedPfxPassword"`
}

// Start starts a mock; it stops with the test.
func Start(t testing.TB) *Mock {
	t.Helper()
	m := &Mock{challenges: map[string]string{}, pfx: map[string]UserPFX{}, scopes: map[string]int{}}
	m.srv = httptest.NewTLSServer(http.HandlerFunc(m.serve))
	t.Cleanup(m.srv.Close)
	m.URL = m.srv.URL
	m.CAFile = filepath.Join(t.TempDir(), "intune-mock-ca.pem")
	if err := os.WriteFile(m.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

// Client returns an HTTP client that trusts the mock.
func (m *Mock) Client() *http.Client { return m.srv.Client() }

// Challenge returns a challenge for which validateRequest answers code
// ("Success", "ChallengeExpired", …).
func (m *Mock) Challenge(code string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := fmt.Sprintf("intune-challenge-%d-%s", len(m.challenges), code)
	m.challenges[c] = code
	return c
}

// Set runs f with the mock locked, to set its failure fields.
func (m *Mock) Set(f func(m *Mock)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m)
}

// Validations returns how many validateRequest calls arrived.
func (m *Mock) Validations() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.validations
}

// Notifications returns the notifications received, in order.
func (m *Mock) Notifications() []Notification {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Notification(nil), m.notifications...)
}

// QueueRevocation adds a revocation request to the feed.
func (m *Mock) QueueRevocation(requestContext, serialHex, issuerName string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.revocations = append(m.revocations, revocationRequest{RequestContext: requestContext, SerialNumber: serialHex, IssuerName: issuerName})
}

// Results returns the revocation results uploaded.
func (m *Mock) Results() []RevocationResult {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]RevocationResult(nil), m.results...)
}

// PFX returns the stored userPFXCertificates.
func (m *Mock) PFX() []UserPFX {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []UserPFX
	for _, p := range m.pfx {
		out = append(out, p)
	}
	return out
}

// Scopes returns how many tokens were issued per scope.
func (m *Mock) Scopes() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for k, v := range m.scopes {
		out[k] = v
	}
	return out
}

func (m *Mock) serve(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/"+Tenant+"/v2.0/.well-known/openid-configuration":
		m.openID(w)
	case p == "/"+Tenant+"/oauth2/v2.0/token":
		m.token(w, r)
	case p == "/v1.0/servicePrincipals/appId=0000000a-0000-0000-c000-000000000000/endpoints":
		if m.authorized(w, r, "graph") {
			m.discovery(w)
		}
	case strings.HasPrefix(p, "/svc/validation/ScepActions/"):
		if m.authorized(w, r, "intune") && m.checkHeaders(w, r, "2018-02-20") {
			m.scepAction(w, r, strings.TrimPrefix(p, "/svc/validation/ScepActions/"))
		}
	case strings.HasPrefix(p, "/svc/pki/CertificateAuthorityRequests/"):
		if m.authorized(w, r, "intune") && m.checkHeaders(w, r, "5019-05-05") {
			m.revocationAction(w, r, strings.TrimPrefix(p, "/svc/pki/CertificateAuthorityRequests/"))
		}
	case strings.HasPrefix(p, "/beta/deviceManagement/userPfxCertificates"):
		if m.authorized(w, r, "graph") {
			m.userPFX(w, r, strings.TrimPrefix(strings.TrimPrefix(p, "/beta/deviceManagement/userPfxCertificates"), "/"))
		}
	default:
		http.Error(w, "mock: no such endpoint "+p, http.StatusNotFound)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (m *Mock) openID(w http.ResponseWriter) {
	base := m.URL + "/" + Tenant
	writeJSON(w, 200, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"issuer":                                base + "/v2.0",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_types_supported":              []string{"code", "token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"tenant_region_scope":                   "NA",
	})
}

// token issues "token-graph" or "token-intune" by scope for the client
// credentials grant with the mock's secret or any client assertion.
func (m *Mock) token(w http.ResponseWriter, r *http.Request) {
	m.mu.Lock()
	status := m.TokenStatus
	m.mu.Unlock()
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Get("client_id") != ClientID {
		writeJSON(w, 400, map[string]any{"error": "invalid_request"})
		return
	}
	secretOK := r.PostForm.Get("client_secret") == Secret
	assertionOK := r.PostForm.Get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" && strings.Count(r.PostForm.Get("client_assertion"), ".") == 2
	if status != 0 || (!secretOK && !assertionOK) {
		if status == 0 {
			status = 401
		}
		writeJSON(w, status, map[string]any{"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."})
		return
	}
	scope := r.PostForm.Get("scope")
	kind := ""
	switch {
	case strings.Contains(scope, "graph.microsoft.com") || strings.Contains(scope, m.URL+"/.default") && !strings.Contains(scope, "manage"):
		kind = "graph"
	case strings.Contains(scope, "manage"):
		kind = "intune"
	default:
		writeJSON(w, 400, map[string]any{"error": "invalid_scope", "error_description": "unknown scope " + scope})
		return
	}
	m.mu.Lock()
	m.scopes[kind]++
	m.mu.Unlock()
	writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": "token-" + kind})
}

// authorized checks the bearer token's audience.
func (m *Mock) authorized(w http.ResponseWriter, r *http.Request, kind string) bool {
	if r.Header.Get("Authorization") != "Bearer token-"+kind {
		writeJSON(w, 401, map[string]any{"error": map[string]any{"code": "InvalidAuthenticationToken", "message": "wrong or missing token for " + kind}})
		return false
	}
	return true
}

// checkHeaders checks what the library sends with every Intune call.
func (m *Mock) checkHeaders(w http.ResponseWriter, r *http.Request, apiVersion string) bool {
	if r.Method != http.MethodPost || r.Header.Get("api-version") != apiVersion || len(r.Header.Get("client-request-id")) != 36 ||
		!strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		writeJSON(w, 400, map[string]any{"error": "mock: want POST, api-version " + apiVersion + ", a client-request-id GUID and JSON"})
		return false
	}
	return true
}

func (m *Mock) discovery(w http.ResponseWriter) {
	m.mu.Lock()
	missing := m.Missing
	m.mu.Unlock()
	var value []map[string]string
	for name, path := range map[string]string{"ScepRequestValidationFEService": "/svc/validation", "PkiConnectorFEService": "/svc/pki", "SomeOtherService": "/svc/other"} {
		skip := false
		for _, x := range missing {
			skip = skip || strings.EqualFold(x, name)
		}
		if !skip {
			value = append(value, map[string]string{"providerName": name, "uri": m.URL + path})
		}
	}
	writeJSON(w, 200, map[string]any{"value": value})
}

func (m *Mock) scepAction(w http.ResponseWriter, r *http.Request, action string) {
	var body struct {
		Request      map[string]any `json:"request"`
		Notification map[string]any `json:"notification"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body); err != nil {
		writeJSON(w, 400, map[string]any{"error": err.Error()})
		return
	}
	str := func(o map[string]any, k string) string { s, _ := o[k].(string); return s }
	switch action {
	case "validateRequest":
		csr, err := base64.StdEncoding.DecodeString(str(body.Request, "certificateRequest"))
		if err != nil || str(body.Request, "transactionId") == "" || str(body.Request, "callerInfo") == "" {
			writeJSON(w, 400, map[string]any{"error": "mock: validateRequest needs transactionId, certificateRequest (base64) and callerInfo"})
			return
		}
		m.mu.Lock()
		m.validations++
		status, delay := m.ValidateStatus, m.ValidateDelay
		m.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		if status != 0 && status != 200 {
			writeJSON(w, status, map[string]any{"error": "injected"})
			return
		}
		code := "ChallengeDeserializationError"
		if _, err := x509.ParseCertificateRequest(csr); err != nil {
			code = "CertificateRequestDecodingFailed"
		} else if ch, err := x509util.ParseChallengePassword(csr); err != nil || ch == "" {
			code = "ChallengePasswordMissing"
		} else {
			m.mu.Lock()
			if c, ok := m.challenges[ch]; ok {
				code = c
			}
			m.mu.Unlock()
		}
		desc := ""
		if code != "Success" {
			desc = "mock refused: " + code
		}
		writeJSON(w, 200, map[string]any{"code": code, "errorDescription": desc})
	case "successNotification", "failureNotification":
		n := body.Notification
		csr, _ := base64.StdEncoding.DecodeString(str(n, "certificateRequest"))
		rec := Notification{Success: action == "successNotification", TransactionID: str(n, "transactionId"), CSR: csr,
			Thumbprint: str(n, "certificateThumbprint"), Serial: str(n, "certificateSerialNumber"),
			Expiry: str(n, "certificateExpirationDateUtc"), Issuer: str(n, "issuingCertificateAuthority"),
			Description: str(n, "errorDescription")}
		if h, ok := n["hResult"].(float64); ok {
			rec.HResult = int64(h)
		}
		m.mu.Lock()
		m.notifications = append(m.notifications, rec)
		status, code := m.SuccessStatus, m.SuccessCode
		m.mu.Unlock()
		if rec.Success && status != 0 && status != 200 {
			writeJSON(w, status, map[string]any{"error": "injected"})
			return
		}
		if !rec.Success || code == "" {
			code = "Success"
		}
		writeJSON(w, 200, map[string]any{"code": code, "errorDescription": ""})
	default:
		http.Error(w, "mock: no such action", http.StatusNotFound)
	}
}

func (m *Mock) revocationAction(w http.ResponseWriter, r *http.Request, action string) {
	switch action {
	case "downloadRevocationRequests":
		var body struct {
			DownloadParameters struct {
				MaxRequests int    `json:"maxRequests"`
				IssuerName  string `json:"issuerName"`
			} `json:"downloadParameters"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.DownloadParameters.MaxRequests < 1 || body.DownloadParameters.MaxRequests > 500 {
			writeJSON(w, 400, map[string]any{"error": "mock: maxRequests must be 1 to 500"})
			return
		}
		m.mu.Lock()
		n := min(body.DownloadParameters.MaxRequests, len(m.revocations))
		out := m.revocations[:n]
		m.revocations = append([]revocationRequest(nil), m.revocations[n:]...)
		m.mu.Unlock()
		writeJSON(w, 200, map[string]any{"value": out})
	case "uploadRevocationResults":
		var body struct {
			Results []RevocationResult `json:"results"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Results) == 0 {
			writeJSON(w, 400, map[string]any{"error": "mock: results required"})
			return
		}
		m.mu.Lock()
		m.results = append(m.results, body.Results...)
		m.mu.Unlock()
		writeJSON(w, 200, map[string]any{"value": true})
	default:
		http.Error(w, "mock: no such action", http.StatusNotFound)
	}
}

func (m *Mock) userPFX(w http.ResponseWriter, r *http.Request, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case r.Method == http.MethodGet && id == "":
		f := r.URL.Query().Get("$filter")
		upn := strings.TrimSuffix(strings.TrimPrefix(f, "userPrincipalName eq '"), "'")
		var out []UserPFX
		for _, p := range m.pfx {
			if strings.EqualFold(p.UserPrincipalName, upn) {
				p.EncryptedPfxBlob, p.EncryptedPfxPassword = nil, ""
				out = append(out, p)
			}
		}
		writeJSON(w, 200, map[string]any{"value": out})
	case r.Method == http.MethodPost && id == "":
		var p UserPFX
		if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&p); err != nil || p.Thumbprint == "" || p.UserPrincipalName == "" ||
			len(p.EncryptedPfxBlob) == 0 || p.EncryptedPfxPassword == "" || p.IntendedPurpose == "" || p.PaddingScheme == "" || p.ProviderName == "" || p.KeyName == "" {
			writeJSON(w, 400, map[string]any{"error": map[string]any{"code": "BadRequest", "message": "mock: a userPFXCertificate needs every field"}})
			return
		}
		for _, q := range m.pfx {
			if strings.EqualFold(q.Thumbprint, p.Thumbprint) && strings.EqualFold(q.UserPrincipalName, p.UserPrincipalName) {
				writeJSON(w, 409, map[string]any{"error": map[string]any{"code": "Conflict", "message": "mock: already imported"}})
				return
			}
		}
		m.nextID++
		p.ID = fmt.Sprintf("pfx-%d", m.nextID)
		m.pfx[p.ID] = p
		writeJSON(w, 201, p)
	case r.Method == http.MethodDelete && id != "":
		if _, ok := m.pfx[id]; !ok {
			writeJSON(w, 404, map[string]any{"error": map[string]any{"code": "NotFound"}})
			return
		}
		delete(m.pfx, id)
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "mock: unsupported", http.StatusMethodNotAllowed)
	}
}
