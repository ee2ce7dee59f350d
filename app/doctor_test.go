package app_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

const doctorKey = "sk_test_doctor_secret_4242"

// fakeStripeStatus answers every request with status and Stripe's error
// body for it, after checking the key came as a Bearer token.
func fakeStripeStatus(t *testing.T, status int, code string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/customers/cus_doctor_probe" || r.Header.Get("Authorization") != "Bearer "+doctorKey {
			t.Errorf("doctor asked %s with Authorization %q", r.URL.Path, r.Header.Get("Authorization"))
		}
		w.Header().Set("Request-Id", "req_doctor")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		// Stripe's messages can quote the key; doctor must not repeat them.
		_, _ = w.Write([]byte(`{"error":{"type":"invalid_request_error","code":"` + code + `","message":"Invalid API Key provided: ` + doctorKey + `"}}`))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func doctorEnv(dbURL, stripeURL string) map[string]string {
	return map[string]string{
		"DATABASE_URL":          dbURL,
		"STRIPE_WEBHOOK_SECRET": "whsec_0123456789abcdef",
		"STRIPE_SECRET_KEY":     doctorKey,
		"STRIPE_API_BASE":       stripeURL,
		"APP_API_TOKEN":         "app-token-0123456789",
		"ADMIN_TOKEN":           "admin-token-0123456789",
	}
}

// runDoctor runs lockstep doctor and returns its lines by check name.
func runDoctor(t *testing.T, env map[string]string) (map[string]string, string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := app.Run(ctx, []string{"doctor"}, envOf(env, &out))
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			t.Fatalf("doctor line %q is not STATUS NAME DETAIL", l)
		}
		if _, dup := lines[f[1]]; dup {
			t.Fatalf("check %s printed twice:\n%s", f[1], out.String())
		}
		lines[f[1]] = l
	}
	if strings.Contains(out.String(), doctorKey) || (err != nil && strings.Contains(err.Error(), doctorKey)) {
		t.Fatalf("doctor printed the Stripe key:\n%s", out.String())
	}
	return lines, out.String(), err
}

func wantStatus(t *testing.T, lines map[string]string, name, status, contains string) {
	t.Helper()
	l, ok := lines[name]
	if !ok {
		t.Errorf("no %s check", name)
		return
	}
	if !strings.HasPrefix(l, status+" ") || !strings.Contains(l, contains) {
		t.Errorf("%s check: %q, want %s containing %q", name, l, status, contains)
	}
}

// Every check passes on a migrated database with a key Stripe accepts
// (the fake Stripe the other tests use: it answers the probe 404
// resource_missing, as Stripe does).
func TestDoctorHealthy(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	stripe := stripefake.New(t)
	lines, out, err := runDoctor(t, doctorEnv(db.URL, stripe.URL))
	if err != nil {
		t.Fatalf("doctor: %v\n%s", err, out)
	}
	for _, name := range []string{"config", "database", "schema", "locks", "pgbouncer", "ledger", "stripe"} {
		wantStatus(t, lines, name, "ok", "")
	}
	wantStatus(t, lines, "stripe", "ok", "sk_test_**** (test mode)")
	wantStatus(t, lines, "stripe", "ok", "accepted (a read of customer cus_doctor_probe: not found, as expected)")
	wantStatus(t, lines, "schema", "ok", "current, not dirty")
	// Unset, the lock settings are lockmgr's defaults, printed as such.
	wantStatus(t, lines, "config", "ok", "lock_timeout 1.5s, retry_budget 4s")
	t.Logf("\n%s", out)
}

// A rejected key, a dirty schema and failed events: one line each, exit 1.
func TestDoctorFailures(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `UPDATE schema_migrations SET dirty = true`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO stripe_events (event_id, type, stripe_created, status, payload)
VALUES ('evt_doctor_failed', 'invoice.paid', now(), 'failed', '{}')`); err != nil {
		t.Fatal(err)
	}
	stripe := fakeStripeStatus(t, http.StatusUnauthorized, "")
	lines, out, err := runDoctor(t, doctorEnv(db.URL, stripe.URL))
	if code := app.ExitCode(err); code != 1 {
		t.Fatalf("exit %d (%v), want 1\n%s", code, err, out)
	}
	wantStatus(t, lines, "schema", "fail", "dirty")
	wantStatus(t, lines, "stripe", "fail", "rejected: HTTP 401 invalid_request_error, request req_doctor; check STRIPE_SECRET_KEY")
	wantStatus(t, lines, "ledger", "warn", "1 failed events wait for a replay")
	wantStatus(t, lines, "database", "ok", "")
}

// Each answer Stripe may give the probe is told apart, through the
// service's own Stripe client: a missing permission, a rate limit, an
// answer that is not Stripe's, never with Stripe's message (which quotes
// the key).
func TestDoctorStripeAnswers(t *testing.T) {
	t.Parallel()
	addr, _ := recordingListener(t) // the database checks fail fast
	notStripe := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("<html>a web server, not Stripe's API</html>"))
	}))
	t.Cleanup(notStripe.Close)
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // nothing listens there now
	for _, tc := range []struct {
		name, url, status, contains string
	}{
		{"forbidden", fakeStripeStatus(t, http.StatusForbidden, "").URL, "fail", "may not read customers: HTTP 403 invalid_request_error, request req_doctor; a restricted key needs read access"},
		{"rate limited", fakeStripeStatus(t, http.StatusTooManyRequests, "rate_limit").URL, "warn", "rate limited (HTTP 429 invalid_request_error rate_limit, request req_doctor); run doctor again"},
		{"bad request", fakeStripeStatus(t, http.StatusBadRequest, "parameter_unknown").URL, "fail", "unexpected answer HTTP 400 invalid_request_error parameter_unknown, request req_doctor (is STRIPE_API_BASE Stripe's API?)"},
		{"not stripe", notStripe.URL, "fail", "unreadable answer (is STRIPE_API_BASE Stripe's API, and reachable from here?)"},
		{"unreachable", gone.URL, "fail", "connection refused (is STRIPE_API_BASE Stripe's API, and reachable from here?)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lines, out, err := runDoctor(t, doctorEnv("postgres://lockstep@"+addr+"/lockstep?sslmode=disable", tc.url))
			if code := app.ExitCode(err); code != 1 {
				t.Fatalf("exit %d (%v), want 1\n%s", code, err, out)
			}
			wantStatus(t, lines, "stripe", tc.status, tc.contains)
			if strings.Contains(out, "Invalid API Key provided") {
				t.Errorf("doctor repeated Stripe's message:\n%s", out)
			}
			t.Log(lines["stripe"])
		})
	}
}

// A database that does not answer fails the checks that need it; the
// configuration and Stripe are still checked.
func TestDoctorDatabaseDown(t *testing.T) {
	t.Parallel()
	addr, _ := recordingListener(t)
	stripe := fakeStripeStatus(t, http.StatusNotFound, "resource_missing")
	lines, out, err := runDoctor(t, doctorEnv("postgres://lockstep@"+addr+"/lockstep?sslmode=disable", stripe.URL))
	if code := app.ExitCode(err); code != 1 {
		t.Fatalf("exit %d (%v), want 1\n%s", code, err, out)
	}
	wantStatus(t, lines, "config", "ok", "")
	wantStatus(t, lines, "database", "fail", "cannot connect")
	wantStatus(t, lines, "schema", "fail", "not checked")
	wantStatus(t, lines, "stripe", "ok", "accepted")
}

// A role without pg_read_all_stats gets a warning naming the grant; a
// missing variable fails config, with the others still checked.
func TestDoctorUnprivilegedRole(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "lockstep_doctor_" + hex.EncodeToString(b[:])
	ident := pgx.Identifier{role}.Sanitize()
	for _, q := range []string{
		`CREATE ROLE ` + ident + ` LOGIN`,
		`GRANT SELECT ON ALL TABLES IN SCHEMA public TO ` + ident,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		for _, q := range []string{`DROP OWNED BY ` + ident, `DROP ROLE ` + ident} {
			if _, err := db.Pool.Exec(context.Background(), q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	env := doctorEnv(u.String(), fakeStripeStatus(t, http.StatusNotFound, "resource_missing").URL)
	delete(env, "ADMIN_TOKEN")
	lines, out, err := runDoctor(t, env)
	if code := app.ExitCode(err); code != 1 {
		t.Fatalf("exit %d (%v), want 1\n%s", code, err, out)
	}
	wantStatus(t, lines, "config", "fail", "ADMIN_TOKEN is required")
	wantStatus(t, lines, "locks", "warn", "GRANT pg_read_all_stats TO "+ident)
	wantStatus(t, lines, "schema", "ok", "")
	wantStatus(t, lines, "stripe", "ok", "")
}

// Bad input is a usage error (exit 2) before anything is checked.
func TestDoctorUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"doctor", "--json"}, {"doctor", "now"}} {
		var out bytes.Buffer
		err := app.Run(context.Background(), args, envOf(map[string]string{}, &out))
		if code := app.ExitCode(err); code != 2 || strings.Contains(err.Error(), "\n") || out.Len() != 0 {
			t.Errorf("%v: exit %d, error %v, output %q; want exit 2 with one line and nothing checked", args, code, err, out.String())
		}
	}
}
