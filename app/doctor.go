package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/lockmgr"
	schema "github.com/lockstep/lockstep/sql"
	"github.com/lockstep/lockstep/stripeapi"
)

const doctorUsage = `usage: lockstep doctor

Checks, one line each (ok, warn or fail): the configuration, the database
(reachable, schema version current and clean), whether the database role
can see other sessions in the locks view, DATABASE_URL's settings for
PgBouncer, the ledger (failed events, retention), and the Stripe key (one
read against STRIPE_API_BASE). Exits 1 when any check fails.
`

// Check outcomes, as doctor prints them.
const (
	checkOK   = "ok"
	checkWarn = "warn"
	checkFail = "fail"
)

// check is one line of doctor's report.
type check struct {
	Name, Status, Detail string
}

// doctorTimeout bounds each network step (connect, a query, the Stripe read).
const doctorTimeout = 5 * time.Second

// doctorProbeCustomer is the customer doctor asks Stripe for: one that does
// not exist, so a 404 resource_missing means "key accepted" and nothing is
// read.
const doctorProbeCustomer = "cus_doctor_probe"

func doctorCmd(ctx context.Context, args []string, env Env) error {
	if err := parseFlags(newFlags("doctor", doctorUsage, env), args); err != nil {
		return err
	}
	checks := runDoctor(ctx, env.Getenv)
	failed := 0
	for _, c := range checks {
		fmt.Fprintf(env.Stdout, "%-4s  %-9s  %s\n", c.Status, c.Name, c.Detail)
		if c.Status == checkFail {
			failed++
		}
	}
	if failed > 0 {
		return &ExitError{Code: 1, Msg: fmt.Sprintf("doctor: %d of %d checks failed", failed, len(checks))}
	}
	return nil
}

// runDoctor runs every check in order. A check that depends on one that
// failed says so and fails too.
func runDoctor(ctx context.Context, getenv func(string) string) []check {
	var out []check
	add := func(name, status, format string, a ...any) {
		out = append(out, check{Name: name, Status: status, Detail: fmt.Sprintf(format, a...)})
	}

	cfg, err := config.Load(getenv, config.NeedDatabase|config.NeedServer)
	switch {
	case err != nil:
		add("config", checkFail, "%s", oneLine(err))
	case len(cfg.DevDefaults) > 0:
		add("config", checkWarn, "LOCKSTEP_ENV=development fills %s with development values: never in production",
			strings.Join(cfg.DevDefaults, ", "))
	default:
		locks := lockConfig(cfg)
		add("config", checkOK, "database %s, %d webhook secret(s), Stripe key %s, lock_timeout %s, retry_budget %s",
			config.RedactURL(cfg.DatabaseURL), len(cfg.WebhookSecrets), config.Redact(cfg.StripeSecretKey),
			locks.LockTimeout, locks.RetryBudget)
	}
	dbCfg, stripeCfg := cfg, cfg
	if cfg == nil {
		dbCfg, _ = config.Load(getenv, config.NeedDatabase)
		stripeCfg, _ = config.Load(getenv, config.NeedStripe)
	}

	if dbCfg == nil {
		for _, name := range []string{"database", "schema", "locks", "pgbouncer", "ledger"} {
			add(name, checkFail, "not checked: DATABASE_URL is not usable (see config)")
		}
	} else {
		out = append(out, databaseChecks(ctx, dbCfg)...)
	}

	switch {
	case stripeCfg == nil:
		add("stripe", checkFail, "not checked: STRIPE_SECRET_KEY or STRIPE_API_BASE is not usable (see config)")
	case stripeCfg.Development && stripeCfg.StripeSecretKey == config.DevSecretKey:
		add("stripe", checkWarn, "not checked: STRIPE_SECRET_KEY is the development placeholder")
	default:
		out = append(out, stripeCheck(ctx, stripeCfg.StripeAPIBase, stripeCfg.StripeSecretKey))
	}
	return out
}

// oneLine joins a multi-line error (errors.Join) into one line.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
}

// databaseChecks connects once and runs the database, schema, locks,
// pgbouncer and ledger checks on that connection.
func databaseChecks(ctx context.Context, cfg *config.Config) []check {
	out := []check{}
	cc, err := pgx.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		out = append(out, check{"database", checkFail, "DATABASE_URL: " + err.Error()})
		return out
	}
	bouncer := pgbouncerCheck(cfg)
	cc.ConnectTimeout = doctorTimeout
	cc.RuntimeParams["application_name"] = "lockstep doctor"
	// Doctor's few queries name no prepared statement, so they work
	// through PgBouncer whatever DATABASE_URL says (the pgbouncer check
	// judges that).
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cctx, cancel := context.WithTimeout(ctx, doctorTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cc)
	if err != nil {
		out = append(out, check{"database", checkFail, oneLine(connectError(err))})
		for _, name := range []string{"schema", "locks"} {
			out = append(out, check{name, checkFail, "not checked: no database connection"})
		}
		out = append(out, bouncer, check{"ledger", checkFail, "not checked: no database connection"})
		return out
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), doctorTimeout)
		defer cancel()
		_ = conn.Close(ctx)
	}()
	q := func(fn func(ctx context.Context) check) check {
		ctx, cancel := context.WithTimeout(ctx, doctorTimeout)
		defer cancel()
		return fn(ctx)
	}
	out = append(out, q(func(ctx context.Context) check { return serverCheck(ctx, conn) }))
	out = append(out, q(func(ctx context.Context) check { return schemaCheck(ctx, conn) }))
	out = append(out, q(func(ctx context.Context) check { return locksCheck(ctx, conn) }))
	out = append(out, bouncer)
	out = append(out, q(func(ctx context.Context) check { return ledgerCheck(ctx, conn, cfg) }))
	return out
}

func serverCheck(ctx context.Context, conn *pgx.Conn) check {
	var version, user, db string
	var num int
	err := conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('server_version_num')::int,
       current_user::text, current_database()::text`).Scan(&version, &num, &user, &db)
	if err != nil {
		return check{"database", checkFail, "connected, but a query failed: " + oneLine(err)}
	}
	host := conn.Config().Host
	if len(host) > 0 && host[0] == '/' {
		host = "socket " + host
	}
	detail := fmt.Sprintf("PostgreSQL %s, database %s as %s on %s:%d", version, db, user, host, conn.Config().Port)
	if num < 150000 {
		return check{"database", checkWarn, detail + ": lockstep needs PostgreSQL 15 or newer"}
	}
	return check{"database", checkOK, detail}
}

// schemaCheck reads the version through schemaState, as every command's
// checkSchema does, and says in more words what to do.
func schemaCheck(ctx context.Context, conn *pgx.Conn) check {
	version, dirty, found, err := schemaState(ctx, conn)
	latest := int64(schema.Latest)
	switch {
	case err != nil:
		return check{"schema", checkFail, "cannot read schema_migrations: " + oneLine(err)}
	case !found:
		return check{"schema", checkFail, fmt.Sprintf("never migrated: run lockstep migrate up (serve migrates at start) to reach version %d", latest)}
	case dirty:
		return check{"schema", checkFail, fmt.Sprintf("version %d is dirty: migration %d failed part-way; repair the schema by hand, then clear the flag (UPDATE schema_migrations SET dirty = false, version = <last good>) and migrate up", version, version)}
	case version < latest:
		return check{"schema", checkFail, fmt.Sprintf("version %d, this binary needs %d: run lockstep migrate up (serve does it at start); /readyz answers 503 until then", version, latest)}
	case version > latest:
		return check{"schema", checkFail, fmt.Sprintf("version %d is newer than this binary knows (%d): run the newer binary, or migrate down with it", version, latest)}
	}
	return check{"schema", checkOK, fmt.Sprintf("version %d, current, not dirty", version)}
}

// locksCheck says whether the role sees what stripe_customer_locks needs:
// pg_locks is readable by every role, but pg_stat_activity shows the query,
// state and application_name of other roles' sessions only to superusers
// and members of pg_read_all_stats. Role membership decides; the sessions
// hidden right now are counted for the message.
func locksCheck(ctx context.Context, conn *pgx.Conn) check {
	var role string
	var super, stats bool
	var hidden int
	err := conn.QueryRow(ctx, `
SELECT current_user::text, r.rolsuper, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
       (SELECT count(*) FROM pg_stat_activity
        WHERE pid <> pg_backend_pid() AND query = '<insufficient privilege>')::int
FROM pg_roles r WHERE r.rolname = current_user`).Scan(&role, &super, &stats, &hidden)
	if err != nil {
		return check{"locks", checkFail, "cannot read the role's privileges: " + oneLine(err)}
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*)::int FROM stripe_customer_locks`).Scan(&n); err != nil {
		if lockmgr.SQLState(err) == "42P01" {
			return check{"locks", checkFail, "not checked: the stripe_customer_locks view is missing (see schema)"}
		}
		return check{"locks", checkFail, fmt.Sprintf("role %s cannot read stripe_customer_locks (lockstep locks, /admin/locks): %s", role, oneLine(err))}
	}
	switch {
	case super:
		return check{"locks", checkOK, fmt.Sprintf("role %s is a superuser: the locks view shows every session's query", role)}
	case stats:
		return check{"locks", checkOK, fmt.Sprintf("role %s has pg_read_all_stats: the locks view shows every session's query", role)}
	}
	return check{"locks", checkWarn, fmt.Sprintf("role %s sees only its own sessions' queries in the locks view (%d other sessions hidden now): GRANT pg_read_all_stats TO %s",
		role, hidden, pgx.Identifier{role}.Sanitize())}
}

// pgbouncerCheck judges DATABASE_URL for PgBouncer in transaction mode: a
// URL that looks like PgBouncer's (port 6432, or "pgbouncer" in the host)
// needs default_query_exec_mode=exec (or simple_protocol), and migrations
// need a direct MIGRATE_DATABASE_URL. It reads only the URLs: the server
// behind a pooler cannot be told apart from a direct one.
func pgbouncerCheck(cfg *config.Config) check {
	cc, err := pgx.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return check{"pgbouncer", checkFail, "DATABASE_URL: " + oneLine(err)}
	}
	mode := strings.ReplaceAll(cc.DefaultQueryExecMode.String(), " ", "_")
	where := fmt.Sprintf("%s:%d", cc.Host, cc.Port)
	if !looksLikePgBouncer(cc.Host, cc.Port) {
		return check{"pgbouncer", checkOK, fmt.Sprintf("DATABASE_URL points at %s, not a PgBouncer port (behind PgBouncer's transaction pooling, add default_query_exec_mode=exec)", where)}
	}
	var problems []string
	if cc.DefaultQueryExecMode != pgx.QueryExecModeExec && cc.DefaultQueryExecMode != pgx.QueryExecModeSimpleProtocol {
		problems = append(problems, fmt.Sprintf("default_query_exec_mode is %s: add default_query_exec_mode=exec to DATABASE_URL, or transaction pooling answers 42P05/26000 and webhooks fail", mode))
	}
	migrateDirect := false
	if cfg.MigrateDatabaseURL != "" {
		if mc, err := pgx.ParseConfig(cfg.MigrateDatabaseURL); err == nil && !looksLikePgBouncer(mc.Host, mc.Port) {
			migrateDirect = true
		}
	}
	if !migrateDirect {
		problems = append(problems, "migrations would go through PgBouncer: set MIGRATE_DATABASE_URL to a direct connection")
	}
	if len(problems) > 0 {
		return check{"pgbouncer", checkWarn, fmt.Sprintf("DATABASE_URL looks like PgBouncer (%s): %s", where, strings.Join(problems, "; "))}
	}
	return check{"pgbouncer", checkOK, fmt.Sprintf("DATABASE_URL looks like PgBouncer (%s): default_query_exec_mode=%s, migrations over MIGRATE_DATABASE_URL", where, mode)}
}

func looksLikePgBouncer(host string, port uint16) bool {
	return port == 6432 || strings.Contains(strings.ToLower(host), "pgbouncer")
}

// ledgerCheck reports failed events waiting for a replay and the
// retention in force. It reads only indexed subsets of the ledger.
func ledgerCheck(ctx context.Context, conn *pgx.Conn, cfg *config.Config) check {
	failed, oldest, err := billing.LedgerSummary(ctx, conn)
	if err != nil {
		if lockmgr.SQLState(err) == "42P01" {
			return check{"ledger", checkFail, "not checked: no stripe_events table (see schema)"}
		}
		return check{"ledger", checkFail, "cannot read stripe_events: " + oneLine(err)}
	}
	retention := "LEDGER_RETENTION off: settled events are kept forever"
	if cfg.LedgerRetention > 0 {
		retention = fmt.Sprintf("LEDGER_RETENTION %s: serve prunes settled events older than that daily", ageString(cfg.LedgerRetention))
	}
	if oldest != nil {
		retention += fmt.Sprintf(" (oldest settled %s)", oldest.UTC().Format("2006-01-02"))
	}
	switch {
	case failed > 0:
		return check{"ledger", checkWarn, fmt.Sprintf("%d failed events wait for a replay (GET /admin/events?status=failed; lockstep replay --failed); %s", failed, retention)}
	case cfg.LedgerRetention > 0 && cfg.LedgerRetention < 30*24*time.Hour:
		return check{"ledger", checkWarn, retention + ": under 30d, events Stripe still lists are pruned, and a sweep over that window processes them again (harmless, wasted)"}
	}
	return check{"ledger", checkOK, "no failed events; " + retention}
}

// ageString prints whole days as "90d", other durations as Go does.
func ageString(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// stripeCheck asks Stripe, through the client serve uses, for a customer
// that does not exist: not found (404 resource_missing) means the key was
// accepted. The client's errors carry Stripe's status, type, code and
// request id, never its message (which may quote the key), and tell a
// rejected key (401) from a missing permission (403) and a rate limit (429).
func stripeCheck(ctx context.Context, base, key string) check {
	ctx, cancel := context.WithTimeout(ctx, 2*doctorTimeout)
	defer cancel()
	mode := "test mode"
	if strings.Contains(key, "_live_") {
		mode = "live mode"
	}
	who := fmt.Sprintf("key %s (%s) at %s", config.Redact(key), mode, config.RedactURL(base))
	// A 429 is reported, not waited out: doctor is run by hand, again.
	api := stripeapi.NewClient(base, key, stripeapi.Options{Timeout: doctorTimeout, RateLimitWait: time.Nanosecond})
	_, _, err := api.Customer(ctx, doctorProbeCustomer)
	var apiErr *stripeapi.APIError
	isAPI := errors.As(err, &apiErr)
	switch {
	case err == nil:
		return check{"stripe", checkOK, who + " accepted (a read of customer " + doctorProbeCustomer + ": found)"}
	case errors.Is(err, stripeapi.ErrNotFound):
		return check{"stripe", checkOK, who + " accepted (a read of customer " + doctorProbeCustomer + ": not found, as expected)"}
	case errors.Is(err, stripeapi.ErrUnauthorized):
		return check{"stripe", checkFail, who + " rejected: " + answer(apiErr) + "; check STRIPE_SECRET_KEY"}
	case errors.Is(err, stripeapi.ErrForbidden):
		return check{"stripe", checkFail, who + " may not read customers: " + answer(apiErr) + "; a restricted key needs read access to Checkout Sessions, Customers, Subscriptions and Invoices"}
	case isAPI && apiErr.Status == http.StatusTooManyRequests:
		return check{"stripe", checkWarn, who + ": rate limited (" + answer(apiErr) + "); run doctor again"}
	case isAPI:
		return check{"stripe", checkFail, fmt.Sprintf("%s: unexpected answer %s (is STRIPE_API_BASE Stripe's API?)", who, answer(apiErr))}
	}
	// No answer, or none Stripe's client could read.
	return check{"stripe", checkFail, fmt.Sprintf("%s: %s (is STRIPE_API_BASE Stripe's API, and reachable from here?)", who, redactKey(oneLine(err), key))}
}

// answer is what Stripe answered, in doctor's words: status, type, code
// and request id (nil: none).
func answer(e *stripeapi.APIError) string {
	if e == nil {
		return "no answer"
	}
	s := fmt.Sprintf("HTTP %d", e.Status)
	for _, w := range []string{e.Type, e.Code} {
		if w != "" {
			s += " " + w
		}
	}
	if e.RequestID != "" {
		s += ", request " + e.RequestID
	}
	return s
}

// redactKey removes the key from s, should a transport error quote it.
func redactKey(s, key string) string {
	if key != "" {
		s = strings.ReplaceAll(s, key, config.Redact(key))
	}
	return config.MaskSecrets(s)
}
