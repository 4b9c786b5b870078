package test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testvault"
)

type healthJSON struct {
	Status string            `json:"status"`
	Checks map[string]string `json:"checks"`
}

func (s *server) health(t *testing.T) (int, healthJSON) {
	t.Helper()
	resp, err := http.Get("http://" + s.opsAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var h healthJSON
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return resp.StatusCode, h
}

// waitHealth polls the ops /healthz until it answers code (up to 20 s: the
// monitor checks every 5 s).
func (s *server) waitHealth(t *testing.T, code int) healthJSON {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, h := s.health(t)
		if c == code {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("health stayed %d %+v, want %d", c, h, code)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// Health lives on the ops listener and reports each dependency: with Vault
// stopped it says degraded with the reason, and gRPC health takes the
// escrow services (not enrolment) out of service; both recover by
// themselves when Vault is back.
func TestHealthFollowsVault(t *testing.T) {
	v := testvault.Start(t)
	s := escrowServer(t, v)
	addr := "localhost" + s.grpcAddr[strings.LastIndex(s.grpcAddr, ":"):]
	if resp, err := http.Get(s.baseURL + "/healthz"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the public port serves health: %v %v", resp, err)
	}
	h := s.waitHealth(t, http.StatusOK)
	if h.Checks["vault"] != "ok" || h.Checks["database"] != "ok" || h.Checks["ca"] != "ok" {
		t.Fatalf("healthy: %+v", h)
	}
	grpcHealth := func(service string) string {
		r := s.grpcurl(t, "profile", "-d", `{"service":"`+service+`"}`, addr, "grpc.health.v1.Health/Check")
		return r.stdout + r.stderr
	}
	v.Stop()
	h = s.waitHealth(t, http.StatusServiceUnavailable)
	if h.Status != "degraded" || h.Checks["vault"] == "ok" || h.Checks["database"] != "ok" {
		t.Errorf("Vault stopped: %+v", h)
	}
	if out := grpcHealth("smimeca.v1.EscrowAdmin"); !strings.Contains(out, "NOT_SERVING") {
		t.Errorf("EscrowAdmin with Vault down: %s", out)
	}
	if out := grpcHealth("smimeca.v1.Enrollment"); !strings.Contains(out, `"SERVING"`) {
		t.Errorf("Enrollment with Vault down: %s", out)
	}
	if err := v.Restart(t.Context()); err != nil {
		t.Fatal(err)
	}
	s.waitHealth(t, http.StatusOK)
	if out := grpcHealth("smimeca.v1.EscrowAdmin"); !strings.Contains(out, `"SERVING"`) {
		t.Errorf("EscrowAdmin after Vault came back: %s", out)
	}
}
