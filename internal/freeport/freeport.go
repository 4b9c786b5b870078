// Package freeport picks loopback ports for test servers that are started
// by another process (smimeca, Vault, PostgreSQL) and so cannot be handed a
// listener. A port from the kernel's ephemeral range (what listening on :0
// returns) can be taken, before the server binds it, by any outgoing
// connection's local end; these ports come from below that range, where
// outgoing connections never land, and no port is handed out twice by one
// process. Tests and the cluster tool use it.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// lowest is the first port handed out; below the usual ephemeral ranges'
// start (32768 on Linux) and above well-known services.
const lowest = 15000

// Port returns a free loopback TCP port outside the ephemeral range.
func Port() (int, error) {
	high := ephemeralLow()
	mu.Lock()
	defer mu.Unlock()
	for range 200 {
		p := lowest + rand.IntN(high-lowest)
		if given[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		given[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("freeport: no free port between %d and %d", lowest, high)
}

// Addr returns "127.0.0.1:<Port()>".
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", p), nil
}

// ephemeralLow is the start of the kernel's ephemeral port range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	var lo, hi int
	if err == nil {
		if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil && lo > lowest+1000 {
			return lo
		}
	}
	return 32768
}
