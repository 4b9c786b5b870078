package test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// certmonger is Debian's certmonger daemon on a private D-Bus session bus,
// with its state under a temporary home, driven with getcert as an admin
// would drive it.
type certmonger struct {
	t   *testing.T
	env []string
}

func startCertmonger(t *testing.T) *certmonger {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/certmonger"); err != nil {
		t.Fatal("certmonger is not installed (scripts/deps.sh installs Debian's certmonger and dbus)")
	}
	home := t.TempDir()
	// A session bus without service directories: the standard session
	// configuration would let D-Bus activation start a second certmonger
	// (certmonger.service) on the first getcert call, one that keeps its
	// state in root's home and outlives the test.
	busConf := filepath.Join(home, "bus.conf")
	if err := os.WriteFile(busConf, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=`+home+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`), 0o600); err != nil {
		t.Fatal(err)
	}
	bus := exec.Command(tool(t, "dbus-daemon"), "--config-file="+busConf, "--nofork", "--print-address=1")
	bus.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := bus.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-bus.Process.Pid, syscall.SIGKILL); bus.Wait() })
	line := make([]byte, 512)
	n, err := out.Read(line)
	if err != nil || n == 0 {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	// Its state (CAs, requests) goes under the test's directory: without
	// these variables certmonger keeps it in the user's home, found from
	// the password database, whatever $HOME says.
	env := append(cleanEnv(), "DBUS_SESSION_BUS_ADDRESS="+strings.TrimSpace(string(line[:n])), "HOME="+home)
	for v, d := range map[string]string{"CERTMONGER_CONFIG_DIR": "config", "CERTMONGER_REQUESTS_DIR": "requests",
		"CERTMONGER_CAS_DIR": "cas", "CERTMONGER_LOCAL_CA_DIR": "local", "CERTMONGER_TMPDIR": "tmp"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o700); err != nil {
			t.Fatal(err)
		}
		env = append(env, v+"="+filepath.Join(home, d))
	}
	c := &certmonger{t: t, env: env}
	d := exec.Command("/usr/sbin/certmonger", "-s", "-n")
	d.Env = c.env
	var log bytes.Buffer
	d.Stdout, d.Stderr = &log, &log
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Kill(); d.Wait() })
	for i := 0; i < 100; i++ {
		if r := c.getcert("list-cas"); r.code == 0 {
			return c
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("certmonger did not come up: %s", log.String())
	return nil
}

func (c *certmonger) getcert(args ...string) result {
	c.t.Helper()
	cmd := exec.Command(tool(c.t, "getcert"), append([]string{args[0], "-s"}, args[1:]...)...)
	cmd.Env = c.env
	return runCmd(c.t, cmd)
}

// TestCertmonger enrols with certmonger against the default configuration
// — `getcert add-scep-ca`, `getcert request` with a one-time challenge —
// then renews with `getcert rekey` (a PKCSReq signed with the current
// certificate and its key): both certificates are S/MIME certificates for
// the challenge's user, whatever certmonger's request names, and the
// renewal supersedes the first.
func TestCertmonger(t *testing.T) {
	t.Parallel()
	withEachKMS(t, func(t *testing.T) {
		s := newServer(t)
		cm := startCertmonger(t)
		mustOK(t, "getcert add-scep-ca", cm.getcert("add-scep-ca", "-c", "smimeca", "-u", s.baseURL+"/scep"))
		s.register("alice@example.com", "laptop")
		ch := s.challenge("alice@example.com", "laptop")
		dir := t.TempDir()
		key, cert := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cert.pem")
		// The subject is the device's; the certificate names the challenge's
		// user. (certmonger encodes it as a PrintableString, which has no "@".)
		mustOK(t, "getcert request", cm.getcert("request", "-c", "smimeca", "-k", key, "-f", cert, "-L", ch, "-N", "CN=laptop", "-I", "alice", "-w"))
		status := mustOK(t, "getcert list", cm.getcert("list", "-i", "alice"))
		if !strings.Contains(status, "status: MONITORING") {
			t.Fatalf("certmonger's request:\n%s", status)
		}
		check := func() string {
			t.Helper()
			text := mustOK(t, "x509", openssl(t, "x509", "-in", cert, "-noout", "-text"))
			for _, want := range []string{"Subject: CN = alice@example.com", "email:alice@example.com", "E-mail Protection"} {
				if !strings.Contains(text, want) {
					t.Errorf("certmonger's certificate lacks %q:\n%s", want, text)
				}
			}
			mustOK(t, "verify -purpose smimesign", openssl(t, "verify", "-purpose", "smimesign", "-CAfile", filepath.Join(s.data, "ca", "root_ca.crt"),
				"-untrusted", filepath.Join(s.data, "ca", "intermediate_ca.crt"), cert))
			return serialOf(t, cert)
		}
		first := check()

		mustOK(t, "getcert rekey", cm.getcert("rekey", "-i", "alice", "-w"))
		if status := mustOK(t, "getcert list", cm.getcert("list", "-i", "alice")); !strings.Contains(status, "status: MONITORING") || strings.Contains(status, "ca-error") {
			t.Fatalf("after rekey:\n%s", status)
		}
		second := check()
		if second == first {
			t.Fatal("getcert rekey kept the old certificate")
		}
		out := mustOK(t, "cert list", s.cli("cert", "list", "--user", "alice@example.com", "--device", "laptop"))
		if !strings.Contains(out, "superseded") && !strings.Contains(out, "revoked") {
			t.Errorf("the renewal did not supersede the first certificate:\n%s", out)
		}
	})
}
