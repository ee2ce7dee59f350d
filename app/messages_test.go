package app_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/dbtest"
)

// The messages a newcomer meets first: each says what to do, in one line.

// run runs a command with env and a deadline, returning stdout and the error.
func run(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := app.Run(ctx, args, envOf(env, &out))
	return out.String(), err
}

// wantLine checks that err is one line, exits code, and holds every word.
func wantLine(t *testing.T, args []string, err error, code int, words ...string) {
	t.Helper()
	if got := app.ExitCode(err); got != code {
		t.Errorf("%q: exit %d (%v), want %d", args, got, err, code)
		return
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("%q: more than one line:\n%s", args, msg)
	}
	for _, w := range words {
		if !strings.Contains(msg, w) {
			t.Errorf("%q: %q lacks %q", args, msg, w)
		}
	}
}

// emptyDatabase is a database on the test server with nothing in it,
// dropped when the test ends.
func emptyDatabase(t *testing.T) string {
	t.Helper()
	server := dbtest.ServerURL(t)
	name := fmt.Sprintf("lockstep_test_empty_%d", time.Now().UnixNano())
	if err := dbtest.CreateDatabase(server, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dbtest.DropDatabase(server, name); err != nil {
			t.Error(err)
		}
	})
	return dbtest.URLFor(server, name)
}

// Every command on a database never migrated says to run lockstep migrate
// up (not `relation "schema_migrations" does not exist`), and none of
// them, migrate version included, creates anything.
func TestCommandsOnNeverMigratedDatabase(t *testing.T) {
	t.Parallel()
	url := emptyDatabase(t)
	env := map[string]string{"DATABASE_URL": url, "STRIPE_SECRET_KEY": "sk_test_0123456789", "STRIPE_API_BASE": "http://127.0.0.1:1"}
	for _, args := range [][]string{
		{"locks"}, {"replay", "--failed"}, {"replay", "evt_1"}, {"sync"}, {"verify"}, {"sweep"},
		{"prune", "--older-than", "90d"},
	} {
		_, err := run(t, env, args...)
		wantLine(t, args, err, 1, "no lockstep schema yet", "run lockstep migrate up")
		if err != nil && strings.Contains(err.Error(), "relation") {
			t.Errorf("%q: %v", args, err)
		}
	}
	out, err := run(t, env, "migrate", "version")
	if err != nil || !strings.Contains(out, "no schema (run lockstep migrate up") {
		t.Errorf("migrate version: %v, %q; want no schema (run lockstep migrate up ...)", err, out)
	}
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var tables int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Fatalf("reading commands created %d tables (schema_migrations?)", tables)
	}
	// Once migrated, migrate version reads the version.
	if _, err := run(t, env, "migrate", "up"); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	if out, err := run(t, env, "migrate", "version"); err != nil || !strings.HasPrefix(out, "schema version ") {
		t.Fatalf("migrate version after up: %v, %q", err, out)
	}
}

// A database that does not answer: one line naming host:port, the cause
// once (pgx tries TLS, then plain) and what to check.
func TestCommandsOnUnreachableDatabase(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now: connection refused
	// No sslmode: pgx tries TLS, then plain text, and fails twice.
	env := map[string]string{"DATABASE_URL": "postgres://lockstep:db-secret-pw@" + addr + "/lockstep",
		"STRIPE_SECRET_KEY": "sk_test_0123456789"}
	for _, args := range [][]string{{"locks"}, {"migrate", "version"}, {"migrate", "up"}, {"verify"}, {"prune", "--older-than", "90d"}} {
		_, err := run(t, env, args...)
		wantLine(t, args, err, 1, "cannot connect to the database at "+addr, "connection refused",
			"check that PostgreSQL is running and listens on that host and port")
		if err != nil && (strings.Count(err.Error(), "connection refused") != 1 || strings.Contains(err.Error(), "db-secret-pw")) {
			t.Errorf("%q: the cause twice, or the password: %v", args, err)
		}
	}
}

// stripeRefusing answers every request with status and Stripe's error
// body, whose message quotes the key (it must never be repeated).
func stripeRefusing(t *testing.T, status int, key string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Request-Id", "req_refused")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: ` + key + `"}}`))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// A key Stripe refuses: the convergence commands name STRIPE_SECRET_KEY
// and what to do, not "stripe api unavailable ... run it again".
func TestConvergenceCommandsRefusedKey(t *testing.T) {
	t.Parallel()
	const key = "sk_test_refusedKEY0123456789"
	db := dbtest.New(t)
	for _, tc := range []struct {
		status int
		words  []string
	}{
		{http.StatusUnauthorized, []string{"Stripe rejected STRIPE_SECRET_KEY (HTTP 401", "request req_refused", "set it to a valid secret"}},
		{http.StatusForbidden, []string{"STRIPE_SECRET_KEY lacks a permission", "HTTP 403", "give the restricted key read access"}},
	} {
		env := map[string]string{"DATABASE_URL": db.URL, "STRIPE_SECRET_KEY": key, "STRIPE_API_BASE": stripeRefusing(t, tc.status, key)}
		for _, args := range [][]string{{"sync"}, {"verify"}, {"sweep"}} {
			_, err := run(t, env, args...)
			wantLine(t, args, err, 1, tc.words...)
			if err == nil {
				continue
			}
			msg := err.Error()
			if strings.Contains(msg, "run it again") || strings.Contains(msg, "unavailable") || strings.Contains(msg, "refusedKEY") {
				t.Errorf("%q: %q gives the wrong advice or quotes the key", args, msg)
			}
			if !strings.HasPrefix(msg, args[0]+" ") && !strings.HasPrefix(msg, args[0]+": ") {
				t.Errorf("%q: %q does not start with the command", args, msg)
			}
		}
	}
}

// An error billing already names ("verify: list customers: ...") is said
// under the command's name once: never "verify: verify: ...".
func TestConvergenceErrorsOnePrefix(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	env := map[string]string{"DATABASE_URL": db.URL, "STRIPE_SECRET_KEY": "sk_test_0123456789",
		"STRIPE_API_BASE": stripeRefusing(t, http.StatusBadRequest, "sk_test_0123456789")}
	for _, args := range [][]string{{"sync"}, {"verify"}, {"sweep"}} {
		_, err := run(t, env, args...)
		wantLine(t, args, err, 1, "HTTP 400")
		if err == nil {
			continue
		}
		msg := "lockstep: " + err.Error() // as main prints it
		if n := strings.Count(msg, args[0]+": ") + strings.Count(msg, args[0]+" "); n != 1 {
			t.Errorf("%q: %q names the command %d times", args, msg, n)
		}
	}
}

// Bad flags: an empty --customer (which would mean the whole account) and
// a --since in the future are usage errors (exit 2, one line), before the
// database is touched.
func TestConvergenceBadFlags(t *testing.T) {
	t.Parallel()
	db, accepted := recordingListener(t)
	env := map[string]string{"DATABASE_URL": "postgres://lockstep@" + db + "/lockstep?sslmode=disable", "STRIPE_SECRET_KEY": "sk_test_0123456789"}
	future := time.Now().Add(48 * time.Hour)
	for _, tc := range []struct {
		args  []string
		words []string
	}{
		{[]string{"sync", "--customer", ""}, []string{"sync: --customer is empty", "leave the flag out for the whole account"}},
		{[]string{"sync", "--customer=", "--dry-run"}, []string{"sync: --customer is empty"}},
		{[]string{"verify", "--customer", " ", "--repair"}, []string{"verify: --customer is empty"}},
		{[]string{"verify", "--customer="}, []string{"verify: --customer is empty"}},
		{[]string{"sync", "--since", future.Format(time.DateOnly)}, []string{"is in the future", "give a past time"}},
		{[]string{"sync", "--since", future.UTC().Format(time.RFC3339)}, []string{"is in the future"}},
		{[]string{"sweep", "--since", future.Format(time.DateOnly)}, []string{"sweep: --since wants an age"}},
		{[]string{"sweep", "--since", "-6h"}, []string{"sweep: --since wants an age"}},
	} {
		_, err := run(t, env, tc.args...)
		wantLine(t, tc.args, err, 2, append(tc.words, "(lockstep "+tc.args[0]+" --help shows the usage)")...)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("bad flags connected to the database %d times", n)
	}
}
