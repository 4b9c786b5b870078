package intune

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// UserPFX is one of Graph's userPFXCertificate records (beta): an imported
// PKCS#12 that Intune delivers to the user's devices through its PFX
// Certificate Connector, which decrypts the password with its key.
type UserPFX struct {
	ID                 string    `json:"id,omitempty"`
	Thumbprint         string    `json:"thumbprint"`
	IntendedPurpose    string    `json:"intendedPurpose"`
	UserPrincipalName  string    `json:"userPrincipalName"`
	StartDateTime      time.Time `json:"startDateTime"`
	ExpirationDateTime time.Time `json:"expirationDateTime"`
	ProviderName       string    `json:"providerName"`
	KeyName            string    `json:"keyName"`
	PaddingScheme      string    `json:"paddingScheme"`
	// EncryptedPfxBlob is the PKCS#12 file (itself password-protected);
	// EncryptedPfxPassword its password, RSA-OAEP-encrypted to the
	// connector's key, base64.
	EncryptedPfxBlob     []byte `json:"encryptedPfxBlob"`
	EncryptedPfxPassword string `json:"encryptedPfxPassword"`
}

// Values of UserPFX fields smimeca sets.
const (
	PurposeSMIMEEncryption = "smimeEncryption"
	PaddingOAEPSHA256      = "oaepSha256"
)

func (c *Client) pfxURL() string {
	return c.cfg.GraphURL + "/beta/deviceManagement/userPfxCertificates"
}

// ListUserPFX returns the user's imported PFX records (their metadata; Graph
// returns no blob in a listing).
func (c *Client) ListUserPFX(ctx context.Context, upn string) ([]UserPFX, error) {
	tok, err := c.token(ctx, c.graphScope())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	q := url.Values{"$filter": {"userPrincipalName eq '" + strings.ReplaceAll(upn, "'", "''") + "'"}}
	next := c.pfxURL() + "?" + q.Encode()
	var all []UserPFX
	for next != "" {
		var page struct {
			Value    []UserPFX `json:"value"`
			NextLink string    `json:"@odata.nextLink"`
		}
		if err := c.do(ctx, http.MethodGet, next, tok, nil, nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Value...)
		if next = page.NextLink; next != "" && !strings.HasPrefix(next, c.cfg.GraphURL+"/") {
			return nil, fmt.Errorf("%w: Graph's next page is on another host", ErrUnavailable)
		}
	}
	return all, nil
}

// CreateUserPFX uploads one record; the answer's ID is returned.
func (c *Client) CreateUserPFX(ctx context.Context, p UserPFX) (string, error) {
	tok, err := c.token(ctx, c.graphScope())
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	p.ID = ""
	var out UserPFX
	if err := c.do(ctx, http.MethodPost, c.pfxURL(), tok, nil, p, &out); err != nil {
		return "", err
	}
	return out.ID, nil
}

// DeleteUserPFX deletes a record by its ID.
func (c *Client) DeleteUserPFX(ctx context.Context, id string) error {
	tok, err := c.token(ctx, c.graphScope())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return c.do(ctx, http.MethodDelete, c.pfxURL()+"/"+url.PathEscape(id), tok, nil, nil, nil)
}
