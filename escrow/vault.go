package escrow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
	approle "github.com/hashicorp/vault/api/auth/approle"
)

// VaultConfig says how to reach and authenticate to Vault.
type VaultConfig struct {
	// Address of Vault, e.g. http://127.0.0.1:8200.
	Address string
	// Token authenticates directly (takes precedence over TokenFile).
	Token string
	// TokenFile holds a token.
	TokenFile string
	// RoleID and SecretIDFile authenticate with AppRole when no token is
	// given. AppRoleMount defaults to "approle".
	RoleID       string
	SecretIDFile string
	AppRoleMount string
	// Timeout of one Vault request (default 10 s).
	Timeout time.Duration
}

// Connect returns an authenticated Vault client.
func Connect(ctx context.Context, c VaultConfig) (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = c.Address
	cfg.Timeout = c.Timeout
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	// One retry on 5xx: a down Vault must surface quickly as unavailable.
	cfg.MaxRetries = 1
	client, err := vault.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("escrow: vault client: %w", err)
	}
	client.SetToken("")
	token := c.Token
	if token == "" && c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("escrow: read Vault token file: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	switch {
	case token != "":
		client.SetToken(token)
	case c.RoleID != "":
		auth, err := approle.NewAppRoleAuth(c.RoleID, &approle.SecretID{FromFile: c.SecretIDFile},
			approle.WithMountPath(orDefault(c.AppRoleMount, "approle")))
		if err != nil {
			return nil, fmt.Errorf("escrow: AppRole: %w", err)
		}
		if _, err := client.Auth().Login(ctx, auth); err != nil {
			return nil, vaultErr("AppRole login", err)
		}
	default:
		return nil, errors.New("escrow: no Vault credentials: give a token (file) or an AppRole role id and secret id file")
	}
	return client, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// Setup makes sure the KV v2 mount, the Transit mount and the Transit key
// exist. It needs a token allowed to manage mounts; with a narrower token,
// run it once with an operator token instead.
func Setup(ctx context.Context, client *vault.Client, cfg Config) error {
	cfg.defaults()
	mounts, err := client.Sys().ListMountsWithContext(ctx)
	if err != nil {
		return vaultErr("list mounts", err)
	}
	if _, ok := mounts[cfg.KVMount+"/"]; !ok {
		if err := client.Sys().MountWithContext(ctx, cfg.KVMount, &vault.MountInput{
			Type: "kv", Options: map[string]string{"version": "2"},
			Description: "smimeca escrow: users' S/MIME encryption certificates",
		}); err != nil {
			return vaultErr("mount KV", err)
		}
	}
	if _, ok := mounts[cfg.TransitMount+"/"]; !ok {
		if err := client.Sys().MountWithContext(ctx, cfg.TransitMount, &vault.MountInput{Type: "transit"}); err != nil {
			return vaultErr("mount transit", err)
		}
	}
	if _, err := client.Logical().WriteWithContext(ctx, cfg.TransitMount+"/keys/"+cfg.TransitKey,
		map[string]any{"type": "aes256-gcm96"}); err != nil {
		return vaultErr("create transit key", err)
	}
	return nil
}

// Ping reports whether Vault answers and is unsealed.
func Ping(ctx context.Context, client *vault.Client) error {
	h, err := client.Sys().HealthWithContext(ctx)
	if err != nil {
		return vaultErr("health", err)
	}
	if h.Sealed || !h.Initialized {
		return fmt.Errorf("%w: sealed or not initialised", ErrUnavailable)
	}
	return nil
}
