package test

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smimeca/smimeca/internal/testing/testvault"
)

// TestKeyRecoveryDualControl: an officer asks for a user's escrowed key,
// encrypted to the officer's own encryption certificate; one approval
// releases nothing, a second from another approver does; the officer
// downloads one CMS envelope that `openssl cms -decrypt` with the officer's
// key opens into the key as imported, byte for byte; a second download, a
// double vote, an officer's vote, a rejected request, and every other role
// get a clear refusal and nothing. With recovery set up, an administrator's
// plain break-glass is refused too. Every step is in the audit log with the
// credentials' names and serials.
func TestKeyRecoveryDualControl(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	s := escrowServer(t, v, "--allow-break-glass")
	w := t.TempDir()
	s.escrowOpenSSLPFX(t, w, "bob@example.com")
	s.registerWithIdentity("bob@example.com", "ipad-1")
	creds := recoveryCrew(t, s, w, map[string]string{"carl": "recovery-approver", "mdm": "registrar"})
	as := func(name string, args ...string) result { return creds.run(t, s, name, args...) }
	request := func() string {
		r := mustOK(t, "recovery request", as("olga", "recovery", "request", "--user", "Bob@example.com", "--reason", "leaver's mailbox, ticket 77",
			"--recipient-cert", filepath.Join(w, "officer.pem")))
		if !strings.Contains(r, "state: pending (0 of 2 approvals)") {
			t.Fatalf("recovery request printed:\n%s", r)
		}
		return recoveryID(t, r)
	}
	id := request()
	download := func(name, out string) result {
		return as(name, "recovery", "download", "--id", id, "--out", filepath.Join(w, out))
	}
	if r := download("olga", "early.cms"); r.code != 1 || !strings.Contains(r.stderr, "recovery-closed") || !strings.Contains(r.stderr, "not approved") {
		t.Errorf("download before any approval: %+v", r)
	}
	mustOK(t, "approve ann", as("ann", "recovery", "approve", "--id", id, "--comment", "ticket checked"))
	if r := download("olga", "one.cms"); r.code != 1 || !strings.Contains(r.stderr, "not approved") {
		t.Errorf("download after one approval: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(w, "one.cms")); err == nil {
		t.Error("a refused download left a file")
	}
	if r := as("ann", "recovery", "approve", "--id", id); r.code != 1 || !strings.Contains(r.stderr, "double-vote") {
		t.Errorf("a second vote of ann: %+v", r)
	}
	if r := as("olga", "recovery", "approve", "--id", id); r.code != 1 || !strings.Contains(r.stderr, "PermissionDenied") {
		t.Errorf("the officer approving: %+v", r)
	}
	creds["profile"], creds["admin"] = filepath.Join(s.data, "credentials", "profile"), filepath.Join(s.data, "credentials", "admin")
	for _, cred := range []string{"profile", "admin", "mdm"} {
		r := as(cred, "recovery", "approve", "--id", id)
		if r.code != 1 || !strings.Contains(r.stderr, "PermissionDenied") {
			t.Errorf("%s approving: %+v", cred, r)
		}
		r = as(cred, "recovery", "request", "--user", "bob@example.com", "--reason", "x", "--recipient-cert", filepath.Join(w, "officer.pem"))
		if r.code != 1 || !strings.Contains(r.stderr, "PermissionDenied") {
			t.Errorf("%s requesting: %+v", cred, r)
		}
	}
	if out := mustOK(t, "approve bert", as("bert", "recovery", "approve", "--id", id, "--comment", "HR confirmed")); !strings.Contains(out, "state: approved (2 of 2 approvals)") {
		t.Errorf("after the quorum:\n%s", out)
	}
	if r := download("ann", "ann.cms"); r.code != 1 || !strings.Contains(r.stderr, "PermissionDenied") {
		t.Errorf("an approver downloading: %+v", r)
	}
	mustOK(t, "download", download("olga", "release.cms"))
	if r := download("olga", "again.cms"); r.code != 1 || !strings.Contains(r.stderr, "given once") {
		t.Errorf("a second download: %+v", r)
	}
	// The release opens with the officer's key into the imported key.
	opensslIn(t, w, "cms", "-decrypt", "-inform", "DER", "-in", "release.cms", "-recip", "officer.pem", "-inkey", "officer.key", "-out", "release.pem")
	opensslIn(t, w, "pkey", "-in", "u.key", "-out", "imported.pem") // the key the PFX was made of, as PKCS#8
	released, _ := os.ReadFile(filepath.Join(w, "release.pem"))
	imported, _ := os.ReadFile(filepath.Join(w, "imported.pem"))
	if len(imported) == 0 || !bytes.Contains(released, imported) {
		t.Fatalf("the release does not hold the imported key:\n%s", released)
	}
	cert, _ := os.ReadFile(filepath.Join(w, "u.pem"))
	if !bytes.Contains(released, bytes.TrimSpace(cert)) {
		t.Error("the release does not hold the certificate")
	}
	// A rejection ends a request.
	id = request()
	mustOK(t, "approve ann", as("ann", "recovery", "approve", "--id", id))
	mustOK(t, "reject carl", as("carl", "recovery", "reject", "--id", id, "--comment", "no ticket"))
	if r := as("bert", "recovery", "approve", "--id", id); r.code != 1 || !strings.Contains(r.stderr, "rejected") {
		t.Errorf("approving a rejected request: %+v", r)
	}
	if r := download("olga", "rejected.cms"); r.code != 1 || !strings.Contains(r.stderr, "rejected") {
		t.Errorf("downloading a rejected request: %+v", r)
	}
	list := mustOK(t, "recovery list", as("ann", "recovery", "list", "--user", "bob@example.com"))
	if !strings.Contains(list, "released") || !strings.Contains(list, "rejected") {
		t.Errorf("recovery list:\n%s", list)
	}
	// With approvers registered, one administrator's break-glass is refused.
	r := s.cli("bundle", "get", "--out", filepath.Join(w, "glass"), "--user", "bob@example.com", "--device", "ipad-1", "--break-glass", "--reason", "shortcut")
	if r.code != 1 || !strings.Contains(r.stderr, "key recovery under dual control is configured") {
		t.Errorf("break-glass with recovery configured: %+v", r)
	}
	// The audit trail names every step's credential, by name and serial.
	audit, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`"name":"olga","credential":"[0-9A-Fa-f]+"},"action":"recovery.request"`),
		regexp.MustCompile(`"name":"ann","credential":"[0-9A-Fa-f]+"},"action":"recovery.approve"`),
		regexp.MustCompile(`"name":"bert","credential":"[0-9A-Fa-f]+"},"action":"recovery.approve"`),
		regexp.MustCompile(`"name":"carl","credential":"[0-9A-Fa-f]+"},"action":"recovery.reject"`),
		regexp.MustCompile(`"name":"olga","credential":"[0-9A-Fa-f]+"},"action":"key.release.recovery","user":"bob@example.com","sha256":\["[0-9a-f]{64}"\],"recipient_sha256":"[0-9a-f]{64}","result":"ok"`),
	} {
		if !want.Match(audit) {
			t.Errorf("the audit log lacks %s", want)
		}
	}
	if bytes.Contains(audit, []byte("PRIVATE KEY")) || bytes.Contains([]byte(s.log.String()), []byte("PRIVATE KEY")) {
		t.Error("a key reached the audit or server log")
	}
	checkAuditTlog(t, s, "recovery.request")
}

// credentialDirs maps credential names to their directories.
type credentialDirs map[string]string

// run runs smimeca against s with the named credential.
func (c credentialDirs) run(t *testing.T, s *server, name string, args ...string) result {
	return runEnv(t, s.cliEnv(), smimecaBin(t), append(args, "--server", s.grpcAddr, "--credentials", c[name])...)
}

// recoveryCrew issues through s the credentials of officer olga and
// approvers ann and bert, and those in more (name → role), and makes olga's
// own encryption certificate and key in w (officer.pem, officer.key).
func recoveryCrew(t *testing.T, s *server, w string, more map[string]string) credentialDirs {
	t.Helper()
	roles := map[string]string{"olga": "recovery-officer", "ann": "recovery-approver", "bert": "recovery-approver"}
	maps.Copy(roles, more)
	creds := credentialDirs{}
	for name, role := range roles {
		creds[name] = filepath.Join(w, "creds-"+name)
		mustOK(t, "credentials issue "+name, s.cli("credentials", "issue", "--name", name, "--role", role, "--out", creds[name]))
	}
	opensslIn(t, w, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "officer.key", "-out", "officer.pem", "-subj", "/CN=Olga Officer",
		"-days", "30", "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "keyUsage=critical,keyEncipherment")
	return creds
}

// recoveryID returns the id `recovery request` printed.
func recoveryID(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`recovery ([0-9a-f]{24})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no recovery id in:\n%s", out)
	}
	return m[1]
}

// A request past its deadline takes no vote and releases nothing, even
// approved; its expiry is audited.
func TestKeyRecoveryExpires(t *testing.T) {
	t.Parallel()
	s := escrowServer(t, testvault.Start(t), "--recovery-deadline", "3s", "--recovery-quorum", "1")
	w := t.TempDir()
	s.escrowOpenSSLPFX(t, w, "bob@example.com")
	creds := recoveryCrew(t, s, w, nil)
	as := func(name string, args ...string) result { return creds.run(t, s, name, args...) }
	ids := make([]string, 2)
	for i := range ids {
		r := mustOK(t, "recovery request", as("olga", "recovery", "request", "--user", "bob@example.com", "--reason", "ticket 9", "--recipient-cert", filepath.Join(w, "officer.pem")))
		ids[i] = recoveryID(t, r)
	}
	mustOK(t, "approve the second", as("ann", "recovery", "approve", "--id", ids[1])) // quorum 1: approved
	time.Sleep(3500 * time.Millisecond)
	if r := as("bert", "recovery", "approve", "--id", ids[0]); r.code != 1 || !strings.Contains(r.stderr, "expired") {
		t.Errorf("a vote after the deadline: %+v", r)
	}
	if r := as("olga", "recovery", "download", "--id", ids[1], "--out", filepath.Join(w, "late.cms")); r.code != 1 || !strings.Contains(r.stderr, "expired") {
		t.Errorf("downloading an approved request after the deadline: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(w, "late.cms")); err == nil {
		t.Error("an expired request released a file")
	}
	audit, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
	if n := bytes.Count(audit, []byte(`"action":"recovery.expire"`)); n != 2 {
		t.Errorf("%d recovery.expire events, want 2:\n%s", n, audit)
	}
	for _, line := range bytes.Split(audit, []byte("\n")) {
		if bytes.Contains(line, []byte(`"action":"key.release.recovery"`)) && bytes.Contains(line, []byte(`"result":"ok"`)) {
			t.Errorf("an expired request was released: %s", line)
		}
	}
}

// checkAuditTlog: the server's audit transparency log verifies offline
// (from its directory and from the ops listener) once a checkpoint covers
// the audit file, holds every event of the file in order, and a copy with
// one byte of the first event of action changed, or that event removed,
// fails naming it.
func checkAuditTlog(t *testing.T, s *server, action string) {
	t.Helper()
	dir, key := filepath.Join(s.data, "audit-log"), filepath.Join(s.data, "ca", "audit_log.pub")
	audit := func(args ...string) result {
		return runEnv(t, s.cliEnv(), smimecaBin(t), append([]string{"audit"}, args...)...)
	}
	auditFile, _ := os.ReadFile(filepath.Join(s.data, "audit.log"))
	lines := bytes.Count(auditFile, []byte("\n"))
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r := audit("verify", "--log", dir, "--key", key)
		if r.code == 0 && strings.Contains(r.stdout, fmt.Sprintf(": %d events", lines)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("audit verify (want %d events): %+v", lines, r)
		}
	}
	mustOK(t, "audit verify over the ops listener", audit("verify", "--log", "http://"+s.opsAddr+"/audit-log/", "--key", key))
	shown := mustOK(t, "audit show", audit("show", "--log", dir, "--key", key, "--action", action))
	first := strings.SplitN(strings.SplitN(shown, "\n", 2)[0], "\t", 2)
	if len(first) != 2 || !strings.Contains(first[1], `"action":"`+action+`"`) {
		t.Fatalf("audit show --action %s:\n%s", action, shown)
	}
	index, event := first[0], []byte(first[1])
	for name, mutate := range map[string]func([]byte) []byte{
		"changed": func(b []byte) []byte {
			return bytes.Replace(b, event, bytes.Replace(event, []byte(`"result":"ok"`), []byte(`"result":"no"`), 1), 1)
		},
		"removed": func(b []byte) []byte {
			i := bytes.Index(b, event)
			if i < 2 {
				return b
			}
			return append(append([]byte{}, b[:i-2]...), b[i+len(event):]...) // with its 2-byte length
		},
	} {
		copyDir := filepath.Join(t.TempDir(), "log")
		if err := os.CopyFS(copyDir, os.DirFS(dir)); err != nil {
			t.Fatal(err)
		}
		filepath.WalkDir(filepath.Join(copyDir, "tile", "entries"), func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				b, _ := os.ReadFile(p)
				os.WriteFile(p, mutate(b), 0o644)
			}
			return nil
		})
		r := audit("verify", "--log", copyDir, "--key", key)
		if r.code != 1 || !strings.Contains(r.stderr, "entry "+index+":") {
			t.Errorf("audit verify of a log with event %s %s: %+v", index, name, r)
		}
	}
}

// TestRecoveryAcrossNodes: two nodes on one PostgreSQL database and one
// Vault, writing one audit transparency log in a shared directory. A
// request filed on one node is approved on both and downloaded at the same
// instant from both: exactly one release. The shared log verifies and
// holds both nodes' recovery events.
func TestRecoveryAcrossNodes(t *testing.T) {
	t.Parallel()
	v := testvault.Start(t)
	shared := filepath.Join(t.TempDir(), "audit-log")
	nodes := newNodes(t, 2, newPostgres(t), append(vaultFlags(t, v), "--audit-tlog-dir", shared)...)
	w := t.TempDir()
	nodes[0].escrowOpenSSLPFX(t, w, "bob@example.com")
	creds := recoveryCrew(t, nodes[0], w, nil)
	as := func(node int, name string, args ...string) result { return creds.run(t, nodes[node], name, args...) }
	r := mustOK(t, "request on node 1", as(1, "olga", "recovery", "request", "--user", "bob@example.com", "--reason", "ticket 12", "--recipient-cert", filepath.Join(w, "officer.pem")))
	id := recoveryID(t, r)
	mustOK(t, "approve on node 0", as(0, "ann", "recovery", "approve", "--id", id))
	mustOK(t, "approve on node 1", as(1, "bert", "recovery", "approve", "--id", id))
	results := make([]result, 2)
	done := make(chan int)
	for i := range results {
		go func() {
			results[i] = as(i, "olga", "recovery", "download", "--id", id, "--out", filepath.Join(w, fmt.Sprintf("release-%d.cms", i)))
			done <- i
		}()
	}
	<-done
	<-done
	if ok := (results[0].code == 0) != (results[1].code == 0); !ok {
		t.Fatalf("two nodes downloading at once: %+v / %+v; want exactly one release", results[0], results[1])
	}
	for _, r := range results {
		if r.code != 0 && !strings.Contains(r.stderr, "once") {
			t.Errorf("the refused download does not say why: %+v", r)
		}
	}
	key := filepath.Join(nodes[0].data, "ca", "audit_log.pub")
	var shown string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r := runEnv(t, nodes[0].cliEnv(), smimecaBin(t), "audit", "show", "--log", shared, "--key", key)
		shown = r.stdout
		if r.code == 0 && strings.Contains(shown, `"action":"key.release.recovery"`) && strings.Count(shown, `"action":"recovery.approve"`) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the shared audit log: %+v", r)
		}
	}
	released := 0
	for _, line := range strings.Split(shown, "\n") {
		if strings.Contains(line, `"action":"key.release.recovery"`) && strings.Contains(line, `"result":"ok"`) {
			released++
		}
	}
	if strings.Count(shown, `"action":"recovery.request"`) != 1 || released != 1 {
		t.Errorf("the shared log's recovery events (%d releases):\n%s", released, shown)
	}
}
