package intune

import (
	"context"
	"fmt"
)

// MaxRevocationRequests bounds one download of the revocation feed.
const MaxRevocationRequests = 500

// Revocation result error codes (Intune's CARequestErrorCode).
const (
	RevocationOK                  = 0
	RevocationNonRetryable        = 4000
	RevocationParameterInvalid    = 4002
	RevocationCertificateNotFound = 4004
	RevocationConflict            = 4005
	RevocationRetryable           = 4100
)

// RevocationRequest is one certificate an Intune administrator (or a
// device's retirement) asks the CA to revoke.
type RevocationRequest struct {
	RequestContext  string `json:"requestContext"`
	SerialNumber    string `json:"serialNumber"`
	IssuerName      string `json:"issuerName,omitempty"`
	CAConfiguration string `json:"caConfiguration,omitempty"`
}

// RevocationResult is the CA's answer to one RevocationRequest.
type RevocationResult struct {
	RequestContext string `json:"requestContext"`
	Succeeded      bool   `json:"succeeded"`
	ErrorCode      int    `json:"errorCode"`
	ErrorMessage   string `json:"errorMessage,omitempty"`
}

// DownloadRevocationRequests returns up to max (1 to
// MaxRevocationRequests) pending revocation requests for issuerName (the
// issuing CA's name; empty: every issuer's).
func (c *Client) DownloadRevocationRequests(ctx context.Context, max int, issuerName string) ([]RevocationRequest, error) {
	if max < 1 || max > MaxRevocationRequests {
		return nil, fmt.Errorf("intune: ask for 1 to %d revocation requests, not %d", MaxRevocationRequests, max)
	}
	params := map[string]any{"maxRequests": max}
	if issuerName != "" {
		params["issuerName"] = issuerName
	}
	var out struct {
		Value []RevocationRequest `json:"value"`
	}
	if err := c.post(ctx, ServicePKI, "CertificateAuthorityRequests/downloadRevocationRequests", pkiAPIVersion,
		map[string]any{"downloadParameters": params}, &out); err != nil {
		return nil, err
	}
	return out.Value, nil
}

// UploadRevocationResults reports what became of downloaded requests;
// Intune must answer true.
func (c *Client) UploadRevocationResults(ctx context.Context, results []RevocationResult) error {
	if len(results) == 0 {
		return nil
	}
	var out struct {
		Value *bool `json:"value"`
	}
	if err := c.post(ctx, ServicePKI, "CertificateAuthorityRequests/uploadRevocationResults", pkiAPIVersion,
		map[string]any{"results": results}, &out); err != nil {
		return err
	}
	if out.Value == nil || !*out.Value {
		return fmt.Errorf("%w: Intune did not record the revocation results (it answered other than true)", ErrUnavailable)
	}
	return nil
}
