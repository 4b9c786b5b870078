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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// DefaultVersion is the Vault version scripts/vault.sh builds.
const DefaultVersion = "1.21.0"

// DefaultBinary returns where scripts/vault.sh puts the Vault binary, unless
// $SMIMECA_VAULT_BIN names another.
func DefaultBinary() string {
	if b := os.Getenv("SMIMECA_VAULT_BIN"); b != "" {
		return b
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "smimeca", "vault-"+DefaultVersion, "vault")
}

// Proc is a running Vault.
type Proc struct {
	// Addr is the http:// address of the server.
	Addr string
	// RootToken is the root token from initialisation.
	RootToken string

	bin, dir, listen string
	log              io.Writer
	cmd              *exec.Cmd
	unsealKey        string
	exited           chan struct{}
}

type initFile struct {
	UnsealKey string `json:"unseal_key"`
	RootToken string `json:"root_token"`
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
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return p, nil
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
	p.cmd = exec.Command(p.bin, "server", "-config", confPath)
	if p.log != nil {
		p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	}
	p.cmd.Env = append(os.Environ(), "VAULT_DISABLE_USER_LOCKOUT=true")
	// Vault stops with the process group of its parent only if asked to;
	// Pdeathsig makes it exit when smimeca dies.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start vault: %w", err)
	}
	p.exited = make(chan struct{})
	go func() { p.cmd.Wait(); close(p.exited) }()
	client, err := p.client("")
	if err != nil {
		return err
	}
	if err := p.waitUp(ctx); err != nil {
		p.Stop()
		return err
	}
	st, err := client.Sys().InitStatusWithContext(ctx)
	if err != nil {
		p.Stop()
		return fmt.Errorf("vault init status: %w", err)
	}
	initPath := filepath.Join(p.dir, "init.json")
	if !st {
		resp, err := client.Sys().InitWithContext(ctx, &vault.InitRequest{SecretShares: 1, SecretThreshold: 1})
		if err != nil {
			p.Stop()
			return fmt.Errorf("vault init: %w", err)
		}
		b, _ := json.Marshal(initFile{UnsealKey: resp.KeysB64[0], RootToken: resp.RootToken})
		if err := os.WriteFile(initPath, b, 0o600); err != nil {
			p.Stop()
			return err
		}
	}
	b, err := os.ReadFile(initPath)
	if err != nil {
		p.Stop()
		return fmt.Errorf("vault is initialised but %s is missing: %w", initPath, err)
	}
	var in initFile
	if err := json.Unmarshal(b, &in); err != nil {
		p.Stop()
		return fmt.Errorf("read %s: %w", initPath, err)
	}
	p.unsealKey, p.RootToken = in.UnsealKey, in.RootToken
	if _, err := client.Sys().UnsealWithContext(ctx, p.unsealKey); err != nil {
		p.Stop()
		return fmt.Errorf("vault unseal: %w", err)
	}
	for i := 0; i < 200; i++ {
		h, err := client.Sys().HealthWithContext(ctx)
		if err == nil && !h.Sealed && h.Initialized && !h.Standby {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Stop()
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

// Client returns a client with the root token.
func (p *Proc) Client() (*vault.Client, error) { return p.client(p.RootToken) }

// Stop stops Vault (SIGTERM, then SIGKILL after 10 s).
func (p *Proc) Stop() error {
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

// Restart starts a stopped Vault again on the same storage and unseals it.
func (p *Proc) Restart(ctx context.Context) error {
	p.Stop()
	return p.start(ctx)
}

// ScopedToken creates a token that can use the escrow mounts and nothing
// else (policy "smimeca"), for smimeca to run with instead of the root
// token.
func (p *Proc) ScopedToken(ctx context.Context, kvMount, transitMount, transitKey string) (string, error) {
	c, err := p.Client()
	if err != nil {
		return "", err
	}
	pol := fmt.Sprintf(`path "%[1]s/data/users/*" { capabilities = ["create", "read", "update"] }
path "%[1]s/metadata/users/*" { capabilities = ["read", "delete"] }
path "%[1]s/destroy/users/*" { capabilities = ["update"] }
path "%[2]s/encrypt/%[3]s" { capabilities = ["update"] }
path "%[2]s/decrypt/%[3]s" { capabilities = ["update"] }
`, kvMount, transitMount, transitKey)
	if err := c.Sys().PutPolicyWithContext(ctx, "smimeca", pol); err != nil {
		return "", fmt.Errorf("vault policy: %w", err)
	}
	sec, err := c.Auth().Token().CreateWithContext(ctx, &vault.TokenCreateRequest{
		Policies: []string{"smimeca"}, NoParent: true, Period: "768h", DisplayName: "smimeca",
	})
	if err != nil {
		return "", fmt.Errorf("vault token: %w", err)
	}
	return sec.Auth.ClientToken, nil
}
