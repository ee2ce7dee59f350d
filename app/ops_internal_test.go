package app

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/lockmgr"
)

// LOCK_TIMEOUT and RETRY_BUDGET left unset are lockmgr's defaults, applied
// where the lock manager is built; set, they win. What lockstep prints of
// its configuration shows the values in force either way.
func TestLockConfigDefaults(t *testing.T) {
	t.Parallel()
	def := lockmgr.DefaultConfig()
	if got := lockConfig(&config.Config{}); got != def {
		t.Fatalf("lockConfig(zero) = %+v, want lockmgr's default %+v", got, def)
	}
	for _, tc := range []struct {
		lockTimeout, retryBudget string
		want                     []string
	}{
		{"", "", []string{"lock_timeout=1.5s", "retry_budget=4s"}},
		{"250ms", "", []string{"lock_timeout=250ms", "retry_budget=4s"}},
		{"", "2s", []string{"lock_timeout=1.5s", "retry_budget=2s"}},
	} {
		env := map[string]string{"DATABASE_URL": "postgres://localhost/lockstep",
			"LOCK_TIMEOUT": tc.lockTimeout, "RETRY_BUDGET": tc.retryBudget}
		cfg, err := config.Load(func(k string) string { return env[k] }, config.NeedDatabase)
		if err != nil {
			t.Fatal(err)
		}
		s := effective(cfg).String()
		for _, w := range tc.want {
			if !strings.Contains(s, w) {
				t.Errorf("LOCK_TIMEOUT=%q RETRY_BUDGET=%q: %s lacks %s", tc.lockTimeout, tc.retryBudget, s, w)
			}
		}
		if cfg.LockTimeout == 0 && lockConfig(cfg).LockTimeout != def.LockTimeout {
			t.Errorf("unset LOCK_TIMEOUT runs with %s", lockConfig(cfg).LockTimeout)
		}
	}
}

// serve's "starting" line shows the lock settings in force, not 0s.
func TestServePrintsEffectiveLockSettings(t *testing.T) {
	t.Parallel()
	addr := closingListener(t)
	env := map[string]string{
		"DATABASE_URL":          "postgres://lockstep@" + addr + "/lockstep?sslmode=disable",
		"STRIPE_WEBHOOK_SECRET": "whsec_0123456789abcdef",
		"STRIPE_SECRET_KEY":     "sk_test_0123456789",
		"APP_API_TOKEN":         "app-token-0123456789",
		"ADMIN_TOKEN":           "admin-token-0123456789",
	}
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, []string{"serve"}, Env{Getenv: func(k string) string { return env[k] }, Stdout: &bytes.Buffer{}, Stderr: &stderr})
	if err == nil {
		t.Fatal("serve ran against a database that hangs up")
	}
	if s := stderr.String(); !strings.Contains(s, "lock_timeout=1.5s retry_budget=4s") {
		t.Fatalf("serve's log lacks the lock settings in force:\n%s", s)
	}
}

// closingListener stands in for a database that hangs up on every
// connection.
func closingListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	return ln.Addr().String()
}

// parseArgs takes flags and up to most other arguments in any order; one
// more is a usage error naming it.
func TestParseArgs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		most int
		want string // the other arguments, or the error
		on   bool   // --on after parsing
	}{
		{nil, 0, "", false},
		{[]string{"--on"}, 0, "", true},
		{[]string{"a"}, 0, `x: unexpected argument "a"`, false},
		{[]string{"--on", "a"}, 0, `x: unexpected argument "a"`, true},
		{[]string{"--", "a"}, 0, `x: unexpected argument "a"`, false},
		{[]string{"a"}, 1, "a", false},
		{[]string{"a", "--on"}, 1, "a", true},
		{[]string{"--on", "a"}, 1, "a", true},
		{[]string{"a", "b"}, 1, `x: unexpected argument "b"`, false},
		{[]string{"a", "--on", "b"}, 2, "a b", true},
		{[]string{"--", "--on"}, 1, "--on", false},
		{[]string{"--off"}, 1, "x: flag provided but not defined: -off", false},
	} {
		fs := newFlags("x", "usage: x\n", Env{Stdout: &bytes.Buffer{}})
		on := fs.Bool("on", false, "")
		rest, err := parseArgs(fs, tc.args, tc.most)
		got := strings.Join(rest, " ")
		if err != nil {
			var ue *UsageError
			if !errors.As(err, &ue) {
				t.Errorf("%q: %v is not a usage error", tc.args, err)
				continue
			}
			got = ue.Msg
		}
		if got != tc.want || *on != tc.on {
			t.Errorf("parseArgs(%q, %d) = %q, --on %v; want %q, --on %v", tc.args, tc.most, got, *on, tc.want, tc.on)
		}
	}
}
