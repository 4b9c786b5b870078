package main

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// healthCheck is one dependency the server needs.
type healthCheck struct {
	name string
	fn   func(context.Context) error
}

// healthMonitor checks the server's dependencies (database, CA keys, Vault)
// every interval, serves their state on the ops listener's /healthz, and
// sets gRPC health: a service is NOT_SERVING while one of the dependencies
// it needs is down, and so is the server as a whole ("") while the database
// or the CA is.
type healthMonitor struct {
	checks []healthCheck
	grpc   *health.Server
	needs  map[string][]string // gRPC service → dependencies it needs
	// informational dependencies are shown but leave the status ok: an
	// outside service (Intune) the node serves well without.
	informational map[string]bool
	interval      time.Duration

	mu    sync.Mutex
	state map[string]string // dependency → "" (ok) or why it is down
	at    time.Time
}

// check runs every check once and publishes the result.
func (m *healthMonitor) check(ctx context.Context) {
	state := map[string]string{}
	for _, c := range m.checks {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := c.fn(cctx); err != nil {
			state[c.name] = err.Error()
		} else {
			state[c.name] = ""
		}
		cancel()
	}
	m.mu.Lock()
	m.state, m.at = state, time.Now().UTC()
	m.mu.Unlock()
	for svc, deps := range m.needs {
		st := healthpb.HealthCheckResponse_SERVING
		for _, d := range deps {
			if state[d] != "" {
				st = healthpb.HealthCheckResponse_NOT_SERVING
			}
		}
		m.grpc.SetServingStatus(svc, st)
	}
}

// run checks every interval until ctx ends.
func (m *healthMonitor) run(ctx context.Context) {
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.check(ctx)
		}
	}
}

// ServeHTTP answers the dependencies' state as JSON: 200 when every one is
// up, 503 ("degraded", with the reasons) when one is not (an informational
// one's reason is shown, the status stays ok).
func (m *healthMonitor) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	m.mu.Lock()
	state, at := m.state, m.at
	m.mu.Unlock()
	out := struct {
		Status    string            `json:"status"`
		CheckedAt time.Time         `json:"checked_at"`
		Checks    map[string]string `json:"checks"`
	}{Status: "ok", CheckedAt: at, Checks: map[string]string{}}
	names := make([]string, 0, len(state))
	for n := range state {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if state[n] == "" {
			out.Checks[n] = "ok"
			continue
		}
		out.Checks[n] = state[n]
		if !m.informational[n] {
			out.Status = "degraded"
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if out.Status != "ok" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(out)
}
