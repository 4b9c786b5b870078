package intune

import (
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// CodeSuccess is the only validation code that allows issuance.
const CodeSuccess = "Success"

// Refusal is Intune's answer that is not Success: its code
// (ChallengeExpired, SubjectAltNameMismatch, …) and description. The
// challenge itself is never in it.
type Refusal struct {
	Code, Description string
}

func (r *Refusal) Error() string {
	if r.Description == "" {
		return "intune refused: " + r.Code
	}
	return "intune refused: " + r.Code + ": " + firstLine(r.Description)
}

// scepResult is the answer of every ScepActions call.
type scepResult struct {
	Code             string `json:"code"`
	ErrorDescription string `json:"errorDescription"`
}

func (r scepResult) err() error {
	if r.Code == CodeSuccess {
		return nil
	}
	if r.Code == "" {
		return fmt.Errorf("%w: the answer has no code", ErrUnavailable)
	}
	return &Refusal{Code: r.Code, Description: r.ErrorDescription}
}

// ValidateRequest asks Intune whether the CSR (DER PKCS#10, with the
// challenge Intune gave the device in its challengePassword) of the SCEP
// transaction may be issued: nil for Success, a *Refusal for any other
// code, an error wrapping ErrUnavailable when Intune did not answer (after
// one retry of a timeout or a 5xx; each attempt within Config.ValidateTimeout).
func (c *Client) ValidateRequest(ctx context.Context, transactionID string, csrDER []byte) error {
	body := map[string]any{"request": map[string]any{
		"transactionId":      transactionID,
		"certificateRequest": base64.StdEncoding.EncodeToString(csrDER),
		"callerInfo":         c.cfg.CallerInfo,
	}}
	var err error
	for try := 0; try < 2; try++ {
		cctx, cancel := context.WithTimeout(ctx, c.cfg.ValidateTimeout)
		var res scepResult
		err = c.post(cctx, ServiceValidation, "ScepActions/validateRequest", validationAPIVersion, body, &res)
		cancel()
		if err == nil {
			return res.err()
		}
		if !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	return err
}

// Issued is what the success notification tells Intune of a certificate.
type Issued struct {
	TransactionID string
	CSRDER        []byte
	Certificate   *x509.Certificate
	// Issuer is the issuing CA's certificate.
	Issuer *x509.Certificate
}

// SuccessNotification tells Intune the transaction's certificate was
// issued: its SHA-1 thumbprint (hex), its serial (hex), its expiry (UTC,
// ISO 8601) and the issuing CA's name. Anything but Success — an HTTP
// failure or another code — means the device must not get the certificate.
func (c *Client) SuccessNotification(ctx context.Context, n Issued) error {
	thumb := sha1.Sum(n.Certificate.Raw)
	body := map[string]any{"notification": map[string]any{
		"transactionId":                n.TransactionID,
		"certificateRequest":           base64.StdEncoding.EncodeToString(n.CSRDER),
		"certificateThumbprint":        strings.ToUpper(hex.EncodeToString(thumb[:])),
		"certificateSerialNumber":      strings.ToUpper(n.Certificate.SerialNumber.Text(16)),
		"certificateExpirationDateUtc": n.Certificate.NotAfter.UTC().Format("2006-01-02T15:04:05.000Z"),
		"issuingCertificateAuthority":  n.Issuer.Subject.String(),
		"callerInfo":                   c.cfg.CallerInfo,
	}}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ValidateTimeout)
	defer cancel()
	var res scepResult
	if err := c.post(ctx, ServiceValidation, "ScepActions/successNotification", validationAPIVersion, body, &res); err != nil {
		return err
	}
	return res.err()
}

// MaxErrorDescription bounds a failure notification's description.
const MaxErrorDescription = 255

// FailureNotification tells Intune a validated transaction failed, with
// an HRESULT and a description (cut to MaxErrorDescription characters).
func (c *Client) FailureNotification(ctx context.Context, transactionID string, csrDER []byte, hresult uint32, description string) error {
	if r := []rune(description); len(r) > MaxErrorDescription {
		description = string(r[:MaxErrorDescription])
	}
	body := map[string]any{"notification": map[string]any{
		"transactionId":      transactionID,
		"certificateRequest": base64.StdEncoding.EncodeToString(csrDER),
		"hResult":            int64(hresult),
		"errorDescription":   description,
		"callerInfo":         c.cfg.CallerInfo,
	}}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ValidateTimeout)
	defer cancel()
	var res scepResult
	if err := c.post(ctx, ServiceValidation, "ScepActions/failureNotification", validationAPIVersion, body, &res); err != nil {
		return err
	}
	return res.err()
}

// Ping checks that a token for Intune and service discovery work and that
// the validation service is listed (for doctor and health).
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.ValidateTimeout)
	defer cancel()
	if _, err := c.endpoint(ctx, ServiceValidation); err != nil {
		return err
	}
	_, err := c.token(ctx, c.intuneScope())
	return err
}
