// Package app wires lockstep together and runs its subcommands, one table
// of them (commands): serve, migrate, locks, replay, sync, verify, sweep,
// prune, doctor and help; `lockstep COMMAND --help` prints each one's
// usage. main stays a few lines; tests build the same server with
// NewServer.
package app

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/handlers"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/metrics"
	schema "github.com/lockstep/lockstep/sql"
	"github.com/lockstep/lockstep/stripeapi"
)

// Env is what a command gets from its process.
type Env struct {
	Getenv func(string) string
	Stdout io.Writer
	Stderr io.Writer
}

const usage = `usage: lockstep [command]

commands:
  serve                 migrate to the latest schema, then serve HTTP (the default)
  migrate up            apply every pending migration
  migrate down N        roll back N migrations
  migrate version       print the schema version
  locks [--json]        the customer advisory locks held or awaited now
  replay EVENT_ID       process one stored event again
  replay --failed       process every failed event again, oldest first
  sync [--customer ID] [--since T] [--dry-run] [--invoices N] [--page-size N]
                        backfill customers, subscriptions and invoices from
                        Stripe's lists through the same locks; resumable
  verify [--customer ID] [--repair]
                        compare stored state with Stripe's, one line per
                        difference; exit 0 equal, 3 drift (--repair: 0 once mended)
  sweep [--since AGE]   one pass of the missed-event sweeper over Stripe's Events API
  prune --older-than AGE [--dry-run]
                        delete processed and ignored events settled more than AGE (90d) ago
  doctor                check configuration, database, schema, privileges and the Stripe key
  access USER_ID [--feature KEY]
                        print the paywall's decision for a user (the JSON of
                        GET /api/users/{user_id}/access)
  help [COMMAND]        this list, or one command's usage

Every command prints its usage with -h or --help.
`

const serveUsage = `usage: lockstep serve

Migrates the database to the latest schema, then serves HTTP on LISTEN_ADDR
(default 127.0.0.1:8080) until SIGINT or SIGTERM. serve is also what
lockstep runs with no command. Configuration: the environment (DATABASE_URL,
STRIPE_WEBHOOK_SECRET, STRIPE_SECRET_KEY, APP_API_TOKEN, ADMIN_TOKEN, ...; see
the README); LOCKSTEP_ENV=development fills unset secrets with printed
development values.
`

const migrateUsage = `usage: lockstep migrate up
       lockstep migrate down N
       lockstep migrate version

up applies every pending migration, down N rolls back N of them, and
version prints the schema version (reading only: it creates nothing).
They run on MIGRATE_DATABASE_URL when set (a direct connection, not
PgBouncer), else DATABASE_URL.
`

// UsageError is a command line that makes no sense. The process exits 2.
// Cmd, when set (Run sets it), points at that command's usage.
type UsageError struct {
	Msg string
	Cmd string
}

func (e *UsageError) Error() string {
	if e.Cmd != "" {
		return e.Msg + " (lockstep " + e.Cmd + " --help shows the usage)"
	}
	return e.Msg + " (lockstep help lists the commands)"
}

// ExitError ends the process with Code after printing Msg (when set). A
// command uses it for an answer that is not a failure of the command, such
// as verify finding drift (3).
type ExitError struct {
	Code int
	Msg  string
}

func (e *ExitError) Error() string { return e.Msg }

// ExitCode is the process exit code for err returned by Run: 0 for nil, 2
// for a usage error, an ExitError's own code, else 1.
func ExitCode(err error) int {
	var usage *UsageError
	var exit *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &usage):
		return 2
	case errors.As(err, &exit):
		return exit.Code
	}
	return 1
}

// command is one subcommand: the usage its -h and --help print, and what
// runs it.
type command struct {
	usage string
	run   func(ctx context.Context, args []string, env Env, log *slog.Logger) error
}

// commands is every subcommand by name. Each one's usage starts with
// "usage: lockstep NAME", and `lockstep NAME -h` prints it without reading
// the configuration (TestEveryCommandHelp holds each entry to that).
var commands map[string]command

func init() {
	// Assigned here, not in the declaration: help refers to commands.
	commands = map[string]command{
		"serve": {serveUsage, func(ctx context.Context, args []string, env Env, log *slog.Logger) error {
			if len(args) > 0 {
				return &UsageError{Msg: "serve takes no arguments"}
			}
			return serve(ctx, env, log)
		}},
		"migrate": {migrateUsage, func(ctx context.Context, args []string, env Env, _ *slog.Logger) error {
			return migrateCmd(ctx, args, env)
		}},
		"locks": {locksUsage, func(ctx context.Context, args []string, env Env, _ *slog.Logger) error {
			return locksCmd(ctx, args, env)
		}},
		"replay": {replayUsage, replayCmd},
		"sync":   {syncUsage, syncCmd},
		"verify": {verifyUsage, verifyCmd},
		"sweep":  {sweepUsage, sweepCmd},
		"prune": {pruneUsage, func(ctx context.Context, args []string, env Env, _ *slog.Logger) error {
			return pruneCmd(ctx, args, env)
		}},
		"doctor": {doctorUsage, func(ctx context.Context, args []string, env Env, _ *slog.Logger) error {
			return doctorCmd(ctx, args, env)
		}},
		"access": {accessUsage, func(ctx context.Context, args []string, env Env, _ *slog.Logger) error {
			return accessCmd(ctx, args, env)
		}},
		"help": {helpUsage, func(_ context.Context, args []string, env Env, _ *slog.Logger) error {
			return helpCmd(args, env)
		}},
	}
}

const helpUsage = `usage: lockstep help [COMMAND]

Lists the commands, or prints one command's usage (the same as
lockstep COMMAND --help).
`

func helpCmd(args []string, env Env) error {
	switch {
	case len(args) == 0:
		_, _ = io.WriteString(env.Stdout, usage)
	case len(args) == 1 && commands[args[0]].usage != "":
		_, _ = io.WriteString(env.Stdout, commands[args[0]].usage)
	case len(args) == 1:
		return &UsageError{Msg: fmt.Sprintf("help: unknown command %q", args[0])}
	default:
		return &UsageError{Msg: "help takes at most one COMMAND"}
	}
	return nil
}

// wantsHelp reports whether args ask for the usage: -h, -help or --help
// anywhere before a "--".
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// Run runs the command named by args. `COMMAND -h` (or --help) prints that
// command's usage and does nothing else: no configuration is read and no
// database is touched.
func Run(ctx context.Context, args []string, env Env) error {
	name := "serve"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	if name == "-h" || name == "-help" || name == "--help" {
		name, args = "help", nil
	}
	cmd, ok := commands[name]
	if !ok {
		return &UsageError{Msg: fmt.Sprintf("unknown command %q", name)}
	}
	if wantsHelp(args) {
		_, _ = io.WriteString(env.Stdout, cmd.usage)
		return nil
	}
	log := logging.New(env.Stderr, logLevel(env.Getenv("LOG_LEVEL")))
	err := cmd.run(ctx, args, env, log)
	var usageErr *UsageError
	if errors.As(err, &usageErr) && usageErr.Cmd == "" && name != "help" {
		usageErr.Cmd = name
	}
	return err
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}

// Server is lockstep's HTTP service over one pool.
type Server struct {
	Handler http.Handler
	Billing *billing.Service
	Metrics *metrics.Metrics
	Locks   *lockmgr.Manager
	// Bulk is Billing's bulk writers, reading Stripe through a client on
	// the bulk share of the API budget: what the sweeper runs on.
	Bulk *billing.Bulk
}

// NewServer builds the service from cfg on pool.
func NewServer(cfg *config.Config, pool *pgxpool.Pool, log *slog.Logger) *Server {
	m := metrics.New()
	m.RegisterPool(pool)
	m.RegisterReady(func(ctx context.Context) error { return Ready(ctx, pool) })
	m.InitSecrets(len(cfg.WebhookSecrets))
	locks := lockManager(cfg, pool, m, log)
	// One budget for the process, shared by the live client (the success
	// call, the same-second read) and the bulk one (the sweeper); 0 (a
	// Config built by hand, in tests) is no budget.
	budget := stripeapi.NewBudget(cfg.StripeAPIRPS)
	api := stripeapi.NewClient(cfg.StripeAPIBase, cfg.StripeSecretKey,
		stripeapi.Options{Timeout: 10 * time.Second, Budget: budget, Share: stripeapi.Live, Observer: m})
	bulkAPI := stripeapi.NewClient(cfg.StripeAPIBase, cfg.StripeSecretKey,
		stripeapi.Options{Timeout: 10 * time.Second, Budget: budget, Share: stripeapi.Bulk, Observer: m})
	svc := billing.NewService(locks, api, log)
	svc.SetPastDueGrace(cfg.AccessPastDueGrace)
	m.RegisterLedger(svc.LedgerCounts, log)
	m.RegisterConvergence(func(ctx context.Context) (metrics.Convergence, error) {
		cursor, found, repaired, err := svc.Convergence(ctx)
		return metrics.Convergence{SweepCursor: cursor, DriftFound: found, DriftRepaired: repaired}, err
	}, log)
	h := handlers.New(handlers.Deps{
		Billing:        svc,
		Verifier:       stripeapi.NewVerifier(cfg.WebhookSecrets),
		Metrics:        m,
		Log:            log,
		AppToken:       cfg.AppAPIToken,
		AdminToken:     cfg.AdminToken,
		MetricsToken:   cfg.MetricsToken,
		Ready:          func(ctx context.Context) error { return Ready(ctx, pool) },
		Locks:          func(ctx context.Context) ([]lockmgr.LockInfo, error) { return lockmgr.ListLocks(ctx, pool) },
		StripeDeadline: cmp.Or(cfg.StripeDeadline, StripeDeadline),
	})
	return &Server{Handler: h, Billing: svc, Metrics: m, Locks: locks, Bulk: svc.Bulk(bulkAPI)}
}

// Ready reports whether the database answers and its schema is the latest
// this binary knows. Its own findings wrap nothing (/readyz shows them);
// a driver's error is wrapped (/readyz only logs it).
func Ready(ctx context.Context, pool *pgxpool.Pool) error {
	version, dirty, found, err := schemaState(ctx, pool)
	switch {
	case err != nil:
		return fmt.Errorf("database: %w", err)
	case !found:
		return fmt.Errorf("database never migrated: run lockstep migrate up")
	case dirty:
		return fmt.Errorf("schema version %d is dirty (a migration failed)", version)
	case version != int64(schema.Latest):
		return fmt.Errorf("schema version %d, want %d", version, schema.Latest)
	}
	return nil
}

func serve(ctx context.Context, env Env, log *slog.Logger) error {
	cfg, err := config.Load(env.Getenv, config.NeedDatabase|config.NeedServer)
	if err != nil {
		return err
	}
	if len(cfg.DevDefaults) > 0 {
		fmt.Fprintf(env.Stderr, "development mode: unset variables filled with development values:\n")
		for _, name := range cfg.DevDefaults {
			fmt.Fprintf(env.Stderr, "  %s=%s\n", name, devValue(cfg, name))
		}
		fmt.Fprintf(env.Stderr, "  (stripe listen prints its own whsec_; put it in STRIPE_WEBHOOK_SECRET to use it)\n")
	}
	log.Info("starting", slog.String("config", effective(cfg).String()))
	if cfg.MetricsToken != "" {
		log.Info("/metrics requires METRICS_TOKEN as a bearer token")
	} else {
		log.Info("/metrics is open to anyone who can reach LISTEN_ADDR; set METRICS_TOKEN to close it")
	}
	if err := schema.Up(cfg.MigrateURL()); err != nil {
		return connectError(err)
	}
	pool, err := lockmgr.OpenPool(ctx, cfg.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return err
	}
	defer pool.Close()
	srv := NewServer(cfg, pool, log)
	stopPruner := startPruner(ctx, pool, cfg.LedgerRetention, log)
	defer stopPruner()

	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on LISTEN_ADDR %s: %w", cfg.ListenAddr, err)
	}
	hs := NewHTTPServer(srv.Handler, log)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	stopSweeper := startSweeper(ctx, srv, cfg.SweepInterval, cfg.SweepLookback, log)
	defer stopSweeper()
	log.Info("serving", slog.String("addr", ln.Addr().String()), slog.Int("schema_version", int(schema.Latest)))

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: draining in-flight requests", slog.Duration("timeout", cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}

// WriteTimeout is the server's write timeout: a handler that has not
// answered by then leaves its client with a dropped connection.
const WriteTimeout = 30 * time.Second

// StripeDeadline is the Stripe time one request may spend (every attempt,
// stripe-go's retries, budget waits): 10 s of the 30 s WriteTimeout. What
// may follow it still fits with room to write the answer: stripe-go's
// sleeps before retries that then fail at once (none for reads by id,
// whose own context ends; up to 3.5 s for a list page), the customer
// transaction's retry budget (RETRY_BUDGET, 4 s) with a statement or lock
// timeout on top (5 s), and recording a failed event (at most 5 s, and only
// when the transaction did not run).
const StripeDeadline = 10 * time.Second

// NewHTTPServer is the HTTP server serve runs (and lockstep-bench measures),
// with timeouts that bound slow clients.
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

func devValue(cfg *config.Config, name string) string {
	switch name {
	case "STRIPE_WEBHOOK_SECRET":
		return cfg.WebhookSecrets[0]
	case "STRIPE_SECRET_KEY":
		return cfg.StripeSecretKey
	case "APP_API_TOKEN":
		return cfg.AppAPIToken
	case "ADMIN_TOKEN":
		return cfg.AdminToken
	}
	return ""
}

func migrateCmd(ctx context.Context, args []string, env Env) error {
	switch {
	case len(args) == 1 && (args[0] == "up" || args[0] == "version"):
	case len(args) == 2 && args[0] == "down":
		if n, err := strconv.Atoi(args[1]); err != nil || n < 1 {
			return &UsageError{Msg: fmt.Sprintf("migrate down: N must be a positive number, got %q", args[1])}
		}
	default:
		return &UsageError{Msg: "migrate takes up, down N or version"}
	}
	cfg, err := config.Load(env.Getenv, config.NeedDatabase)
	if err != nil {
		return err
	}
	switch args[0] {
	case "up":
		err = schema.Up(cfg.MigrateURL())
	case "down":
		n, _ := strconv.Atoi(args[1])
		err = schema.Down(cfg.MigrateURL(), n)
	}
	if err != nil {
		return connectError(err)
	}
	return printSchemaVersion(ctx, cfg.MigrateURL(), env)
}

// printSchemaVersion prints the schema version of the database at url. It
// only reads (golang-migrate's own Version would create schema_migrations
// on a database never migrated), over one connection in the simple
// protocol, which works through any pooler.
func printSchemaVersion(ctx context.Context, url string, env Env) error {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	cc.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cc.RuntimeParams["application_name"] = "lockstep migrate"
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return connectError(err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	version, dirty, found, err := schemaState(ctx, conn)
	switch {
	case err != nil:
		return fmt.Errorf("read the schema version: %w", err)
	case !found:
		fmt.Fprintf(env.Stdout, "no schema (run lockstep migrate up to reach version %d)\n", schema.Latest)
		return nil
	}
	fmt.Fprintf(env.Stdout, "schema version %d (latest %d)%s\n", version, schema.Latest, map[bool]string{true: " DIRTY", false: ""}[dirty])
	return nil
}
