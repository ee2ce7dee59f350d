// Package config reads lockstep's configuration from the environment into
// one struct, checks it, and prints it with secrets masked.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is lockstep's whole configuration.
type Config struct {
	DatabaseURL        string
	MigrateDatabaseURL string // direct connection for migrations; DatabaseURL when empty
	ListenAddr         string
	WebhookSecrets     []string
	StripeSecretKey    string
	StripeAPIBase      string
	AppAPIToken        string
	AdminToken         string
	MetricsToken       string // optional: when set, /metrics requires it as a bearer token
	Development        bool
	LockTimeout        time.Duration // 0 (unset): lockmgr's default, applied where the lock manager is built
	RetryBudget        time.Duration // 0 (unset): lockmgr's default, likewise
	MaxConns           int32
	ShutdownTimeout    time.Duration
	StripeDeadline     time.Duration // Stripe time per HTTP request; 0: app.StripeDeadline (tests shorten it; no variable)

	// SweepInterval is how often serve sweeps Stripe's Events API for
	// missed events (0: never); SweepLookback is how far back the first
	// sweep looks.
	SweepInterval time.Duration
	SweepLookback time.Duration
	// StripeAPIRPS is the client-side budget of Stripe API calls per
	// second, shared by live calls and bulk work (sync, verify, sweep).
	StripeAPIRPS int
	// LedgerRetention is the age past which serve prunes processed and
	// ignored events daily (0: keep them forever).
	LedgerRetention time.Duration
	// AccessPastDueGrace is how long a past_due subscription keeps access,
	// from the start of its unpaid period (0: none).
	AccessPastDueGrace time.Duration

	// DevDefaults names the variables that were unset and filled with
	// development values (only when Development).
	DevDefaults []string
}

// Development values, used only under LOCKSTEP_ENV=development and printed,
// so a newcomer can sign a test event straight away. They are fixed so that
// `stripe listen` and curl examples in the README keep working across runs.
const (
	DevWebhookSecret = "whsec_lockstep_development_only"
	DevSecretKey     = "sk_test_lockstep_development_only"
	DevAppAPIToken   = "dev-app-token"
	DevAdminToken    = "dev-admin-token"
)

// Error is a configuration problem, naming the variable.
type Error struct {
	Var    string
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("config: %s %s", e.Var, e.Reason) }

// Needs says which parts of the configuration a command uses.
type Needs int

const (
	NeedDatabase Needs = 1 << iota
	NeedStripe         // the Stripe API key and base URL
	NeedServer         // listen address, secrets, tokens; implies NeedStripe
)

// Load reads the environment through getenv.
func Load(getenv func(string) string, needs Needs) (*Config, error) {
	c := &Config{
		DatabaseURL:        strings.TrimSpace(getenv("DATABASE_URL")),
		MigrateDatabaseURL: strings.TrimSpace(getenv("MIGRATE_DATABASE_URL")),
		ListenAddr:         or(getenv("LISTEN_ADDR"), "127.0.0.1:8080"),
		StripeSecretKey:    strings.TrimSpace(getenv("STRIPE_SECRET_KEY")),
		StripeAPIBase:      or(getenv("STRIPE_API_BASE"), "https://api.stripe.com"),
		AppAPIToken:        strings.TrimSpace(getenv("APP_API_TOKEN")),
		AdminToken:         strings.TrimSpace(getenv("ADMIN_TOKEN")),
		MetricsToken:       strings.TrimSpace(getenv("METRICS_TOKEN")),
		Development:        getenv("LOCKSTEP_ENV") == "development",
	}
	var errs []error
	add := func(v, reason string) { errs = append(errs, &Error{Var: v, Reason: reason}) }

	switch env := getenv("LOCKSTEP_ENV"); env {
	case "", "production", "development":
	default:
		add("LOCKSTEP_ENV", fmt.Sprintf("must be production or development, got %q", env))
	}
	var err error
	if c.LockTimeout, err = duration(getenv, "LOCK_TIMEOUT", 0); err != nil {
		errs = append(errs, err)
	}
	if c.RetryBudget, err = duration(getenv, "RETRY_BUDGET", 0); err != nil {
		errs = append(errs, err)
	}
	if c.ShutdownTimeout, err = duration(getenv, "SHUTDOWN_TIMEOUT", 15*time.Second); err != nil {
		errs = append(errs, err)
	}
	if c.SweepInterval, err = age(getenv, "STRIPE_SWEEP_INTERVAL", 5*time.Minute, true); err != nil {
		errs = append(errs, err)
	}
	if c.SweepLookback, err = age(getenv, "STRIPE_SWEEP_LOOKBACK", 72*time.Hour, false); err != nil {
		errs = append(errs, err)
	} else if c.SweepLookback > 30*24*time.Hour {
		add("STRIPE_SWEEP_LOOKBACK", "must be at most 30d (Stripe keeps 30 days of events)")
	}
	if c.LedgerRetention, err = age(getenv, "LEDGER_RETENTION", 0, true); err != nil {
		errs = append(errs, err)
	} else if c.LedgerRetention > 0 && c.LedgerRetention < 24*time.Hour {
		add("LEDGER_RETENTION", "must be at least 1d (or 0 to keep every event)")
	}
	if c.AccessPastDueGrace, err = age(getenv, "ACCESS_PAST_DUE_GRACE", 0, true); err != nil {
		errs = append(errs, err)
	}
	c.StripeAPIRPS = 20
	if v := getenv("STRIPE_API_RPS"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 2 || n > 10000 {
			add("STRIPE_API_RPS", fmt.Sprintf("must be a whole number from 2 to 10000, got %q", v))
		}
		c.StripeAPIRPS = n
	}
	c.MaxConns = 20
	if v := getenv("DB_MAX_CONNS"); v != "" {
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < 2 || n > 1000 {
			add("DB_MAX_CONNS", "must be a whole number from 2 to 1000")
		}
		c.MaxConns = int32(n)
	}

	if needs&NeedDatabase != 0 {
		if c.DatabaseURL == "" {
			add("DATABASE_URL", "is required (a postgres:// URL)")
		} else if err := checkPostgresURL(c.DatabaseURL); err != nil {
			add("DATABASE_URL", err.Error())
		}
		if c.MigrateDatabaseURL != "" {
			if err := checkPostgresURL(c.MigrateDatabaseURL); err != nil {
				add("MIGRATE_DATABASE_URL", err.Error())
			}
		}
	}
	if needs&NeedServer != 0 {
		if _, port, err := net.SplitHostPort(c.ListenAddr); err != nil || port == "" {
			add("LISTEN_ADDR", fmt.Sprintf("must be host:port, got %q", c.ListenAddr))
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			add("LISTEN_ADDR", fmt.Sprintf("has a bad port %q", port))
		}
		c.fill(getenv("STRIPE_WEBHOOK_SECRET"), add)
	}
	if needs&(NeedStripe|NeedServer) != 0 {
		if u, err := url.Parse(c.StripeAPIBase); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("STRIPE_API_BASE", "must be an http(s) URL")
		}
		if c.StripeSecretKey == "" && c.Development {
			c.StripeSecretKey = DevSecretKey
			c.DevDefaults = append(c.DevDefaults, "STRIPE_SECRET_KEY")
		}
		switch {
		case c.StripeSecretKey == "":
			add("STRIPE_SECRET_KEY", "is required (sk_live_, sk_test_ or rk_ key)")
		case !strings.HasPrefix(c.StripeSecretKey, "sk_") && !strings.HasPrefix(c.StripeSecretKey, "rk_"):
			add("STRIPE_SECRET_KEY", "must start with sk_ or rk_")
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// fill reads the secrets and tokens, filling development values when allowed.
func (c *Config) fill(secrets string, add func(v, reason string)) {
	for _, s := range strings.Split(secrets, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.WebhookSecrets = append(c.WebhookSecrets, s)
		}
	}
	dev := func(name string, dst *string, val string) {
		if *dst == "" && c.Development {
			*dst = val
			c.DevDefaults = append(c.DevDefaults, name)
		}
	}
	if len(c.WebhookSecrets) == 0 && c.Development {
		c.WebhookSecrets = []string{DevWebhookSecret}
		c.DevDefaults = append(c.DevDefaults, "STRIPE_WEBHOOK_SECRET")
	}
	dev("APP_API_TOKEN", &c.AppAPIToken, DevAppAPIToken)
	dev("ADMIN_TOKEN", &c.AdminToken, DevAdminToken)

	if len(c.WebhookSecrets) == 0 {
		add("STRIPE_WEBHOOK_SECRET", "is required (one or more whsec_ secrets, comma-separated)")
	}
	for i, s := range c.WebhookSecrets {
		if reason := webhookSecretProblem(s); reason != "" {
			add("STRIPE_WEBHOOK_SECRET", fmt.Sprintf("secret #%d %s", i+1, reason))
		}
	}
	if c.AppAPIToken == "" {
		add("APP_API_TOKEN", "is required")
	} else if len(c.AppAPIToken) < 12 && !c.Development {
		add("APP_API_TOKEN", "must be at least 12 characters")
	}
	if c.AdminToken == "" {
		add("ADMIN_TOKEN", "is required")
	} else if len(c.AdminToken) < 12 && !c.Development {
		add("ADMIN_TOKEN", "must be at least 12 characters")
	}
}

// minWebhookSecret is the fewest characters lockstep takes after whsec_
// (Stripe's secrets have 32).
const minWebhookSecret = 8

// webhookSecretProblem says what is wrong with one STRIPE_WEBHOOK_SECRET
// entry, or "". It never quotes the secret.
func webhookSecretProblem(s string) string {
	body, ok := strings.CutPrefix(s, "whsec_")
	switch {
	case !ok:
		return "does not start with whsec_ (copy the signing secret from the webhook endpoint in Stripe's dashboard, or from stripe listen)"
	case strings.Contains(body, "whsec_") || strings.ContainsAny(body, "; \t"):
		return "holds more than one secret: separate secrets with commas (whsec_a...,whsec_b...)"
	case len(body) < minWebhookSecret:
		return fmt.Sprintf("is too short: %d characters after whsec_, want at least %d (Stripe's have 32); was it cut off?", len(body), minWebhookSecret)
	}
	return ""
}

func checkPostgresURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("is not a URL")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Errorf("must be a postgres:// URL, got scheme %q", u.Scheme)
	}
	return nil
}

func duration(getenv func(string) string, name string, def time.Duration) (time.Duration, error) {
	v := getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > 10*time.Minute {
		return 0, &Error{Var: name, Reason: fmt.Sprintf("must be a duration such as 1500ms, got %q", v)}
	}
	return d, nil
}

// age reads a duration that may be long: Go's units, or a whole number of
// days ("90d"). zero allows "0" (off).
func age(getenv func(string) string, name string, def time.Duration, zero bool) (time.Duration, error) {
	v := strings.TrimSpace(getenv(name))
	if v == "" {
		return def, nil
	}
	d, err := ParseAge(v)
	switch {
	case err != nil:
		return 0, &Error{Var: name, Reason: fmt.Sprintf("must be a duration such as 5m, 72h or 90d, got %q", v)}
	case d == 0 && !zero:
		return 0, &Error{Var: name, Reason: "must be longer than 0"}
	}
	return d, nil
}

// ParseAge parses a non-negative duration in Go's units ("5m", "72h") or in
// whole days ("90d"), up to 10 years.
func ParseAge(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || n > 3650 {
			return 0, fmt.Errorf("bad number of days %q", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, err
		}
	}
	if d < 0 || d > 3650*24*time.Hour {
		return 0, fmt.Errorf("duration %q out of range", s)
	}
	return d, nil
}

func or(v, def string) string {
	if v = strings.TrimSpace(v); v != "" {
		return v
	}
	return def
}

// MigrateURL is the URL migrations run on: a direct connection.
func (c *Config) MigrateURL() string {
	if c.MigrateDatabaseURL != "" {
		return c.MigrateDatabaseURL
	}
	return c.DatabaseURL
}

// String prints the configuration with every secret masked. Values left to
// another package's default print as 0s (serve prints its effective ones).
func (c *Config) String() string {
	secrets := make([]string, len(c.WebhookSecrets))
	for i, s := range c.WebhookSecrets {
		secrets[i] = Redact(s)
	}
	// metrics_token comes last: unset, it prints as nothing, and the log's
	// masking (redact.String) would take the next word for its value.
	return fmt.Sprintf("database=%s listen=%s webhook_secrets=[%s] stripe_key=%s stripe_api=%s app_token=%s admin_token=%s lock_timeout=%s retry_budget=%s sweep_interval=%s stripe_api_rps=%d ledger_retention=%s metrics_token=%s",
		RedactURL(c.DatabaseURL), c.ListenAddr, strings.Join(secrets, ","), Redact(c.StripeSecretKey),
		c.StripeAPIBase, maskToken(c.AppAPIToken), maskToken(c.AdminToken), c.LockTimeout, c.RetryBudget,
		c.SweepInterval, c.StripeAPIRPS, c.LedgerRetention, maskToken(c.MetricsToken))
}

func maskToken(t string) string {
	if t == "" {
		return ""
	}
	return "****"
}
