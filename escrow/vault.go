package escrow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
	approle "github.com/hashicorp/vault/api/auth/approle"

	"github.com/smimeca/smimeca/policy"
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
	// TokenSource, when set, mints a token at every (re)login; it takes
	// precedence over the other credentials (the embedded Vault uses it).
	TokenSource func(context.Context) (string, error)
}

// Connect returns an authenticated Vault client.
func Connect(ctx context.Context, c VaultConfig) (*vault.Client, error) {
	client, _, err := connect(ctx, c)
	return client, err
}

// connect returns the client and the function that (re)authenticates it.
func connect(ctx context.Context, c VaultConfig) (*vault.Client, func(context.Context) error, error) {
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
		return nil, nil, fmt.Errorf("escrow: vault client: %w", err)
	}
	client.SetToken("")
	var login func(context.Context) error
	switch {
	case c.TokenSource != nil:
		login = func(ctx context.Context) error {
			tok, err := c.TokenSource(ctx)
			if err != nil {
				return fmt.Errorf("escrow: mint Vault token: %w", err)
			}
			client.SetToken(tok)
			return nil
		}
	case c.Token != "":
		client.SetToken(c.Token)
		login = func(context.Context) error { return nil }
	case c.TokenFile != "":
		// Re-read on every login: an agent may rotate the file.
		login = func(context.Context) error {
			b, err := os.ReadFile(c.TokenFile)
			if err != nil {
				return fmt.Errorf("escrow: read Vault token file: %w", err)
			}
			client.SetToken(strings.TrimSpace(string(b)))
			return nil
		}
	case c.RoleID != "":
		auth, err := approle.NewAppRoleAuth(c.RoleID, &approle.SecretID{FromFile: c.SecretIDFile},
			approle.WithMountPath(orDefault(c.AppRoleMount, "approle")))
		if err != nil {
			return nil, nil, fmt.Errorf("escrow: AppRole: %w", err)
		}
		login = func(ctx context.Context) error {
			if _, err := client.Auth().Login(ctx, auth); err != nil {
				return vaultErr("AppRole login", err)
			}
			return nil
		}
	default:
		return nil, nil, errors.New("escrow: no Vault credentials: give a token (file) or an AppRole role id and secret id file")
	}
	if err := login(ctx); err != nil {
		return nil, nil, err
	}
	return client, login, nil
}

// ConnectLogical returns Vault's logical API for the store, authenticated
// as c says, that logs in again once and retries when Vault answers 403:
// AppRole tokens expire and agents rotate token files, and a long-running
// server must outlive both.
func ConnectLogical(ctx context.Context, c VaultConfig) (Logical, *vault.Client, error) {
	client, login, err := connect(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	return &reauth{l: client.Logical(), login: login}, client, nil
}

type reauth struct {
	l     *vault.Logical
	login func(context.Context) error
	mu    sync.Mutex
}

func isForbidden(err error) bool {
	var re *vault.ResponseError
	return errors.As(err, &re) && re.StatusCode == 403
}

func (r *reauth) retry(ctx context.Context, err error) bool {
	if !isForbidden(err) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.login(ctx) == nil
}

// ReadWithContext implements Logical.
func (r *reauth) ReadWithContext(ctx context.Context, path string) (*vault.Secret, error) {
	s, err := r.l.ReadWithContext(ctx, path)
	if err != nil && r.retry(ctx, err) {
		return r.l.ReadWithContext(ctx, path)
	}
	return s, err
}

// WriteWithContext implements Logical.
func (r *reauth) WriteWithContext(ctx context.Context, path string, data map[string]any) (*vault.Secret, error) {
	s, err := r.l.WriteWithContext(ctx, path, data)
	if err != nil && r.retry(ctx, err) {
		return r.l.WriteWithContext(ctx, path, data)
	}
	return s, err
}

// DeleteWithContext implements Logical.
func (r *reauth) DeleteWithContext(ctx context.Context, path string) (*vault.Secret, error) {
	s, err := r.l.DeleteWithContext(ctx, path)
	if err != nil && r.retry(ctx, err) {
		return r.l.DeleteWithContext(ctx, path)
	}
	return s, err
}

// ListWithContext implements Logical.
func (r *reauth) ListWithContext(ctx context.Context, path string) (*vault.Secret, error) {
	s, err := r.l.ListWithContext(ctx, path)
	if err != nil && r.retry(ctx, err) {
		return r.l.ListWithContext(ctx, path)
	}
	return s, err
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
		return fmt.Errorf("%w: sealed or not initialised", policy.ErrUnavailable)
	}
	return nil
}
