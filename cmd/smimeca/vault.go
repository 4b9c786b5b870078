package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/smimeca/smimeca/api"
	"github.com/smimeca/smimeca/ca/keystore"
	"github.com/smimeca/smimeca/escrow"
	"github.com/smimeca/smimeca/internal/vaultproc"
	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
	"github.com/smimeca/smimeca/policy"
)

var _ api.EscrowPolicy = (*policy.Escrow)(nil)
var _ policy.EscrowStore = (*escrow.Store)(nil)

// setupEscrow connects to Vault (starting the embedded one when asked) and
// returns the escrow rules, or nil when no Vault is configured.
// escrowSetup is what setupEscrow built: no escrow at all when policy is nil.
type escrowSetup struct {
	policy *policy.Escrow
	store  *escrow.Store
	// directory answers recipient lookups from the escrow.
	directory *policy.Directory
	// stop stops the embedded Vault, if any.
	stop func()
	// ping reports whether Vault answers and is unsealed.
	ping func(context.Context) error
}

func setupEscrow(ctx context.Context, cfg *serveConfig, logger *slog.Logger, audit policy.Auditor, domains *policy.Domains, keys keystore.Store) (escrowSetup, error) {
	noop := func() {}
	vc := escrow.VaultConfig{Address: cfg.vaultAddr, TokenFile: cfg.vaultTokenFile,
		Token: os.Getenv("SMIMECA_VAULT_TOKEN"), RoleID: cfg.vaultRoleID, SecretIDFile: cfg.vaultSecretIDFile}
	ecfg := escrow.Config{KVMount: cfg.vaultKVMount, TransitMount: cfg.vaultTransit, TransitKey: cfg.vaultTransitKey}
	stop := noop
	switch {
	case cfg.embeddedVault:
		ev, p, err := startEmbeddedVault(ctx, cfg, logger, ecfg)
		if err != nil {
			return escrowSetup{stop: noop}, err
		}
		vc, stop = ev, func() { p.Stop() }
	case cfg.vaultAddr == "":
		logger.Warn("no Vault configured (--vault-addr or --embedded-vault): the escrow API is off")
		return escrowSetup{stop: noop}, nil
	}
	logical, client, err := escrow.ConnectLogical(ctx, vc)
	if err != nil {
		stop()
		return escrowSetup{stop: noop}, err
	}
	if cfg.vaultSetup {
		if err := escrow.Setup(ctx, client, ecfg); err != nil {
			stop()
			return escrowSetup{stop: noop}, err
		}
	}
	if err := escrow.Ping(ctx, client); err != nil {
		logger.Warn("Vault is not available now; escrow calls will answer UNAVAILABLE until it is", "err", err)
	}
	conn, err := pfxconnector.LoadOrCreateKey(keys)
	if err != nil {
		stop()
		return escrowSetup{stop: noop}, err
	}
	aliases := cfg.resolved.aliases
	store := escrow.New(logical, ecfg)
	logger.Info("escrow in Vault", "vault", client.Address(), "kv_mount", ecfg.KVMount)
	esc := policy.NewEscrow(store, conn, domains, policy.WithAliases(aliases), policy.WithEscrowAuditor(audit))
	logger.Info("PFX connector key", "key", keys.Location(keystore.Connector), "oaep_hashes", esc.ConnectorHashes())
	dir := policy.NewDirectory(store, aliases, 0, policy.WithDirectoryDomains(domains))
	esc.OnChange(dir.Invalidate)
	return escrowSetup{
		policy: esc, store: store, directory: dir, stop: stop,
		ping: func(ctx context.Context) error { return escrow.Ping(ctx, client) },
	}, nil
}

// enableAudit turns on Vault's file audit device (idempotent).
func enableAudit(ctx context.Context, c *vault.Client, path string) error {
	audits, err := c.Sys().ListAuditWithContext(ctx)
	if err != nil {
		return err
	}
	if _, ok := audits["file/"]; ok {
		return nil
	}
	return c.Sys().EnableAuditWithOptionsWithContext(ctx, "file", &vault.EnableAuditOptions{Type: "file", Options: map[string]string{"file_path": path, "mode": "0600"}})
}

// readAliases reads "alias,user" lines.
func readAliases(path string) (map[string]string, error) {
	out := map[string]string{}
	if path == "" {
		return out, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = 2
	r.Comment = '#'
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		a, err1 := policy.NormalizeEmail(rec[0])
		u, err2 := policy.NormalizeEmail(rec[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("line %q: both columns must be e-mail addresses", strings.Join(rec, ","))
		}
		out[a] = u
	}
}

// vaultLog forwards the embedded Vault's output to the log.
type vaultLog struct{ l *slog.Logger }

func (v vaultLog) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line != "" {
			v.l.Info("vault: " + line)
		}
	}
	return len(p), nil
}

// startEmbeddedVault starts the single-machine Vault under DATA/vault, sets
// it up with a root token regenerated for the purpose and revoked after,
// and returns how to reach it with smimeca's periodic token; its
// supervisor restarts and unseals it when it dies.
func startEmbeddedVault(ctx context.Context, cfg *serveConfig, logger *slog.Logger, ecfg escrow.Config) (escrow.VaultConfig, *vaultproc.Proc, error) {
	logger.Warn("EMBEDDED VAULT: single-machine default. Its unseal key is stored in " +
		filepath.Join(cfg.dataDir, "vault", "init.json") + "; anyone who can read the data directory can read every escrowed key. Use an operator-run Vault (--vault-addr) in production.")
	p, err := vaultproc.Start(ctx, cfg.vaultBin, filepath.Join(cfg.dataDir, "vault"), cfg.embeddedVaultAddr, vaultLog{logger})
	if err != nil {
		return escrow.VaultConfig{}, nil, fmt.Errorf("embedded vault: %w", err)
	}
	// Setting up needs root: the token of initialisation on the first
	// start, afterwards one regenerated from the unseal key and revoked
	// right after (WithRoot).
	if err := p.WithRoot(ctx, func(root *vault.Client) error {
		if err := escrow.Setup(ctx, root, ecfg); err != nil {
			return err
		}
		if err := vaultproc.PutPolicy(ctx, root, ecfg.KVMount, ecfg.TransitMount, ecfg.TransitKey); err != nil {
			return err
		}
		if err := enableAudit(ctx, root, filepath.Join(cfg.dataDir, "vault", "audit.log")); err != nil {
			logger.Warn("vault audit device", "err", err)
		}
		return nil
	}); err != nil {
		p.Stop()
		return escrow.VaultConfig{}, nil, err
	}
	// One periodic token, kept under DATA/vault and renewed (by the
	// supervisor daily, and whenever Vault refuses it), minted again
	// only if it lapsed. The supervisor restarts and unseals Vault
	// when it dies; escrow calls answer UNAVAILABLE meanwhile.
	token := func(ctx context.Context) (string, error) {
		return p.SmimecaToken(ctx, ecfg.KVMount, ecfg.TransitMount, ecfg.TransitKey)
	}
	if _, err := token(ctx); err != nil {
		p.Stop()
		return escrow.VaultConfig{}, nil, err
	}
	// No root token is kept: init.json holds the unseal key only.
	if err := p.RevokeRoot(ctx); err != nil {
		logger.Warn("vault: the root token could not be revoked", "err", err)
	}
	go p.Supervise(ctx, 24*time.Hour, func(ctx context.Context) error { _, err := token(ctx); return err },
		func(msg string, args ...any) { logger.Warn(msg, args...) })
	return escrow.VaultConfig{Address: p.Addr, TokenSource: token}, p, nil
}
