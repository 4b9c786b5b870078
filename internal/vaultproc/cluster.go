package vaultproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/smimeca/smimeca/internal/freeport"
)

// Cluster is a Vault cluster with integrated storage (Raft) of several
// servers on loopback, as production runs Vault (3 or 5 nodes): for the
// tests of smimeca following the active node. One unseal key, kept in
// memory.
type Cluster struct {
	// Nodes are the servers, the first the one initialised.
	Nodes []*Node
	// RootToken is the root token of initialisation.
	RootToken string
	unsealKey string
	bin       string
	log       io.Writer
}

// Node is one server of a Cluster.
type Node struct {
	// Addr is its http:// API address.
	Addr   string
	id     string
	conf   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// StartCluster starts n Vault servers with Raft storage under dir, joins
// them (retry_join), initialises the first with one unseal key, and unseals
// every one; it returns once the first is active and the others are
// standbys.
func StartCluster(ctx context.Context, bin, dir string, n int, log io.Writer) (*Cluster, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("vault binary %s: %w (build it with scripts/vault.sh)", bin, err)
	}
	c := &Cluster{bin: bin, log: log}
	clusterAddrs := make([]string, n)
	for i := range n {
		api, err := freeport.Addr() // outside the ephemeral range: free again when a killed node restarts
		if err != nil {
			return nil, err
		}
		if clusterAddrs[i], err = freeport.Addr(); err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, &Node{Addr: "http://" + api, id: fmt.Sprintf("node%d", i+1)})
	}
	for i, nd := range c.Nodes {
		ndir := filepath.Join(dir, nd.id)
		if err := os.MkdirAll(filepath.Join(ndir, "raft"), 0o700); err != nil {
			return nil, err
		}
		var joins strings.Builder
		for j, other := range c.Nodes {
			if j != i {
				fmt.Fprintf(&joins, "  retry_join {\n    leader_api_addr = %q\n  }\n", other.Addr)
			}
		}
		// performance_multiplier 1 (Vault's advice for production
		// hardware; its default, 5, suits slow disks) detects a dead
		// leader and elects another in about a second instead of five.
		conf := fmt.Sprintf(`storage "raft" {
  path    = %q
  node_id = %q
  performance_multiplier = 1
%s}
listener "tcp" {
  address         = %q
  cluster_address = %q
  tls_disable     = true
}
api_addr      = %q
cluster_addr  = "https://%s"
disable_mlock = true
ui            = false
log_level     = "warn"
`, filepath.Join(ndir, "raft"), nd.id, joins.String(), strings.TrimPrefix(nd.Addr, "http://"), clusterAddrs[i], nd.Addr, clusterAddrs[i])
		nd.conf = filepath.Join(ndir, "config.hcl")
		if err := os.WriteFile(nd.conf, []byte(conf), 0o600); err != nil {
			return nil, err
		}
	}
	for i := range c.Nodes {
		if err := c.Start(i); err != nil {
			c.Stop()
			return nil, err
		}
	}
	first, err := c.Client(0, "")
	if err != nil {
		c.Stop()
		return nil, err
	}
	resp, err := first.Sys().InitWithContext(ctx, &vault.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("vault init: %w", err)
	}
	c.unsealKey, c.RootToken = resp.KeysB64[0], resp.RootToken
	for i := range c.Nodes {
		if err := c.unseal(ctx, i); err != nil {
			c.Stop()
			return nil, err
		}
		if i == 0 {
			if _, err := c.WaitLeader(ctx, 30*time.Second); err != nil {
				c.Stop()
				return nil, err
			}
			// Autopilot promotes a joined node to voter once it has been
			// healthy this long (10 s by default); until then losing the
			// leader loses the quorum.
			root, _ := c.Client(0, c.RootToken)
			if _, err := root.Logical().WriteWithContext(ctx, "sys/storage/raft/autopilot/configuration",
				map[string]any{"server_stabilization_time": "1s", "cleanup_dead_servers": false}); err != nil {
				c.Stop()
				return nil, fmt.Errorf("vault autopilot: %w", err)
			}
		}
	}
	if err := c.waitVoters(ctx, len(c.Nodes), 60*time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// waitVoters waits until the Raft configuration counts n voters.
func (c *Cluster) waitVoters(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if i, err := c.WaitLeader(ctx, timeout); err == nil {
			cl, _ := c.Client(i, c.RootToken)
			s, err := cl.Logical().ReadWithContext(ctx, "sys/storage/raft/configuration")
			if err == nil && s != nil {
				voters := 0
				cfg, _ := s.Data["config"].(map[string]any)
				servers, _ := cfg["servers"].([]any)
				for _, sv := range servers {
					if m, _ := sv.(map[string]any); m["voter"] == true {
						voters++
					}
				}
				if voters >= n {
					return nil
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("vault cluster: fewer than %d voters after %s", n, timeout)
}

// Start starts node i's server (again, after Kill), without unsealing it.
func (c *Cluster) Start(i int) error {
	nd := c.Nodes[i]
	nd.cmd = serverCommand(c.bin, nd.conf, c.log)
	if err := nd.cmd.Start(); err != nil {
		return fmt.Errorf("start vault %s: %w", nd.id, err)
	}
	nd.exited = make(chan struct{})
	cmd, exited := nd.cmd, nd.exited
	go func() { cmd.Wait(); close(exited) }()
	cl, err := c.Client(i, "")
	if err != nil {
		return err
	}
	for range 200 {
		if _, err := cl.Sys().SealStatus(); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("vault %s did not come up", nd.id)
}

// Restart starts node i again after Kill and unseals it; it rejoins the
// cluster from its own Raft storage.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if err := c.Start(i); err != nil {
		return err
	}
	return c.unseal(ctx, i)
}

// unseal unseals node i and waits until it is unsealed (a joining node
// first copies the cluster's state).
func (c *Cluster) unseal(ctx context.Context, i int) error {
	cl, err := c.Client(i, "")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		st, err := cl.Sys().UnsealWithContext(ctx, c.unsealKey)
		if err == nil && !st.Sealed {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("vault %s stayed sealed", c.Nodes[i].id)
}

// Client returns an API client of node i with token.
func (c *Cluster) Client(i int, token string) (*vault.Client, error) {
	cfg := vault.DefaultConfig()
	cfg.Address = c.Nodes[i].Addr
	cfg.Timeout = 10 * time.Second
	cl, err := vault.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	cl.SetToken(token)
	return cl, nil
}

// Addrs returns every node's address, comma-separated (smimeca's
// --vault-addr for a cluster).
func (c *Cluster) Addrs() string {
	var a []string
	for _, nd := range c.Nodes {
		a = append(a, nd.Addr)
	}
	return strings.Join(a, ",")
}

// WaitLeader waits until a running node reports itself the active one and
// returns its index.
func (c *Cluster) WaitLeader(ctx context.Context, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for i, nd := range c.Nodes {
			if !nd.running() {
				continue
			}
			cl, err := c.Client(i, "")
			if err != nil {
				continue
			}
			h, err := cl.Sys().HealthWithContext(ctx)
			if err == nil && h.Initialized && !h.Sealed && !h.Standby {
				return i, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return -1, errors.New("no active vault node")
}

func (nd *Node) running() bool {
	if nd.exited == nil {
		return false
	}
	select {
	case <-nd.exited:
		return false
	default:
		return true
	}
}

// Kill kills node i with SIGKILL and waits for it to exit.
func (c *Cluster) Kill(i int) {
	nd := c.Nodes[i]
	if nd.running() {
		nd.cmd.Process.Kill()
		<-nd.exited
	}
}

// Stop stops every node.
func (c *Cluster) Stop() {
	for _, nd := range c.Nodes {
		if nd.running() {
			nd.cmd.Process.Signal(os.Interrupt)
			select {
			case <-nd.exited:
			case <-time.After(10 * time.Second):
				nd.cmd.Process.Kill()
				<-nd.exited
			}
		}
	}
}

// ScopedToken returns a new periodic token limited to smimeca's policy
// (written first), as Proc.ScopedToken does on one server.
func (c *Cluster) ScopedToken(ctx context.Context, kvMount, transitMount, transitKey string) (string, error) {
	i, err := c.WaitLeader(ctx, 30*time.Second)
	if err != nil {
		return "", err
	}
	root, err := c.Client(i, c.RootToken)
	if err != nil {
		return "", err
	}
	return scopedToken(ctx, root, "smimeca", kvMount, transitMount, transitKey)
}
