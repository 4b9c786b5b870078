package test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pkcs12 "software.sslmate.com/src/go-pkcs12"

	"github.com/smimeca/smimeca/internal/testing/testpki"
	"github.com/smimeca/smimeca/internal/testing/testvault"
)

// readmeBlock is one runnable shell block of the README and the output it
// shows, if any.
type readmeBlock struct {
	line   int // of the opening fence
	script string
	want   []string
}

// readmeBlocks extracts the shell blocks marked `<!-- readme-test -->` and,
// for each, the text block marked `<!-- readme-test: output -->` right
// after it.
func readmeBlocks(readme []byte) ([]readmeBlock, error) {
	var blocks []readmeBlock
	sc := bufio.NewScanner(bytes.NewReader(readme))
	n, mark := 0, ""
	var cur *readmeBlock
	var body []string
	inFence := false
	for sc.Scan() {
		n++
		l := sc.Text()
		t := strings.TrimSpace(l)
		switch {
		case !inFence && (t == "<!-- readme-test -->" || t == "<!-- readme-test: output -->"):
			mark = t
		case !inFence && strings.HasPrefix(t, "```"):
			inFence, body = true, nil
			switch {
			case mark == "<!-- readme-test -->" && t == "```sh":
				blocks = append(blocks, readmeBlock{line: n})
				cur = &blocks[len(blocks)-1]
			case mark == "<!-- readme-test: output -->" && len(blocks) > 0:
				cur = nil
			case mark != "":
				return nil, fmt.Errorf("line %d: a readme-test marker before a %s block", n, t)
			default:
				cur = nil
			}
		case inFence && t == "```":
			inFence = false
			if cur != nil {
				cur.script = strings.Join(body, "\n") + "\n"
			} else if mark == "<!-- readme-test: output -->" {
				last := &blocks[len(blocks)-1]
				for _, b := range body {
					if strings.TrimSpace(b) != "" {
						last.want = append(last.want, b)
					}
				}
			}
			mark = ""
		case inFence:
			body = append(body, l)
		case t != "":
			mark = ""
		}
	}
	return blocks, sc.Err()
}

// readmeRun runs the blocks in order in dir with env, each line's
// host:port defaults replaced by subst; it stops at the first block that
// fails or whose output lacks, in order, the lines the README shows.
func readmeRun(t *testing.T, blocks []readmeBlock, dir string, env []string, subst *strings.Replacer) error {
	t.Helper()
	for _, b := range blocks {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", subst.Replace(b.script))
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("README block at line %d failed (%v):\n%s\noutput:\n%s", b.line, err, b.script, out)
		}
		rest := string(out)
		for _, w := range b.want {
			i := strings.Index(rest, strings.TrimSpace(w))
			if i < 0 {
				return fmt.Errorf("README block at line %d: its output no longer shows %q (in order):\n%s", b.line, w, out)
			}
			rest = rest[i+len(strings.TrimSpace(w)):]
		}
		t.Logf("README block at line %d: ok (%d lines of output)", b.line, bytes.Count(out, []byte("\n")))
	}
	return nil
}

// readmeSetup starts a server as `make run` would (escrow, the LDAP
// endpoint; break-glass allowed, as the README's lab lines say; the DDM
// asset endpoint) and a working directory with ./bin/smimeca, ./data and the
// example files the README's blocks name.
func readmeSetup(t *testing.T) (dir string, env []string, subst *strings.Replacer) {
	t.Helper()
	v := testvault.Start(t)
	ldapAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s := escrowServer(t, v, "--ldap-addr", ldapAddr, "--allow-break-glass", "--asset-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	dir = t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(smimecaBin(t), filepath.Join(dir, "bin", "smimeca")))
	must(os.Symlink(s.data, filepath.Join(dir, "data")))

	// The MDM's identity certificate of alice's iPhone.
	id := s.makeIdentity(t.TempDir(), "iphone-1")
	b, _ := os.ReadFile(id.cert)
	must(os.WriteFile(filepath.Join(dir, "iphone-1-identity.pem"), b, 0o644))
	// PFX exports (OpenSSL 3's default encoding) sharing pw.txt.
	pw := randomPassword(t)
	must(os.WriteFile(filepath.Join(dir, "pw.txt"), []byte(pw+"\n"), 0o600))
	is := testpki.NewIssuer(t)
	pfx := func(name, user string, i int, years int) {
		k := testpki.RSAKey(t, 2048, i)
		c := is.UserCert(t, k, testpki.CertOptions{Emails: []string{user},
			NotBefore: time.Now().Add(-time.Duration(years+1) * 365 * 24 * time.Hour), NotAfter: time.Now().Add(-time.Duration(years)*365*24*time.Hour + 400*24*time.Hour)})
		must(os.WriteFile(filepath.Join(dir, name), is.OpenSSLPFX(t, k, c, pw, false), 0o600))
	}
	pfx("2019.pfx", "alice@example.com", 0, 6)
	pfx("2021.pfx", "alice@example.com", 1, 4)
	pfx("2023.pfx", "alice@example.com", 2, 0)
	pfx("bob-2020.pfx", "bob@example.com", 3, 5)
	pfx("bob-2024.pfx", "bob@example.com", 4, 1)
	must(os.WriteFile(filepath.Join(dir, "exports.csv"), []byte("user,file,password_file,purpose\nbob@example.com,bob-2020.pfx,pw.txt,\nbob@example.com,bob-2024.pfx,pw.txt,\n"), 0o600))
	// An Intune PFXImport record, encrypted to this server's connector key.
	kc := testpki.RSAKey(t, 2048, 5)
	cc := is.UserCert(t, kc, testpki.CertOptions{Emails: []string{"alice@example.com"}})
	must(os.WriteFile(filepath.Join(dir, "intune-export.json"), testpki.IntuneJSON(t,
		testpki.IntuneRecord(t, connectorKey(t, s), cc, is.PFX(t, pkcs12.Modern2023, kc, cc, pw), pw, "alice@example.com", "SmimeEncryption", intuneScheme(connectorHashes(t, s), "OaepSha512"))), 0o600))
	must(os.WriteFile(filepath.Join(dir, "mail.yaml"), []byte("hostName: mail.example.com\n"), 0o600))

	grpcurlDir := filepath.Dir(tool(t, "grpcurl"))
	env = append(cleanEnv(), "SMIMECA_SERVER="+s.grpcAddr, "SMIMECA_HTTP_ADDR="+s.httpAddr, "SMIMECA_OPS_ADDR="+s.opsAddr,
		"PATH="+grpcurlDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	env = append(env, s.cliEnv()...)
	subst = strings.NewReplacer("localhost:8080", s.httpAddr, "localhost:9443", s.grpcAddr, "localhost:1389", ldapAddr)
	return dir, env, subst
}

// TestReadme runs the README's shell blocks, verbatim but for the ports,
// in order (make readme-test).
func TestReadme(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := readmeBlocks(readme)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) < 8 {
		t.Fatalf("only %d runnable blocks in the README", len(blocks))
	}
	dir, env, subst := readmeSetup(t)
	if err := readmeRun(t, blocks, dir, env, subst); err != nil {
		t.Fatal(err)
	}
}

// TestReadmeRunnerCatchesABrokenCopy: the same runner on a copy of the
// README with one command broken, and on one whose shown output no longer
// matches, fails and names the block.
func TestReadmeRunnerCatchesABrokenCopy(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ from, to string }{
		"a broken command": {"device register --user alice@example.com --device iphone-1 --identity-cert", "device register --usr alice@example.com --device iphone-1 --identity-cert"},
		"a changed output": {"subject=CN = alice@example.com", "subject=CN = mallory@example.com"},
	} {
		broken := bytes.Replace(readme, []byte(c.from), []byte(c.to), 1)
		if bytes.Equal(broken, readme) {
			t.Fatalf("%s: the README no longer holds the text the test breaks", name)
		}
		blocks, err := readmeBlocks(broken)
		if err != nil {
			t.Fatal(err)
		}
		// Run the blocks up to the broken one.
		last := slices.IndexFunc(blocks, func(b readmeBlock) bool {
			return strings.Contains(b.script, c.to) || slices.ContainsFunc(b.want, func(w string) bool { return strings.Contains(w, c.to) })
		})
		if last < 0 {
			t.Fatalf("%s: no marked block holds the broken text", name)
		}
		dir, env, subst := readmeSetup(t)
		err = readmeRun(t, blocks[:last+1], dir, env, subst)
		if err == nil || !strings.Contains(err.Error(), "README block at line") {
			t.Errorf("%s: the runner passed: %v", name, err)
		}
	}
}
