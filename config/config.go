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

// Load reads the environment through getenv: every setting of the table
// (settings), each value trimmed of surrounding whitespace the same way,
// "" (or only whitespace) meaning unset. Each problem is one *Error naming
// its variable; several are joined, one per line.
func Load(getenv func(string) string, needs Needs) (*Config, error) {
	c := &Config{}
	if err := c.load(c.settings(), getenv, needs); err != nil {
		return nil, err
	}
	return c, nil
}

// load reads settings into c: the one place that trims, fills defaults
// and development values, and words the errors.
func (c *Config) load(settings []setting, getenv func(string) string, needs Needs) error {
	var errs []error
	for _, s := range settings {
		needed := s.needs == 0 || needs&s.needs != 0
		v := strings.TrimSpace(getenv(s.name))
		bad := func(reason string) {
			if s.secret && v != "" { // never quote a secret, whatever the check said
				reason = strings.ReplaceAll(reason, v, Redact(v))
			}
			errs = append(errs, &Error{Var: s.name, Reason: reason})
		}
		switch {
		case v != "":
		case needed && c.Development && s.dev != "":
			v = s.dev
			c.DevDefaults = append(c.DevDefaults, s.name)
		case needed && s.required != "":
			bad(s.required)
			continue
		default:
			v = s.def
		}
		if v == "" {
			continue
		}
		if !needed {
			// Read for the commands that use it when set (replay's
			// Stripe key), but not checked: this command does not need it.
			bad = func(string) {}
		}
		s.parse(v, bad)
	}
	return errors.Join(errs...)
}

// setting is one environment variable: how Load reads it into c.
type setting struct {
	name     string
	needs    Needs  // the commands that check it (and fill dev); 0: every one
	def      string // the value when unset
	dev      string // the value when unset under LOCKSTEP_ENV=development, listed in DevDefaults
	required string // the reason when unset where needed; "" for optional
	secret   bool   // its value is never quoted in an error
	// parse stores v (trimmed, not empty) in its field and calls bad with
	// the reason for each problem it finds.
	parse func(v string, bad func(reason string))
}

// settings is the configuration, one row per variable, in the order Load
// reads them (LOCKSTEP_ENV first: the development values depend on it).
func (c *Config) settings() []setting {
	return []setting{
		{name: "LOCKSTEP_ENV", parse: func(v string, bad func(string)) {
			switch v {
			case "production":
			case "development":
				c.Development = true
			default:
				bad(fmt.Sprintf("must be production or development, got %q", v))
			}
		}},
		{name: "DATABASE_URL", needs: NeedDatabase, required: "is required (a postgres:// URL)", secret: true,
			parse: text(&c.DatabaseURL, checkPostgresURL)},
		{name: "MIGRATE_DATABASE_URL", needs: NeedDatabase, secret: true,
			parse: text(&c.MigrateDatabaseURL, checkPostgresURL)},
		{name: "LISTEN_ADDR", needs: NeedServer, def: "127.0.0.1:8080", parse: text(&c.ListenAddr, checkListenAddr)},
		{name: "STRIPE_WEBHOOK_SECRET", needs: NeedServer, dev: DevWebhookSecret, secret: true,
			required: webhookSecretRequired, parse: c.webhookSecrets},
		{name: "APP_API_TOKEN", needs: NeedServer, dev: DevAppAPIToken, required: "is required", secret: true,
			parse: text(&c.AppAPIToken, c.checkToken)},
		{name: "ADMIN_TOKEN", needs: NeedServer, dev: DevAdminToken, required: "is required", secret: true,
			parse: text(&c.AdminToken, c.checkToken)},
		{name: "METRICS_TOKEN", secret: true, parse: text(&c.MetricsToken, nil)},
		{name: "STRIPE_API_BASE", needs: NeedStripe | NeedServer, def: "https://api.stripe.com",
			parse: text(&c.StripeAPIBase, checkHTTPURL)},
		{name: "STRIPE_SECRET_KEY", needs: NeedStripe | NeedServer, dev: DevSecretKey, secret: true,
			required: "is required (sk_live_, sk_test_ or rk_ key)", parse: text(&c.StripeSecretKey, checkStripeKey)},
		// 0 (unset): lockmgr's default, applied where the lock manager is built.
		{name: "LOCK_TIMEOUT", parse: duration(&c.LockTimeout)},
		{name: "RETRY_BUDGET", parse: duration(&c.RetryBudget)},
		{name: "SHUTDOWN_TIMEOUT", def: "15s", parse: duration(&c.ShutdownTimeout)},
		{name: "STRIPE_SWEEP_INTERVAL", def: "5m", parse: age(&c.SweepInterval, true, nil)},
		{name: "STRIPE_SWEEP_LOOKBACK", def: "72h", parse: age(&c.SweepLookback, false, func(d time.Duration) string {
			if d > 30*24*time.Hour {
				return "must be at most 30d (Stripe keeps 30 days of events)"
			}
			return ""
		})},
		{name: "LEDGER_RETENTION", parse: age(&c.LedgerRetention, true, func(d time.Duration) string {
			if d > 0 && d < 24*time.Hour {
				return "must be at least 1d (or 0 to keep every event)"
			}
			return ""
		})},
		{name: "ACCESS_PAST_DUE_GRACE", parse: age(&c.AccessPastDueGrace, true, nil)},
		{name: "STRIPE_API_RPS", def: "20", parse: func(v string, bad func(string)) {
			n, err := strconv.Atoi(v)
			if err != nil || n < 2 || n > 10000 {
				bad(fmt.Sprintf("must be a whole number from 2 to 10000, got %q", v))
			}
			c.StripeAPIRPS = n
		}},
		{name: "DB_MAX_CONNS", def: "20", parse: func(v string, bad func(string)) {
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n < 2 || n > 1000 {
				bad("must be a whole number from 2 to 1000")
			}
			c.MaxConns = int32(n)
		}},
	}
}

// text is a setting stored as it is, then checked by check (nil: none),
// which returns the problem or "".
func text(dst *string, check func(string) string) func(string, func(string)) {
	return func(v string, bad func(string)) {
		*dst = v
		if check != nil {
			if reason := check(v); reason != "" {
				bad(reason)
			}
		}
	}
}

// duration is a short duration in Go's units, above 0 and at most 10m.
func duration(dst *time.Duration) func(string, func(string)) {
	return func(v string, bad func(string)) {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 || d > 10*time.Minute {
			bad(fmt.Sprintf("must be a duration such as 1500ms, got %q", v))
			return
		}
		*dst = d
	}
}

// age is a duration that may be long: Go's units, or a whole number of
// days ("90d"); zero allows "0" (off). check (nil: none) judges the value.
func age(dst *time.Duration, zero bool, check func(time.Duration) string) func(string, func(string)) {
	return func(v string, bad func(string)) {
		d, err := ParseAge(v)
		switch {
		case err != nil:
			bad(fmt.Sprintf("must be a duration such as 5m, 72h or 90d, got %q", v))
			return
		case d == 0 && !zero:
			bad("must be longer than 0")
			return
		}
		*dst = d
		if check != nil {
			if reason := check(d); reason != "" {
				bad(reason)
			}
		}
	}
}

const webhookSecretRequired = "is required (one or more whsec_ secrets, comma-separated)"

// webhookSecrets reads STRIPE_WEBHOOK_SECRET: one or more secrets,
// comma-separated, each trimmed; a problem with any is one line each.
func (c *Config) webhookSecrets(v string, bad func(string)) {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.WebhookSecrets = append(c.WebhookSecrets, s)
		}
	}
	if len(c.WebhookSecrets) == 0 {
		bad(webhookSecretRequired) // only commas and spaces
	}
	for i, s := range c.WebhookSecrets {
		if reason := webhookSecretProblem(s); reason != "" {
			bad(fmt.Sprintf("secret #%d %s", i+1, reason))
		}
	}
}

// checkToken judges APP_API_TOKEN and ADMIN_TOKEN: at least 12 characters,
// except in development.
func (c *Config) checkToken(t string) string {
	if len(t) < 12 && !c.Development {
		return "must be at least 12 characters"
	}
	return ""
}

func checkListenAddr(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Sprintf("must be host:port, got %q", addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Sprintf("has a bad port %q", port)
	}
	return ""
}

func checkHTTPURL(s string) string {
	if u, err := url.Parse(s); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "must be an http(s) URL"
	}
	return ""
}

func checkStripeKey(k string) string {
	if !strings.HasPrefix(k, "sk_") && !strings.HasPrefix(k, "rk_") {
		return "must start with sk_ or rk_"
	}
	return ""
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

func checkPostgresURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "is not a URL"
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return fmt.Sprintf("must be a postgres:// URL, got scheme %q", u.Scheme)
	}
	return ""
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
