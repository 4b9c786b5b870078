package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// envFlags binds flags whose defaults come from SMIMECA_* environment
// variables, so that every setting works as a flag and as a variable.
type envFlags struct {
	fs  *flag.FlagSet
	bad []string
}

func newFlags(name string) *envFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return &envFlags{fs: fs}
}

func (e *envFlags) str(p *string, name, env, def, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		def = v
	}
	e.fs.StringVar(p, name, def, help+" ($"+env+")")
}

func (e *envFlags) boolean(p *bool, name, env string, def bool, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			e.bad = append(e.bad, fmt.Sprintf("$%s=%q is not a boolean", env, v))
		} else {
			def = b
		}
	}
	e.fs.BoolVar(p, name, def, help+" ($"+env+")")
}

// optBool is a boolean flag that also knows whether it was set at all.
type optBool struct{ set, value bool }

func (o *optBool) String() string {
	if o == nil || !o.set {
		return ""
	}
	return strconv.FormatBool(o.value)
}

func (o *optBool) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not true or false", s)
	}
	o.set, o.value = true, b
	return nil
}

// IsBoolFlag lets the flag be given bare (--name means true).
func (o *optBool) IsBoolFlag() bool { return true }

// optionalBool binds a boolean whose absence means "the default of the
// installation", not false.
func (e *envFlags) optionalBool(p *optBool, name, env, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		if err := p.Set(v); err != nil {
			e.bad = append(e.bad, fmt.Sprintf("$%s=%q is not a boolean", env, v))
		}
	}
	e.fs.Var(p, name, help+" ($"+env+")")
}

func (e *envFlags) duration(p *time.Duration, name, env string, def time.Duration, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		d, err := parseDuration(v)
		if err != nil {
			e.bad = append(e.bad, fmt.Sprintf("$%s: %v", env, err))
		} else {
			def = d
		}
	}
	e.fs.Func(name, help+" ($"+env+") (default "+def.String()+")", func(s string) error {
		d, err := parseDuration(s)
		if err == nil {
			*p = d
		}
		return err
	})
	*p = def
}

func (e *envFlags) integer(p *int, name, env string, def int, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			e.bad = append(e.bad, fmt.Sprintf("$%s=%q is not an integer", env, v))
		} else {
			def = n
		}
	}
	e.fs.IntVar(p, name, def, help+" ($"+env+")")
}

func (e *envFlags) float(p *float64, name, env string, def float64, help string) {
	if v, ok := os.LookupEnv(env); ok && v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			e.bad = append(e.bad, fmt.Sprintf("$%s=%q is not a number", env, v))
		} else {
			def = f
		}
	}
	e.fs.Float64Var(p, name, def, help+" ($"+env+")")
}

func (e *envFlags) parse(args []string) error {
	if err := e.fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return usagef("%v", err)
	}
	if len(e.bad) > 0 {
		return usagef("%s", strings.Join(e.bad, "; "))
	}
	if e.fs.NArg() > 0 {
		return usagef("unexpected argument %q", e.fs.Arg(0))
	}
	return nil
}

// parseDuration accepts Go durations plus a "d" (day) suffix: 365d, 24h.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		if err != nil || days < 0 {
			return 0, fmt.Errorf("%q is not a duration (e.g. 24h, 30m, 365d)", s)
		}
		return time.Duration(days) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 24h, 30m, 365d)", s)
	}
	return d, nil
}

// localURLHost returns host:port for a listen address, with localhost for an
// empty or unspecified host.
func localURLHost(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port), nil
}

// loopbackOnly reports whether addr listens on a loopback address only.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// defaultDataDir is ./data unless $SMIMECA_DATA says otherwise.
func defaultDataDir() string {
	if v := os.Getenv("SMIMECA_DATA"); v != "" {
		return v
	}
	return "data"
}
