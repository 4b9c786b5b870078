// Package scep is smimeca's SCEP (RFC 8894) HTTP endpoint. It speaks the
// protocol — GetCACert, GetCACaps and PKIOperation over GET and POST — with
// github.com/smallstep/scep, holds the RA (decrypter) key, and translates a
// device's request into a policy.Request and the policy's decision into a
// signed CertRep with the matching failInfo.
//
// It makes no decision of its own about who may get what: challenges,
// certificate contents and storage belong to policy and ca.
package scep

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"
	smallscep "github.com/smallstep/scep"

	"github.com/smimeca/smimeca/policy"
)

// Paths the handler answers on (WithPath mounts it elsewhere).
const (
	Path       = "/scep"
	LegacyPath = "/scep/pkiclient.exe"
	// IntunePath is where the endpoint whose challenges Intune validates is
	// mounted (policy.ExternalEnrollment behind it).
	IntunePath = "/scep/intune"
)

// MaxMessageBytes bounds a PKIOperation body; real requests are a few KiB.
const MaxMessageBytes = 64 << 10

// DefaultCaps are the capabilities advertised by GetCACaps: no DES, no SHA-1.
var DefaultCaps = []string{"POSTPKIOperation", "SHA-256", "SHA-512", "AES", "SCEPStandard", "Renewal"}

// Enroller decides and fulfils a device's request; *policy.Enrollment
// implements it.
type Enroller interface {
	Enroll(ctx context.Context, req policy.Request) ([]*x509.Certificate, error)
}

// Metrics receives one observation per PKIOperation.
type Metrics interface {
	// ObserveEnrollment records the outcome ("issued", "refused", "error",
	// "malformed") and duration of one PKIOperation of the given type.
	ObserveEnrollment(messageType, result string, d time.Duration)
}

type nopMetrics struct{}

func (nopMetrics) ObserveEnrollment(string, string, time.Duration) {}

// Handler serves SCEP.
type Handler struct {
	enroller Enroller
	ra       *x509.Certificate
	raKey    RAKey
	caCerts  []*x509.Certificate
	issuers  []*x509.Certificate // sign the certificates renewals are signed with
	caBody   []byte
	caps     string
	log      *slog.Logger
	metrics  Metrics
	// path is where the handler is mounted; it also answers on
	// path+"/pkiclient.exe".
	path string
}

// Option configures a Handler.
type Option func(*Handler)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(h *Handler) { h.log = l } }

// WithMetrics sets the metrics sink.
func WithMetrics(m Metrics) Option { return func(h *Handler) { h.metrics = m } }

// WithPath mounts the handler at path (and path+"/pkiclient.exe") instead
// of Path.
func WithPath(path string) Option { return func(h *Handler) { h.path = path } }

// WithIssuers names the CA certificates that sign the certificates a
// renewal may be signed with (default: the chain GetCACert serves), for a
// hierarchy whose issuing CA is not in GetCACert (ca.Authority.SCEPCACerts).
func WithIssuers(certs ...*x509.Certificate) Option { return func(h *Handler) { h.issuers = certs } }

// WithCaps replaces the advertised capabilities.
func WithCaps(caps []string) Option {
	return func(h *Handler) { h.caps = strings.Join(caps, "\n") + "\n" }
}

// RAKey is what the handler needs of the RA's RSA key: decrypting the
// requests' envelopes and signing CertRep. An *rsa.PrivateKey has both; so
// does a token's key through PKCS#11.
type RAKey interface {
	crypto.Signer
	crypto.Decrypter
}

// New returns a SCEP handler. ra and raKey decrypt requests and sign
// responses; chain is what GetCACert returns after the RA certificate (the
// RA's issuer and its chain up to the root; see WithIssuers).
func New(enroller Enroller, ra *x509.Certificate, raKey RAKey, chain []*x509.Certificate, opts ...Option) (*Handler, error) {
	if ra == nil || raKey == nil {
		return nil, errors.New("scep: RA certificate and key are required")
	}
	if _, ok := raKey.Public().(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("scep: the RA key is %T; SCEP's envelopes need RSA", raKey.Public())
	}
	h := &Handler{
		enroller: enroller, ra: ra, raKey: raKey,
		caCerts: append([]*x509.Certificate{ra}, chain...), issuers: chain,
		log: slog.New(slog.DiscardHandler), metrics: nopMetrics{}, path: Path,
	}
	WithCaps(DefaultCaps)(h)
	for _, o := range opts {
		o(h)
	}
	body, err := smallscep.DegenerateCertificates(h.caCerts)
	if err != nil {
		return nil, fmt.Errorf("scep: GetCACert body: %w", err)
	}
	h.caBody = body
	return h, nil
}

// SetPKCS7Defaults sets what github.com/smallstep/pkcs7 keeps in package
// variables and smallstep/scep's CertRep builder uses: the content
// encryption of CertRep envelopes, "aes256-cbc" (default), "aes128-cbc" or
// "aes256-gcm" (never DES), and SHA-256 for CertRep signatures (pkcs7's
// default would be SHA-1, which GetCACaps does not advertise). This package
// is the one owner of those settings: call it once at start-up, before
// serving, never per request. (Delivery envelopes do not depend on them:
// pfx-connector builds them with explicit parameters.)
func SetPKCS7Defaults(name string) error {
	if err := pkcs7.SetDefaultDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256); err != nil {
		return fmt.Errorf("scep: %w", err)
	}
	switch strings.ToLower(name) {
	case "", "aes256-cbc":
		pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
	case "aes128-cbc":
		pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES128CBC
	case "aes256-gcm":
		pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256GCM
	default:
		return fmt.Errorf("scep: unknown content encryption %q (aes256-cbc, aes128-cbc, aes256-gcm)", name)
	}
	return nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != h.path && r.URL.Path != h.path+"/pkiclient.exe" {
		http.NotFound(w, r)
		return
	}
	op := r.URL.Query().Get("operation")
	switch {
	case op == "GetCACert":
		h.getCACert(w, r)
	case op == "GetCACaps":
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, h.caps)
	case op == "PKIOperation" && (r.Method == http.MethodPost || r.Method == http.MethodGet):
		h.pkiOperation(w, r)
	case op == "PKIOperation":
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "PKIOperation takes GET or POST", http.StatusMethodNotAllowed)
	case op == "":
		http.Error(w, "missing operation parameter (GetCACert, GetCACaps or PKIOperation)", http.StatusBadRequest)
	default:
		http.Error(w, fmt.Sprintf("unsupported operation %q (GetCACert, GetCACaps or PKIOperation)", op), http.StatusBadRequest)
	}
}

func (h *Handler) getCACert(w http.ResponseWriter, _ *http.Request) {
	if len(h.caCerts) == 1 {
		w.Header().Set("Content-Type", "application/x-x509-ca-cert")
		w.Write(h.ra.Raw)
		return
	}
	w.Header().Set("Content-Type", "application/x-x509-ca-ra-cert")
	w.Write(h.caBody)
}

// readMessage returns the DER PKIMessage of a POST body or a GET "message"
// parameter. GET accepts standard base64 whether or not it was URL-escaped:
// macOS sends it unescaped, so a '+' arrives as ' '.
func readMessage(r *http.Request) ([]byte, error) {
	if r.Method == http.MethodPost {
		b, err := io.ReadAll(io.LimitReader(r.Body, MaxMessageBytes+1))
		if err != nil {
			return nil, fmt.Errorf("read body: %w", err)
		}
		if len(b) > MaxMessageBytes {
			return nil, errTooLarge
		}
		return b, nil
	}
	m := r.URL.Query().Get("message")
	if m == "" {
		return nil, errors.New("missing message parameter")
	}
	if len(m) > MaxMessageBytes*4/3+4 {
		return nil, errTooLarge
	}
	m = strings.ReplaceAll(m, " ", "+")
	m = strings.NewReplacer("\r", "", "\n", "").Replace(m)
	if b, err := base64.StdEncoding.DecodeString(m); err == nil {
		return b, nil
	}
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(m, "="))
	if err != nil {
		return nil, errors.New("message parameter is not base64")
	}
	return b, nil
}

var errTooLarge = errors.New("message too large")

func (h *Handler) pkiOperation(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	msgType, result := "unknown", "malformed"
	defer func() { h.metrics.ObserveEnrollment(msgType, result, time.Since(start)) }()

	der, err := readMessage(r)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, errTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "bad PKIOperation: "+err.Error(), code)
		return
	}
	// Bounds first: nothing is verified or decrypted before they hold.
	p7, err := checkCost(der)
	if err != nil {
		h.log.Info("scep: request refused before verification", "reason", err.Error())
		http.Error(w, "bad PKIOperation: "+err.Error(), http.StatusBadRequest)
		return
	}
	msg, err := parsePKIMessage(der)
	if err != nil {
		// Message types the library does not parse (CertPoll, GetCert,
		// GetCRL) still deserve a signed answer when they are well formed.
		if fail, mt, ok := h.failUnsupported(der); ok {
			msgType, result = mt, "refused"
			h.log.Info("scep: unsupported message", "type", mt)
			writePKIMessage(w, fail)
			return
		}
		http.Error(w, "bad PKIOperation: not a signed SCEP pkiMessage", http.StatusBadRequest)
		return
	}
	msgType = msg.MessageType.String()
	// The certificate that signed the message (nil when the message does
	// not carry it), from the parse the bounds check made.
	signer := p7.GetOnlySigner()
	logger := h.log.With("transaction_id", string(msg.TransactionID), "type", msgType)

	var kind policy.RequestKind
	switch msg.MessageType {
	case smallscep.PKCSReq:
		kind = policy.Initial
		// A PKCSReq signed with a certificate this CA issued is a renewal,
		// as SCEP drafts before RenewalReq had it and certmonger's rekey
		// still sends it; the policy judges it as a RenewalReq.
		if signer != nil && h.issuedHere(signer) {
			kind = policy.Renewal
		}
	case smallscep.RenewalReq, smallscep.UpdateReq:
		kind = policy.Renewal
	default:
		result = "refused"
		h.fail(w, logger, msg, smallscep.BadRequest, "unexpected message type")
		return
	}
	if err := msg.DecryptPKIEnvelope(h.ra, h.raKey); err != nil {
		result = "refused"
		h.fail(w, logger, msg, smallscep.BadMessageCheck, "cannot decrypt or parse the pkcsPKIEnvelope: "+err.Error())
		return
	}
	req := policy.Request{Kind: kind, CSR: msg.CSRReqMessage.CSR, TransactionID: string(msg.TransactionID)}
	switch {
	case kind == policy.Initial:
		req.Challenge = msg.CSRReqMessage.ChallengePassword
	case signer == nil:
		result = "refused"
		h.fail(w, logger, msg, smallscep.BadMessageCheck, "the pkiMessage must have exactly one signer with its certificate")
		return
	default:
		req.Signer = signer
	}
	ctx := policy.WithActor(r.Context(), policy.Actor{Role: "device", Name: "scep transaction " + string(msg.TransactionID)})
	chain, err := h.enroller.Enroll(ctx, req)
	if err != nil {
		if re, ok := policy.IsReject(err); ok {
			result = "refused"
			h.fail(w, logger, msg, failInfoFor(re.Reason), re.Error())
			return
		}
		result = "error"
		logger.Error("scep: enrolment failed", "err", err)
		http.Error(w, "internal error; try again later", http.StatusInternalServerError)
		return
	}
	rep, err := msg.Success(h.ra, h.raKey, chain[0])
	if err != nil {
		result = "error"
		logger.Error("scep: build CertRep", "err", err)
		http.Error(w, "internal error building the response", http.StatusInternalServerError)
		return
	}
	result = "issued" // the policy's audit event records who got which serial
	logger.Debug("scep: issued", "serial", chain[0].SerialNumber.String())
	writePKIMessage(w, rep.Raw)
}

// issuedHere reports whether c was signed by one of the issuing CAs
// (WithIssuers).
func (h *Handler) issuedHere(c *x509.Certificate) bool {
	for _, ca := range h.issuers {
		if bytes.Equal(c.RawIssuer, ca.RawSubject) && c.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

// parsePKIMessage parses untrusted input. The BER parser under it has
// panicked on truncated input before (smallstep/pkcs7 < v0.2.3, found by
// FuzzPKIOperation); a parser panic must become a 400, not a dropped
// connection.
func parsePKIMessage(der []byte) (msg *smallscep.PKIMessage, err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("scep: parser panic: %v", r)
		}
	}()
	return smallscep.ParsePKIMessage(der)
}

// failInfoFor maps a refusal to RFC 8894 failInfo: a renewal not signed by
// a valid certificate of ours fails the message check; everything else is a
// bad request.
func failInfoFor(r policy.Reason) smallscep.FailInfo {
	if r == policy.ReasonRenewalNotAuthorized {
		return smallscep.BadMessageCheck
	}
	return smallscep.BadRequest
}

func (h *Handler) fail(w http.ResponseWriter, logger *slog.Logger, msg *smallscep.PKIMessage, info smallscep.FailInfo, why string) {
	logger.Info("scep: refused", "fail_info", info.String(), "reason", why)
	rep, err := msg.Fail(h.ra, h.raKey, info)
	if err != nil {
		logger.Error("scep: build failure CertRep", "err", err)
		http.Error(w, "internal error building the response", http.StatusInternalServerError)
		return
	}
	writePKIMessage(w, rep.Raw)
}

func writePKIMessage(w http.ResponseWriter, der []byte) {
	w.Header().Set("Content-Type", "application/x-pki-message")
	w.Write(der)
}

// parsePKCS7 is pkcs7.Parse with the same panic guard as parsePKIMessage.
func parsePKCS7(der []byte) (p7 *pkcs7.PKCS7, err error) {
	defer func() {
		if r := recover(); r != nil {
			p7, err = nil, fmt.Errorf("scep: parser panic: %v", r)
		}
	}()
	return pkcs7.Parse(der)
}

// SCEP signed-attribute OIDs (RFC 8894 3.2.1).
var (
	oidMessageType   = asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 2}
	oidSenderNonce   = asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 5}
	oidTransactionID = asn1.ObjectIdentifier{2, 16, 840, 1, 113733, 1, 9, 7}
)

// failUnsupported answers a verified CertPoll, GetCert or GetCRL with a
// signed FAILURE: smimeca issues synchronously and keeps no pending
// requests, so there is nothing to poll (badCertId).
func (h *Handler) failUnsupported(der []byte) ([]byte, string, bool) {
	p7, err := parsePKCS7(der)
	if err != nil || p7.Verify() != nil {
		return nil, "", false
	}
	var mt smallscep.MessageType
	var tid smallscep.TransactionID
	var nonce smallscep.SenderNonce
	if p7.UnmarshalSignedAttribute(oidMessageType, &mt) != nil ||
		p7.UnmarshalSignedAttribute(oidTransactionID, &tid) != nil ||
		p7.UnmarshalSignedAttribute(oidSenderNonce, &nonce) != nil || len(nonce) == 0 {
		return nil, "", false
	}
	switch mt {
	case smallscep.CertPoll, smallscep.GetCert, smallscep.GetCRL:
	default:
		return nil, "", false
	}
	req := &smallscep.PKIMessage{TransactionID: tid, MessageType: mt, SenderNonce: nonce}
	rep, err := req.Fail(h.ra, h.raKey, smallscep.BadCertID)
	if err != nil {
		return nil, "", false
	}
	return rep.Raw, mt.String(), true
}
