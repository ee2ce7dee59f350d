package app_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/lockmgr"
)

func envOf(m map[string]string, stdout io.Writer) app.Env {
	return app.Env{Getenv: func(k string) string { return m[k] }, Stdout: stdout, Stderr: io.Discard}
}

// recordingListener stands in for PostgreSQL and counts who connects.
func recordingListener(t *testing.T) (addr string, accepted *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	accepted = &atomic.Int32{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = c.Close()
		}
	}()
	return ln.Addr().String(), accepted
}

// serve with a bad LISTEN_ADDR stops with one line naming it, before it
// migrates, opens a pool or listens.
func TestServeBadListenAddr(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"8080", "host:99999", "127.0.0.1"} {
		t.Run(addr, func(t *testing.T) {
			t.Parallel()
			db, accepted := recordingListener(t)
			env := map[string]string{
				"DATABASE_URL":          "postgres://lockstep@" + db + "/lockstep?sslmode=disable&connect_timeout=2",
				"LISTEN_ADDR":           addr,
				"STRIPE_WEBHOOK_SECRET": "whsec_0123456789abcdef",
				"STRIPE_SECRET_KEY":     "sk_test_0123456789",
				"APP_API_TOKEN":         "app-token-0123456789",
				"ADMIN_TOKEN":           "admin-token-0123456789",
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := app.Run(ctx, []string{"serve"}, envOf(env, io.Discard))
			if err == nil {
				t.Fatal("serve accepted LISTEN_ADDR " + addr)
			}
			if msg := err.Error(); !strings.Contains(msg, "LISTEN_ADDR") || strings.Contains(msg, "\n") {
				t.Fatalf("error is not one line naming LISTEN_ADDR: %q", msg)
			}
			if n := accepted.Load(); n != 0 {
				t.Fatalf("serve connected to the database %d times before rejecting its configuration", n)
			}
		})
	}
}

// Commands reject bad arguments before touching the database.
func TestOpsUsageErrors(t *testing.T) {
	t.Parallel()
	db, accepted := recordingListener(t)
	env := map[string]string{"DATABASE_URL": "postgres://lockstep@" + db + "/lockstep?sslmode=disable"}
	for _, args := range [][]string{
		{"locks", "--yaml"},
		{"replay"},
		{"replay", "not-an-event"},
		{"replay", "evt_1", "evt_2"},
		{"replay", "--failed", "evt_1"},
		{"replay", "evt_1", "--failed"},
		{"replay", "--all"},
		{"replay", "--failed=maybe"},
		{"locks", "now"},
		{"locks", "--json", "now"},
		{"nonsense"},
	} {
		err := app.Run(context.Background(), args, envOf(env, io.Discard))
		var ue *app.UsageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: got %v, want a usage error", args, err)
		} else if strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: the error is more than one line: %q", args, err)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("usage errors connected to the database %d times", n)
	}
	// Without DATABASE_URL, locks names the variable.
	err := app.Run(context.Background(), []string{"locks"}, envOf(map[string]string{}, io.Discard))
	if err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Fatalf("locks without DATABASE_URL: %v", err)
	}
}

func i64(v int64) *int64      { return &v }
func f64(v float64) *float64  { return &v }
func lines(s string) []string { return strings.Split(strings.TrimRight(s, "\n"), "\n") }

// The locks table: one row per lock, a header, a footer, every cell one
// line, and the customer named (or the raw key when no customer matches).
func TestOpsPrintLocks(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	app.PrintLocks(&buf, nil)
	if got := buf.String(); got != "no advisory locks held or awaited\n" {
		t.Fatalf("empty table: %q", got)
	}

	buf.Reset()
	locks := []lockmgr.LockInfo{
		{Kind: "customer", CustomerID: "cus_NEG", Key: i64(-988674924), PID: 100, Granted: true,
			XactSeconds: f64(2.5), BlockedBy: []int32{}, ApplicationName: "lockstep webhook evt_1",
			State: "idle in transaction", Query: "INSERT INTO stripe_events\n\t(event_id) VALUES ($1)"},
		{Kind: "customer", CustomerID: "cus_NEG", Key: i64(-988674924), PID: 101, Granted: false,
			WaitSeconds: f64(1.25), XactSeconds: f64(1.3), BlockedBy: []int32{100, 102},
			ApplicationName: "lockstep checkout cs_test_1", State: "active",
			Query: "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true), pg_advisory_xact_lock(hashtext($4))"},
		{Kind: "user", UserID: "user-7", Key: i64(12), PID: 100, Granted: true, XactSeconds: f64(2.5)},
		{Kind: "customer", Key: i64(42), PID: 103, Granted: true, ApplicationName: "other-app\tbatch"},
		{Kind: "other", PID: 104, Granted: true},
	}
	app.PrintLocks(&buf, locks)
	got := lines(buf.String())
	if len(got) != len(locks)+2 {
		t.Fatalf("want header, %d rows and a footer, got %d lines:\n%s", len(locks), len(got), buf.String())
	}
	for i, want := range [][]string{
		{"CUSTOMER", "PID", "LOCK", "FOR", "BLOCKED BY", "APPLICATION", "STATE", "QUERY"},
		{"cus_NEG", "100", "granted", "2.5s", "lockstep webhook evt_1", "idle in transaction", "INSERT INTO stripe_events (event_id) VALUES ($1)"},
		{"cus_NEG", "101", "waiting", "1.25s", "100,102", "lockstep checkout cs_test_1", "active", "SELECT set_config('lock_timeout', $1, true), set_config('..."},
		{"user:user-7", "100", "granted"},
		{"(key 42)", "103", "granted", "other-app batch"},
		{"(other)", "104"},
		{"5 locks: 4 granted, 1 waiting"},
	} {
		for _, w := range want {
			if !strings.Contains(got[i], w) {
				t.Errorf("line %d lacks %q:\n%s", i, w, got[i])
			}
		}
	}
	// Columns line up: PID starts at the same offset on every row.
	col := strings.Index(got[0], "PID")
	for _, l := range got[1 : len(got)-1] {
		if len(l) < col || l[col-2:col] != "  " || l[col] == ' ' {
			t.Errorf("PID column misaligned at %d:\n%s\n%s", col, got[0], l)
		}
	}
}
