package intune

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
)

// Defaults of the PFX Certificate Connector's key as Intune's records name
// it (the connector's own defaults).
const (
	DefaultPFXProvider = "Microsoft Software Key Storage Provider"
	DefaultPFXKeyName  = "PFXEncryptionKey"
)

// PFXStore is Intune's imported-PFX store as policy's PFXStore: each key is
// re-wrapped into a new PKCS#12 (3DES/SHA-1, what iOS imports) with a fresh
// password, and the password is RSA-OAEP-SHA256-encrypted to the tenant's
// PFX Certificate Connector key — the one recipient it is configured with.
// The user's UPN is taken to be their address.
type PFXStore struct {
	Client *Client
	// ConnectorKey is the connector's public key; ProviderName and KeyName
	// say where the connector keeps its private key.
	ConnectorKey          *rsa.PublicKey
	ProviderName, KeyName string
}

var _ policy.PFXStore = PFXStore{}

// List implements policy.PFXStore.
func (p PFXStore) List(ctx context.Context, user string) ([]policy.RemotePFX, error) {
	recs, err := p.Client.ListUserPFX(ctx, user)
	if err != nil {
		return nil, err
	}
	out := make([]policy.RemotePFX, 0, len(recs))
	for _, r := range recs {
		out = append(out, policy.RemotePFX{ID: r.ID, Thumbprint: strings.ToUpper(r.Thumbprint)})
	}
	return out, nil
}

// Upload implements policy.PFXStore.
func (p PFXStore) Upload(ctx context.Context, user string, k policy.EscrowedKey) (string, error) {
	w, err := pfxconnector.RewrapDER(k.CertDER, k.KeyPKCS8, k.ChainDER, pfxconnector.Legacy)
	if err != nil {
		return "", err
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, p.ConnectorKey, []byte(w.Password), nil)
	if err != nil {
		return "", fmt.Errorf("intune: encrypt the password to the connector key: %w", err)
	}
	provider, keyName := p.ProviderName, p.KeyName
	if provider == "" {
		provider = DefaultPFXProvider
	}
	if keyName == "" {
		keyName = DefaultPFXKeyName
	}
	return p.Client.CreateUserPFX(ctx, UserPFX{
		Thumbprint: strings.ToUpper(k.SHA1), IntendedPurpose: PurposeSMIMEEncryption, UserPrincipalName: user,
		StartDateTime: k.NotBefore.UTC(), ExpirationDateTime: k.NotAfter.UTC(), ProviderName: provider, KeyName: keyName,
		PaddingScheme: PaddingOAEPSHA256, EncryptedPfxBlob: w.PFX, EncryptedPfxPassword: base64.StdEncoding.EncodeToString(ct),
	})
}

// Delete implements policy.PFXStore.
func (p PFXStore) Delete(ctx context.Context, id string) error {
	return p.Client.DeleteUserPFX(ctx, id)
}

// Recipient implements policy.PFXStore: the SHA-256 of the connector key's
// SubjectPublicKeyInfo.
func (p PFXStore) Recipient() string {
	der, err := x509.MarshalPKIXPublicKey(p.ConnectorKey)
	if err != nil {
		return ""
	}
	s := sha256.Sum256(der)
	return hex.EncodeToString(s[:])
}
