package escrow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	vault "github.com/hashicorp/vault/api"
	approle "github.com/hashicorp/vault/api/auth/approle"

	"github.com/smimeca/smimeca/policy"
)

// VaultConfig says how to reach and authenticate to Vault.
type VaultConfig struct {
	// Address of Vault, e.g. http://127.0.0.1:8200; for a cluster, every
	// node's, comma-separated: the client talks to one and moves to the
	// next when it does not answer (any node forwards to the active one).
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
	addrs := strings.Split(c.Address, ",")
	for i := range addrs {
		addrs[i] = strings.TrimSpace(addrs[i])
	}
	cfg := vault.DefaultConfig()
	cfg.Address = addrs[0]
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
	if len(addrs) > 1 {
		clusters.Store(client, &endpoints{addrs: addrs})
	}
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
	return &reauth{l: client.Logical(), client: client, login: login}, client, nil
}

// clusters holds, for a client connected to several Vault nodes, their
// addresses (connect stores them; failover and Ping read them).
var clusters sync.Map // *vault.Client → *endpoints

// endpoints are the API addresses of a Vault cluster's nodes.
type endpoints struct {
	addrs []string
	mu    sync.Mutex
}

// failover moves client to the node after failed, unless another caller
// has moved it already.
func failover(client *vault.Client, failed string) {
	v, ok := clusters.Load(client)
	if !ok {
		return
	}
	e := v.(*endpoints)
	e.mu.Lock()
	defer e.mu.Unlock()
	if client.Address() != failed {
		return
	}
	for i, a := range e.addrs {
		if a == failed {
			client.SetAddress(e.addrs[(i+1)%len(e.addrs)])
			return
		}
	}
}

// unanswered reports an error after which the request was not carried
// out, so that it may be sent again (to another node): the node refused
// the connection, is sealed (503), or knows no active node while the
// cluster elects one (500); with idempotent, also a connection cut after
// sending (a read).
func unanswered(err error, idempotent bool) bool {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode == 500 || re.StatusCode == 502 || re.StatusCode == 503
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) {
		return true
	}
	return idempotent && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF))
}

// failoverWindow bounds how long a request waits for the cluster to answer
// again (a leader election takes a few seconds).
const failoverWindow = 20 * time.Second

// do runs one request: again after logging in when the token was refused,
// and — with several nodes configured — while the cluster does not answer
// (a node down, an election), again on the next node with a growing pause,
// for up to failoverWindow. With one address an unanswered request fails at
// once, as the escrow's callers expect of a Vault that is down.
func (r *reauth) do(ctx context.Context, idempotent bool, f func() (*vault.Secret, error)) (*vault.Secret, error) {
	deadline := time.Now()
	if _, ok := clusters.Load(r.client); ok {
		deadline = deadline.Add(failoverWindow)
	}
	pause := 50 * time.Millisecond
	loggedIn := false
	for {
		addr := r.client.Address()
		s, err := f()
		switch {
		case err == nil:
			return s, nil
		case isForbidden(err) && !loggedIn:
			loggedIn = true
			if !r.retry(ctx, err) {
				return s, err
			}
			continue
		case !unanswered(err, idempotent) || time.Now().Add(pause).After(deadline):
			return s, err
		}
		failover(r.client, addr)
		select {
		case <-ctx.Done():
			return s, err
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}

type reauth struct {
	l      *vault.Logical
	client *vault.Client
	login  func(context.Context) error
	mu     sync.Mutex
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
	return r.do(ctx, true, func() (*vault.Secret, error) { return r.l.ReadWithContext(ctx, path) })
}

// WriteWithContext implements Logical.
func (r *reauth) WriteWithContext(ctx context.Context, path string, data map[string]any) (*vault.Secret, error) {
	return r.do(ctx, false, func() (*vault.Secret, error) { return r.l.WriteWithContext(ctx, path, data) })
}

// DeleteWithContext implements Logical.
func (r *reauth) DeleteWithContext(ctx context.Context, path string) (*vault.Secret, error) {
	return r.do(ctx, false, func() (*vault.Secret, error) { return r.l.DeleteWithContext(ctx, path) })
}

// ListWithContext implements Logical.
func (r *reauth) ListWithContext(ctx context.Context, path string) (*vault.Secret, error) {
	return r.do(ctx, true, func() (*vault.Secret, error) { return r.l.ListWithContext(ctx, path) })
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
	addr := client.Address()
	h, err := client.Sys().HealthWithContext(ctx)
	if err != nil || h.Sealed {
		// A node down or sealed: the next check asks the next node.
		failover(client, addr)
	}
	if err != nil {
		return vaultErr("health", err)
	}
	if h.Sealed || !h.Initialized {
		return fmt.Errorf("%w: sealed or not initialised", policy.ErrUnavailable)
	}
	return nil
}
