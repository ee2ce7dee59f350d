package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/config"
)

// good is a complete, valid production environment.
func good() map[string]string {
	return map[string]string{
		"DATABASE_URL":          "postgres://lockstep:db-password-123@db.internal:5432/lockstep?sslmode=require",
		"LISTEN_ADDR":           "127.0.0.1:8080",
		"STRIPE_WEBHOOK_SECRET": "whsec_primarySECRETbody0123, whsec_oldSECRETbody456789",
		"STRIPE_SECRET_KEY":     "sk_live_KEYbody0123456789abcdef",
		"APP_API_TOKEN":         "app-token-body-0123456789",
		"ADMIN_TOKEN":           "admin-token-body-0123456789",
	}
}

func getenv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadGood(t *testing.T) {
	t.Parallel()
	c, err := config.Load(getenv(good()), config.NeedDatabase|config.NeedServer)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(c.WebhookSecrets) != 2 || c.WebhookSecrets[1] != "whsec_oldSECRETbody456789" {
		t.Fatalf("secrets = %q, want two, trimmed", c.WebhookSecrets)
	}
	// Unset lock settings stay 0: lockmgr's default, applied where the
	// lock manager is built (app's lockConfig), so config needs no lockmgr.
	if c.LockTimeout != 0 || c.RetryBudget != 0 || c.ListenAddr != "127.0.0.1:8080" {
		t.Fatalf("defaults: lock_timeout %s retry_budget %s listen %s", c.LockTimeout, c.RetryBudget, c.ListenAddr)
	}
	env := good()
	env["LOCK_TIMEOUT"], env["RETRY_BUDGET"] = "250ms", "2s"
	if c, err = config.Load(getenv(env), config.NeedDatabase); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.LockTimeout != 250*time.Millisecond || c.RetryBudget != 2*time.Second {
		t.Fatalf("set: lock_timeout %s retry_budget %s", c.LockTimeout, c.RetryBudget)
	}
}

// The convergence and retention settings default to what the README says,
// and read days as well as Go's units.
func TestLoadConvergenceSettings(t *testing.T) {
	t.Parallel()
	c, err := config.Load(getenv(good()), config.NeedDatabase|config.NeedStripe)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.SweepInterval != 5*time.Minute || c.SweepLookback != 72*time.Hour || c.StripeAPIRPS != 20 || c.LedgerRetention != 0 {
		t.Fatalf("defaults: sweep %s lookback %s rps %d retention %s", c.SweepInterval, c.SweepLookback, c.StripeAPIRPS, c.LedgerRetention)
	}
	env := good()
	env["STRIPE_SWEEP_INTERVAL"] = "0"
	env["STRIPE_SWEEP_LOOKBACK"] = "30d"
	env["STRIPE_API_RPS"] = "90"
	env["LEDGER_RETENTION"] = "90d"
	if c, err = config.Load(getenv(env), config.NeedDatabase); err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.SweepInterval != 0 || c.SweepLookback != 30*24*time.Hour || c.StripeAPIRPS != 90 || c.LedgerRetention != 90*24*time.Hour {
		t.Fatalf("set: sweep %s lookback %s rps %d retention %s", c.SweepInterval, c.SweepLookback, c.StripeAPIRPS, c.LedgerRetention)
	}
}

// ACCESS_PAST_DUE_GRACE defaults to none and reads Go's units or days.
func TestLoadPastDueGrace(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]time.Duration{"": 0, "0": 0, "72h": 72 * time.Hour, "3d": 72 * time.Hour, "90m": 90 * time.Minute} {
		env := good()
		env["ACCESS_PAST_DUE_GRACE"] = v
		c, err := config.Load(getenv(env), config.NeedDatabase)
		if err != nil {
			t.Fatalf("ACCESS_PAST_DUE_GRACE=%q: %v", v, err)
		}
		if c.AccessPastDueGrace != want {
			t.Fatalf("ACCESS_PAST_DUE_GRACE=%q: got %s, want %s", v, c.AccessPastDueGrace, want)
		}
	}
}

// Each misconfiguration stops startup with one line that names the variable.
func TestLoadMisconfiguration(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		set   map[string]string // "" deletes the variable
		needs config.Needs
		want  string // the variable the error must name
	}{
		{"database url missing", map[string]string{"DATABASE_URL": ""}, config.NeedDatabase, "DATABASE_URL"},
		{"database url mysql", map[string]string{"DATABASE_URL": "mysql://u:p@localhost/db"}, config.NeedDatabase, "DATABASE_URL"},
		{"database url not a url", map[string]string{"DATABASE_URL": "host=db user=x"}, config.NeedDatabase, "DATABASE_URL"},
		{"migrate url mysql", map[string]string{"MIGRATE_DATABASE_URL": "mysql://localhost/db"}, config.NeedDatabase, "MIGRATE_DATABASE_URL"},
		{"webhook secret missing", map[string]string{"STRIPE_WEBHOOK_SECRET": ""}, config.NeedServer, "STRIPE_WEBHOOK_SECRET"},
		{"webhook secret without whsec_", map[string]string{"STRIPE_WEBHOOK_SECRET": "secret_0123456789abcdef"}, config.NeedServer, "STRIPE_WEBHOOK_SECRET"},
		{"second webhook secret without whsec_", map[string]string{"STRIPE_WEBHOOK_SECRET": "whsec_good0123456789,oops0123456789"}, config.NeedServer, "STRIPE_WEBHOOK_SECRET"},
		{"listen addr port only", map[string]string{"LISTEN_ADDR": "8080"}, config.NeedServer, "LISTEN_ADDR"},
		{"listen addr port too big", map[string]string{"LISTEN_ADDR": "host:99999"}, config.NeedServer, "LISTEN_ADDR"},
		{"listen addr named port", map[string]string{"LISTEN_ADDR": "localhost:http-alt"}, config.NeedServer, "LISTEN_ADDR"},
		{"lock timeout not a duration", map[string]string{"LOCK_TIMEOUT": "fast"}, config.NeedDatabase, "LOCK_TIMEOUT"},
		{"lock timeout without unit", map[string]string{"LOCK_TIMEOUT": "1500"}, config.NeedDatabase, "LOCK_TIMEOUT"},
		{"lock timeout negative", map[string]string{"LOCK_TIMEOUT": "-1s"}, config.NeedDatabase, "LOCK_TIMEOUT"},
		{"retry budget huge", map[string]string{"RETRY_BUDGET": "1h"}, config.NeedDatabase, "RETRY_BUDGET"},
		{"stripe key missing", map[string]string{"STRIPE_SECRET_KEY": ""}, config.NeedServer, "STRIPE_SECRET_KEY"},
		{"stripe key publishable", map[string]string{"STRIPE_SECRET_KEY": "pk_live_0123456789"}, config.NeedServer, "STRIPE_SECRET_KEY"},
		{"stripe api base not http", map[string]string{"STRIPE_API_BASE": "ftp://stripe"}, config.NeedServer, "STRIPE_API_BASE"},
		{"app token missing", map[string]string{"APP_API_TOKEN": ""}, config.NeedServer, "APP_API_TOKEN"},
		{"admin token short", map[string]string{"ADMIN_TOKEN": "short"}, config.NeedServer, "ADMIN_TOKEN"},
		{"db max conns", map[string]string{"DB_MAX_CONNS": "lots"}, config.NeedDatabase, "DB_MAX_CONNS"},
		{"environment", map[string]string{"LOCKSTEP_ENV": "staging"}, config.NeedDatabase, "LOCKSTEP_ENV"},
		{"stripe key missing for sync", map[string]string{"STRIPE_SECRET_KEY": ""}, config.NeedStripe, "STRIPE_SECRET_KEY"},
		{"stripe api base for sync", map[string]string{"STRIPE_API_BASE": "stripe.com"}, config.NeedStripe, "STRIPE_API_BASE"},
		{"sweep interval not a duration", map[string]string{"STRIPE_SWEEP_INTERVAL": "often"}, config.NeedDatabase, "STRIPE_SWEEP_INTERVAL"},
		{"sweep interval negative", map[string]string{"STRIPE_SWEEP_INTERVAL": "-5m"}, config.NeedDatabase, "STRIPE_SWEEP_INTERVAL"},
		{"sweep lookback past 30 days", map[string]string{"STRIPE_SWEEP_LOOKBACK": "31d"}, config.NeedDatabase, "STRIPE_SWEEP_LOOKBACK"},
		{"sweep lookback zero", map[string]string{"STRIPE_SWEEP_LOOKBACK": "0"}, config.NeedDatabase, "STRIPE_SWEEP_LOOKBACK"},
		{"api rps not a number", map[string]string{"STRIPE_API_RPS": "fast"}, config.NeedDatabase, "STRIPE_API_RPS"},
		{"api rps one", map[string]string{"STRIPE_API_RPS": "1"}, config.NeedDatabase, "STRIPE_API_RPS"},
		{"retention days not a number", map[string]string{"LEDGER_RETENTION": "ninety days"}, config.NeedDatabase, "LEDGER_RETENTION"},
		{"retention under a day", map[string]string{"LEDGER_RETENTION": "1h"}, config.NeedDatabase, "LEDGER_RETENTION"},
		{"past-due grace not a duration", map[string]string{"ACCESS_PAST_DUE_GRACE": "three days"}, config.NeedDatabase, "ACCESS_PAST_DUE_GRACE"},
		{"past-due grace negative", map[string]string{"ACCESS_PAST_DUE_GRACE": "-72h"}, config.NeedDatabase, "ACCESS_PAST_DUE_GRACE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := good()
			for k, v := range tt.set {
				if v == "" {
					delete(env, k)
				} else {
					env[k] = v
				}
			}
			c, err := config.Load(getenv(env), tt.needs)
			if err == nil {
				t.Fatalf("Load accepted %v: %s", tt.set, c)
			}
			msg := err.Error()
			lines := strings.Split(msg, "\n")
			if len(lines) != 1 {
				t.Fatalf("want one line for one problem, got %d:\n%s", len(lines), msg)
			}
			if !strings.Contains(msg, tt.want) {
				t.Fatalf("error %q does not name %s", msg, tt.want)
			}
			var ce *config.Error
			if !errors.As(err, &ce) || ce.Var != tt.want {
				t.Fatalf("error %v is not a *config.Error for %s", err, tt.want)
			}
			for _, secret := range []string{"primarySECRETbody", "KEYbody", "token-body", "db-password"} {
				if strings.Contains(msg, secret) {
					t.Fatalf("error %q quotes a secret (%s)", msg, secret)
				}
			}
		})
	}
}

// Several problems give one line each, every one naming its variable.
func TestLoadSeveralProblems(t *testing.T) {
	t.Parallel()
	env := good()
	env["DATABASE_URL"] = "mysql://x"
	env["STRIPE_WEBHOOK_SECRET"] = "nope0123456789"
	env["LISTEN_ADDR"] = "8080"
	env["LOCK_TIMEOUT"] = "soon"
	_, err := config.Load(getenv(env), config.NeedDatabase|config.NeedServer)
	if err == nil {
		t.Fatal("Load accepted four problems")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{"DATABASE_URL", "STRIPE_WEBHOOK_SECRET", "LISTEN_ADDR", "LOCK_TIMEOUT"}
	if len(lines) != len(want) {
		t.Fatalf("want %d lines, got %d:\n%s", len(want), len(lines), err)
	}
	for _, v := range want {
		n := 0
		for _, l := range lines {
			if strings.Contains(l, " "+v+" ") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s is named on %d lines, want 1:\n%s", v, n, err)
		}
	}
}

// The server's variables are not required by commands that only use the
// database (migrate, locks, replay).
func TestLoadDatabaseOnly(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgresql://localhost/lockstep", "LISTEN_ADDR": "8080"}
	if _, err := config.Load(getenv(env), config.NeedDatabase); err != nil {
		t.Fatalf("Load(NeedDatabase): %v", err)
	}
}

func TestDevelopmentDefaults(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DATABASE_URL": "postgres://localhost/lockstep_dev", "LOCKSTEP_ENV": "development"}
	c, err := config.Load(getenv(env), config.NeedDatabase|config.NeedServer)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.WebhookSecrets[0] != config.DevWebhookSecret || c.AdminToken != config.DevAdminToken {
		t.Fatalf("development values not filled: %+v", c)
	}
	want := []string{"STRIPE_WEBHOOK_SECRET", "APP_API_TOKEN", "ADMIN_TOKEN", "STRIPE_SECRET_KEY"}
	if strings.Join(c.DevDefaults, ",") != strings.Join(want, ",") {
		t.Fatalf("DevDefaults = %q, want %q", c.DevDefaults, want)
	}
}

// String, which serve logs at startup, masks every secret.
func TestStringMasksSecrets(t *testing.T) {
	t.Parallel()
	env := good()
	env["LOCK_TIMEOUT"] = "1500ms"
	c, err := config.Load(getenv(env), config.NeedDatabase|config.NeedServer)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	s := c.String()
	for _, secret := range []string{"primarySECRETbody0123", "oldSECRETbody", "KEYbody0123456789", "app-token-body", "admin-token-body", "db-password-123"} {
		if strings.Contains(s, secret) {
			t.Errorf("String() shows %q: %s", secret, s)
		}
	}
	// What is left says what is configured, without the values.
	for _, want := range []string{"whsec_****,whsec_****", "stripe_key=sk_live_****", "app_token=****", "admin_token=****",
		"database=postgres://lockstep:", "@db.internal:5432/lockstep", "listen=127.0.0.1:8080", "lock_timeout=1.5s"} {
		if !strings.Contains(s, want) {
			t.Errorf("String() lacks %q: %s", want, s)
		}
	}
}

// MaskSecrets masks every kind of secret Load accepts, wherever it appears
// in a text, and keeps the kind.
func TestMaskSecrets(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"no secret here":              "no secret here",
		"task_list sk_ alone":         "task_list sk_ alone",
		"key=sk_test_abc,x":           "key=sk_test_****,x",
		"whsec_a whsec_b":             "whsec_**** whsec_****",
		"rk_live_abcdef":              "rk_live_****",
		"a bare key sk_abc123":        "a bare key sk_****",
		"masked already sk_live_****": "masked already sk_live_****",
	} {
		if got := config.MaskSecrets(in); got != want {
			t.Errorf("MaskSecrets(%q) = %q, want %q", in, got, want)
		}
	}
	if got := config.RedactURL("postgres://u:secretpw@h/db"); strings.Contains(got, "secretpw") {
		t.Errorf("RedactURL kept the password: %s", got)
	}
}
