package app

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
)

// Every command in the table, -h and --help (and `help NAME`): its usage on
// stdout, exit 0, nothing on stderr, configured or not, and no connection
// to the database. A command added to the table is covered here as it is.
func TestEveryCommandHelp(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	var accepted atomic.Int32
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
	configured := map[string]string{
		"DATABASE_URL":          "postgres://lockstep@" + ln.Addr().String() + "/lockstep?sslmode=disable",
		"STRIPE_WEBHOOK_SECRET": "whsec_0123456789abcdef",
		"STRIPE_SECRET_KEY":     "sk_test_0123456789",
		"APP_API_TOKEN":         "app-token-0123456789",
		"ADMIN_TOKEN":           "admin-token-0123456789",
	}
	if len(commands) < 10 {
		t.Fatalf("the command table has %d commands", len(commands))
	}
	for name, cmd := range commands {
		if !strings.HasPrefix(cmd.usage, "usage: lockstep "+name) || !strings.HasSuffix(cmd.usage, "\n") {
			t.Errorf("%s: usage does not start with %q and end with a newline: %q", name, "usage: lockstep "+name, cmd.usage)
		}
		if !strings.Contains(usage, "\n  "+name) {
			t.Errorf("lockstep help does not list %s", name)
		}
		for _, env := range []map[string]string{configured, {}} {
			for _, args := range [][]string{
				{name, "-h"}, {name, "--help"}, {name, "-help"},
				{name, "--bogus", "--help"}, // help wins over a bad flag
				{"help", name},
			} {
				var stdout, stderr bytes.Buffer
				err := Run(context.Background(), args, Env{Getenv: func(k string) string { return env[k] }, Stdout: &stdout, Stderr: &stderr})
				if code := ExitCode(err); code != 0 {
					t.Errorf("%q (%d variables set): exit %d: %v", args, len(env), code, err)
				}
				if stdout.String() != cmd.usage {
					t.Errorf("%q: stdout %q, want the usage", args, stdout.String())
				}
				if stderr.Len() != 0 {
					t.Errorf("%q: stderr %q", args, stderr.String())
				}
			}
		}
	}
	for _, args := range [][]string{{"-h"}, {"--help"}, {"help"}} {
		var stdout bytes.Buffer
		err := Run(context.Background(), args, Env{Getenv: func(string) string { return "" }, Stdout: &stdout, Stderr: &stdout})
		if err != nil || stdout.String() != usage {
			t.Errorf("%q: %v, %q; want the command list", args, err, stdout.String())
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("asking for help connected to the database %d times", n)
	}
}
