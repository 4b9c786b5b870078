// Package vaultproc runs a real HashiCorp Vault server as a child process
// with file storage in a directory, initialises it on first start (one
// unseal key), unseals it on every start, and enables what smimeca needs.
// It backs `smimeca serve --embedded-vault` (the single-machine default of
// `make run`) and the integration tests. The unseal key and root token are
// kept in DIR/init.json with mode 0600: this is for one machine, not for
// production, where an operator-run Vault is used instead.
package vaultproc

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// DefaultVersion is the Vault version scripts/vault.sh builds.
const DefaultVersion = "1.21.0"

// DefaultBinary returns where scripts/vault.sh puts the Vault binary (the
// binaries that run Vault read their own flag or $SMIMECA_VAULT_BIN first).
func DefaultBinary() string {
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "smimeca", "vault-"+DefaultVersion, "vault")
}

// Proc is a running Vault.
type Proc struct {
	// Addr is the http:// address of the server.
	Addr string
	// RootToken is the root token from initialisation, until RevokeRoot.
	// Read it with Client.
	RootToken string
	tokMu     sync.Mutex // guards RootToken after Start

	bin, dir, listen string
	log              io.Writer
	unsealKey        string

	// mu guards the child and the flags below; start and halt run under it.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	// closed: Stop was called, the supervisor ends. restarting: Restart is
	// bringing up a new child, the supervisor must not.
	closed, restarting bool
}

type initFile struct {
	UnsealKey string `json:"unseal_key"`
	RootToken string `json:"root_token,omitempty"`
}

// Start starts Vault from bin with storage under dir, listening on listen
// (host:port on loopback). Vault's own output goes to log (may be nil).
func Start(ctx context.Context, bin, dir, listen string, log io.Writer) (*Proc, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("vault binary %s: %w (build it with scripts/vault.sh)", bin, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "storage"), 0o700); err != nil {
		return nil, err
	}
	p := &Proc{bin: bin, dir: dir, listen: listen, log: log, Addr: "http://" + listen}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Supervise restarts Vault (and unseals it) whenever it exits without Stop
// or Restart having asked it to, with a backoff from 1 s to 30 s, until
// ctx ends or Stop is called; logf reports each restart. It also renews
// smimeca's token (SmimecaToken) every renew interval. Run it in a goroutine.
func (p *Proc) Supervise(ctx context.Context, renew time.Duration, renewToken func(context.Context) error, logf func(msg string, args ...any)) {
	tick := time.NewTicker(renew)
	defer tick.Stop()
	for {
		p.mu.Lock()
		ex := p.exited
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if renewToken != nil {
				if err := renewToken(ctx); err != nil {
					logf("vault: token renewal failed", "err", err)
				}
			}
			continue
		case <-ex:
		}
		p.mu.Lock()
		closed, restarting := p.closed, p.restarting
		p.mu.Unlock()
		if closed {
			return
		}
		if restarting {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		logf("vault: the embedded Vault exited; restarting it")
		for backoff := time.Second; ; backoff = min(2*backoff, 30*time.Second) {
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				return
			}
			err := p.start(ctx)
			p.mu.Unlock()
			if err == nil {
				logf("vault: the embedded Vault is running and unsealed again")
				break
			}
			logf("vault: restart failed; retrying", "err", err, "in", backoff.String())
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
	}
}

// serverCommand is `vault server` with the configuration at conf, its
// output to log (may be nil).
func serverCommand(bin, conf string, log io.Writer) *exec.Cmd {
	cmd := exec.Command(bin, "server", "-config", conf)
	if log != nil {
		cmd.Stdout, cmd.Stderr = log, log
	}
	cmd.Env = append(os.Environ(), "VAULT_DISABLE_USER_LOCKOUT=true")
	// Vault stops with the process group of its parent only if asked to;
	// Pdeathsig makes it exit when its parent dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	return cmd
}

func (p *Proc) start(ctx context.Context) error {
	conf := fmt.Sprintf(`storage "file" { path = %q }
listener "tcp" {
  address     = %q
  tls_disable = true
}
disable_mlock = true
ui            = false
api_addr      = %q
log_level     = "warn"
`, filepath.Join(p.dir, "storage"), p.listen, p.Addr)
	confPath := filepath.Join(p.dir, "config.hcl")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return err
	}
	p.cmd = serverCommand(p.bin, confPath, p.log)
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start vault: %w", err)
	}
	cmd, exited := p.cmd, make(chan struct{})
	p.exited = exited
	go func() { cmd.Wait(); close(exited) }()
	client, err := p.client("")
	if err != nil {
		return err
	}
	if err := p.waitUp(ctx); err != nil {
		p.halt()
		return err
	}
	st, err := client.Sys().InitStatusWithContext(ctx)
	if err != nil {
		p.halt()
		return fmt.Errorf("vault init status: %w", err)
	}
	initPath := filepath.Join(p.dir, "init.json")
	if !st {
		resp, err := client.Sys().InitWithContext(ctx, &vault.InitRequest{SecretShares: 1, SecretThreshold: 1})
		if err != nil {
			p.halt()
			return fmt.Errorf("vault init: %w", err)
		}
		b, _ := json.Marshal(initFile{UnsealKey: resp.KeysB64[0], RootToken: resp.RootToken})
		// The only unseal share: written whole and synced, or not at all.
		if err := writeFileAtomic(initPath, b, 0o600); err != nil {
			p.halt()
			return err
		}
	}
	b, err := os.ReadFile(initPath)
	if err != nil {
		p.halt()
		return fmt.Errorf("vault is initialised but %s is missing: %w", initPath, err)
	}
	var in initFile
	if err := json.Unmarshal(b, &in); err != nil {
		p.halt()
		return fmt.Errorf("read %s: %w", initPath, err)
	}
	if p.unsealKey == "" { // read once, at the first start
		p.tokMu.Lock()
		p.unsealKey, p.RootToken = in.UnsealKey, in.RootToken
		p.tokMu.Unlock()
	}
	if _, err := client.Sys().UnsealWithContext(ctx, p.unsealKey); err != nil {
		p.halt()
		return fmt.Errorf("vault unseal: %w", err)
	}
	for i := 0; i < 200; i++ {
		h, err := client.Sys().HealthWithContext(ctx)
		if err == nil && !h.Sealed && h.Initialized && !h.Standby {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.halt()
	return errors.New("vault did not become active")
}

func (p *Proc) client(token string) (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = p.Addr
	cfg.MaxRetries = 0
	c, err := vault.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(token)
	return c, nil
}

func (p *Proc) waitUp(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return errors.New("vault exited at start-up (see its log)")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if c, err := net.DialTimeout("tcp", p.listen, time.Second); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("vault did not start listening")
}

// Client returns a client with the root token ("" after RevokeRoot: use
// WithRoot then).
func (p *Proc) Client() (*vault.Client, error) {
	p.tokMu.Lock()
	tok := p.RootToken
	p.tokMu.Unlock()
	return p.client(tok)
}

// WithRoot runs fn with a root client: the kept root token, or, after
// RevokeRoot, one regenerated from the unseal key (Vault's generate-root),
// which is revoked as soon as fn returns. So no root token outlives the
// operation that needed it.
func (p *Proc) WithRoot(ctx context.Context, fn func(*vault.Client) error) error {
	c, err := p.Client()
	if err != nil {
		return err
	}
	if c.Token() != "" {
		return fn(c)
	}
	tok, err := p.generateRoot(ctx)
	if err != nil {
		return err
	}
	c.SetToken(tok)
	defer c.Auth().Token().RevokeSelfWithContext(context.Background(), "")
	return fn(c)
}

// generateRoot makes a root token from the unseal key (one share).
func (p *Proc) generateRoot(ctx context.Context) (string, error) {
	c, err := p.client("")
	if err != nil {
		return "", err
	}
	c.Sys().GenerateRootCancelWithContext(ctx) // an attempt left by a crash
	st, err := c.Sys().GenerateRootInitWithContext(ctx, "", "")
	if err != nil {
		return "", fmt.Errorf("vault: generate-root: %w", err)
	}
	otp := st.OTP
	if st, err = c.Sys().GenerateRootUpdateWithContext(ctx, p.unsealKey, st.Nonce); err != nil {
		return "", fmt.Errorf("vault: generate-root: %w", err)
	}
	if !st.Complete || otp == "" {
		return "", errors.New("vault: generate-root did not complete with one share")
	}
	enc, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(st.EncodedToken, "="))
	if err != nil || len(enc) != len(otp) {
		return "", errors.New("vault: generate-root returned an undecodable token")
	}
	for i := range enc {
		enc[i] ^= otp[i]
	}
	return string(enc), nil
}

// RevokeRoot revokes the root token of initialisation and drops it from
// init.json, which keeps only the unseal key: from then on a root token
// exists only for the moment WithRoot needs one.
func (p *Proc) RevokeRoot(ctx context.Context) error {
	p.tokMu.Lock()
	defer p.tokMu.Unlock()
	if p.RootToken == "" {
		return nil
	}
	c, err := p.client(p.RootToken)
	if err != nil {
		return err
	}
	if err := c.Auth().Token().RevokeSelfWithContext(ctx, ""); err != nil {
		return fmt.Errorf("vault: revoke the root token: %w", err)
	}
	b, _ := json.Marshal(initFile{UnsealKey: p.unsealKey})
	if err := writeFileAtomic(filepath.Join(p.dir, "init.json"), b, 0o600); err != nil {
		return err
	}
	p.RootToken = ""
	return nil
}

// Stop stops Vault for good (SIGTERM, then SIGKILL after 10 s); a
// supervisor ends.
func (p *Proc) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return p.halt()
}

// Kill kills the child as a crash would (SIGKILL), for fault tests: a
// supervisor restarts it.
func (p *Proc) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
	}
}

// halt stops the child; the caller holds p.mu.
func (p *Proc) halt() error {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
	return nil
}

// Restart stops Vault if it runs and starts it again on the same storage,
// unsealed.
func (p *Proc) Restart(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.restarting = true
	defer func() { p.restarting = false }()
	p.halt()
	p.closed = false
	return p.start(ctx)
}

// writeFileAtomic writes data to path through a synced temporary file and
// a rename, then syncs the directory: after a crash the file is either the
// old one or the whole new one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// tokenFile holds the periodic token smimeca runs with.
const tokenFile = "smimeca-token"

// tokenPeriod is the period of smimeca's token: it lives as long as it is
// renewed within that time.
const tokenPeriod = 768 * time.Hour

// SmimecaToken returns the one periodic token smimeca runs with (policy
// "smimeca", see ScopedToken), kept in DIR/smimeca-token (0600): minted on
// first use, renewed when less than half its period remains, and minted
// again only when Vault no longer knows it (it lapsed, or the storage was
// reset). So restarts and 403s do not add tokens.
func (p *Proc) SmimecaToken(ctx context.Context, kvMount, transitMount, transitKey string) (string, error) {
	path := filepath.Join(p.dir, tokenFile)
	if b, err := os.ReadFile(path); err == nil {
		tok := string(b)
		c, err := p.client(tok)
		if err != nil {
			return "", err
		}
		sec, err := c.Auth().Token().LookupSelfWithContext(ctx)
		if err == nil && sec != nil {
			if ttl, err := sec.TokenTTL(); err == nil && ttl < tokenPeriod/2 {
				if _, err := c.Auth().Token().RenewSelfWithContext(ctx, 0); err != nil {
					return "", fmt.Errorf("vault: renew smimeca's token: %w", err)
				}
			}
			return tok, nil
		}
		var re *vault.ResponseError
		if !errors.As(err, &re) || re.StatusCode != 403 {
			return "", fmt.Errorf("vault: look up smimeca's token: %w", err)
		}
	}
	tok, err := p.ScopedToken(ctx, kvMount, transitMount, transitKey)
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(path, []byte(tok), 0o600); err != nil {
		return "", err
	}
	return tok, nil
}

// ScopedToken creates a token that can use the escrow mounts and nothing
// else (policy "smimeca"), for smimeca to run with instead of the root
// token. Each call makes a new token: smimeca itself uses SmimecaToken.
func (p *Proc) ScopedToken(ctx context.Context, kvMount, transitMount, transitKey string) (tok string, err error) {
	return p.ScopedTokenAs(ctx, "smimeca", kvMount, transitMount, transitKey)
}

// ScopedTokenAs is ScopedToken with a policy of another name: mounts of
// their own, each with its own policy, share one Vault (the unit tests'
// per-test mounts).
func (p *Proc) ScopedTokenAs(ctx context.Context, policy, kvMount, transitMount, transitKey string) (tok string, err error) {
	err = p.WithRoot(ctx, func(c *vault.Client) error {
		tok, err = scopedToken(ctx, c, policy, kvMount, transitMount, transitKey)
		return err
	})
	return tok, err
}

func scopedToken(ctx context.Context, c *vault.Client, policy, kvMount, transitMount, transitKey string) (string, error) {
	if err := putPolicy(ctx, c, policy, kvMount, transitMount, transitKey); err != nil {
		return "", err
	}
	sec, err := c.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{
		Policies: []string{policy}, NoParent: true, Period: tokenPeriod.String(), DisplayName: "smimeca",
	})
	if err != nil {
		return "", fmt.Errorf("vault token: %w", err)
	}
	return sec.Auth.ClientToken, nil
}

// PutPolicy writes (or updates) the "smimeca" policy: what smimeca's token
// may do with the escrow mounts and nothing else. Starting smimeca
// rewrites it, so that a token minted by an older version gains what a
// newer one needs (e.g. listing users for the directory publisher).
func PutPolicy(ctx context.Context, c *vault.Client, kvMount, transitMount, transitKey string) error {
	return putPolicy(ctx, c, "smimeca", kvMount, transitMount, transitKey)
}

func putPolicy(ctx context.Context, c *vault.Client, name, kvMount, transitMount, transitKey string) error {
	pol := fmt.Sprintf(`path "%[1]s/data/users/*" { capabilities = ["create", "read", "update"] }
path "%[1]s/metadata/users/*" { capabilities = ["read", "delete", "list"] }
path "%[1]s/destroy/users/*" { capabilities = ["update"] }
path "%[2]s/encrypt/%[3]s" { capabilities = ["update"] }
path "%[2]s/decrypt/%[3]s" { capabilities = ["update"] }
`, kvMount, transitMount, transitKey)
	if err := c.Sys().PutPolicyWithContext(ctx, name, pol); err != nil {
		return fmt.Errorf("vault policy: %w", err)
	}
	return nil
}
