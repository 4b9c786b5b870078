package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/transparency-dev/tessera/client"

	"github.com/smimeca/smimeca/policy"
	"github.com/smimeca/smimeca/policy/auditlog/tlog"
)

// tlogFiles serves the audit transparency log's files read-only, without
// its coordination state (.state/).
func tlogFiles(dir string) http.Handler {
	files := http.FileServer(http.Dir(dir))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/.") {
			http.NotFound(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
}

// auditCmd verifies the audit transparency log offline and shows its
// events.
func auditCmd(args []string, stdout io.Writer) error {
	const use = "usage: smimeca audit (verify|show) --log DIR|URL --key audit_log.pub [--checkpoints DIR] [show: --user U --action A]"
	if len(args) == 0 || (args[0] != "verify" && args[0] != "show") {
		return usagef(use)
	}
	var logAt, keyFile, checkpoints, user, action string
	f := newFlags("audit " + args[0])
	f.fs.StringVar(&logAt, "log", filepath.Join(defaultDataDir(), "audit-log"), "the log: its directory, or its URL (the ops listener's http://HOST:PORT/audit-log/)")
	f.fs.StringVar(&keyFile, "key", filepath.Join(defaultDataDir(), "ca", tlog.PublicKeyFile), "the checkpoint verifier key (DATA/ca/audit_log.pub, obtained from a trusted copy)")
	f.fs.StringVar(&checkpoints, "checkpoints", "", "a directory of checkpoints saved earlier (a witness's copies; default: the log's own checkpoints/ history): the log must extend each")
	if args[0] == "show" {
		f.fs.StringVar(&user, "user", "", "only this user's events")
		f.fs.StringVar(&action, "action", "", "only this action's events (e.g. key.release)")
	}
	if err := f.parse(args[1:]); err != nil {
		return helpOK(err)
	}
	vkey, err := os.ReadFile(keyFile)
	if err != nil {
		return usagef("--key: %v", err)
	}
	v, err := tlog.NewVerifier(string(vkey))
	if err != nil {
		return usagef("--key %s: %v", keyFile, err)
	}
	fetcher, history, err := openTlog(logAt, checkpoints)
	if err != nil {
		return err
	}
	var each func(uint64, []byte) error
	if args[0] == "show" {
		each = func(i uint64, entry []byte) error {
			var e policy.Event
			if err := json.Unmarshal(entry, &e); err != nil {
				return fmt.Errorf("entry %d is not an audit event: %w", i, err)
			}
			if (user == "" || strings.EqualFold(e.User, user)) && (action == "" || e.Action == action) {
				fmt.Fprintf(stdout, "%d\t%s\n", i, entry)
			}
			return nil
		}
	}
	report, err := tlog.Verify(context.Background(), fetcher, v, history, each)
	if err != nil {
		return &clientError{fmt.Errorf("audit log %s: %w", logAt, err)}
	}
	if args[0] == "verify" {
		fmt.Fprintf(stdout, "audit log %s verified: %d events, root %x, signed by %s; extends %d earlier checkpoint(s)\n",
			logAt, report.Size, report.Root, v.Name(), report.Extended)
	}
	return nil
}

// openTlog returns the fetcher of a log directory or URL and the earlier
// checkpoints to check it against (tlog.Verify orders them): the files of
// checkpoints named by a tree size, or the log directory's own history.
func openTlog(at, checkpoints string) (tlog.Fetcher, [][]byte, error) {
	var fetcher tlog.Fetcher
	if strings.HasPrefix(at, "http://") || strings.HasPrefix(at, "https://") {
		u, err := url.Parse(strings.TrimSuffix(at, "/") + "/")
		if err != nil {
			return nil, nil, usagef("--log: %v", err)
		}
		if fetcher, err = client.NewHTTPFetcher(u, http.DefaultClient); err != nil {
			return nil, nil, err
		}
	} else {
		if _, err := os.Stat(filepath.Join(at, "checkpoint")); err != nil {
			return nil, nil, usagef("--log %s: not an audit log directory (%v)", at, err)
		}
		fetcher = client.FileFetcher{Root: at}
		if checkpoints == "" {
			checkpoints = filepath.Join(at, tlog.HistoryDir)
		}
	}
	if checkpoints == "" {
		return fetcher, nil, nil
	}
	entries, err := os.ReadDir(checkpoints)
	if err != nil {
		return nil, nil, usagef("--checkpoints: %v", err)
	}
	var history [][]byte
	for _, e := range entries {
		if _, err := strconv.ParseUint(e.Name(), 10, 64); err != nil || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(checkpoints, e.Name()))
		if err != nil {
			return nil, nil, err
		}
		history = append(history, b)
	}
	return fetcher, history, nil
}
