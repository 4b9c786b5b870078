// Package testpg gives tests a real PostgreSQL: one throw-away cluster per
// test binary, started with scripts/postgres.sh (Debian's package), and a
// fresh database per test on it.
package testpg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/smimeca/smimeca/internal/freeport"
)

var (
	once     sync.Once
	baseDSN  string
	dir      string
	startErr error
	seq      atomic.Int64
)

// script is scripts/postgres.sh of this repository.
func script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "scripts", "postgres.sh")
}

// DSN returns the URL of a new, empty database on the test binary's
// PostgreSQL cluster (started on first use; Stop, from TestMain, ends it).
// The database is created here, one at a time: PostgreSQL refuses a CREATE
// DATABASE while another copies the same template ("source database
// template1 is being accessed by other users"), which tests starting nodes
// at once would otherwise hit.
func DSN(t testing.TB) string {
	t.Helper()
	once.Do(start)
	if startErr != nil {
		t.Fatalf("start PostgreSQL (scripts/postgres.sh; make test installs postgresql): %v", startErr)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), seq.Add(1))
	createMu.Lock()
	defer createMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, strings.Replace(baseDSN, "/smimeca?", "/postgres?", 1))
	if err != nil {
		t.Fatalf("testpg: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testpg: create database %s: %v", name, err)
	}
	return strings.Replace(baseDSN, "/smimeca?", "/"+name+"?", 1)
}

// createMu makes this binary's databases one at a time.
var createMu sync.Mutex

func start() {
	port, err := freeport.Port()
	if err != nil {
		startErr = err
		return
	}
	if dir, err = os.MkdirTemp("", "smimeca-testpg"); err != nil {
		startErr = err
		return
	}
	out, err := exec.Command(script(), dir, fmt.Sprint(port)).Output()
	if err != nil {
		startErr = fmt.Errorf("%v: %s", err, out)
		return
	}
	baseDSN = strings.TrimSpace(string(out))
}

// Stop stops the cluster, if one was started. Call it from TestMain after
// m.Run.
func Stop() {
	if dir == "" {
		return
	}
	exec.Command(script(), dir, "stop").Run()
	os.RemoveAll(dir)
}
