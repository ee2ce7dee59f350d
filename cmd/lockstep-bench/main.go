// Command lockstep-bench is lockstep's load tool, apart from the service so
// that `lockstep serve` links only what serves. It drives a lockstep over
// loopback with signed webhooks and checkout-success calls, bounded by a
// duration and a request count, and in the same run measures the reference:
// the SQL transaction one event costs, driven straight at PostgreSQL with
// pgbench (scripts/pgbench/event.sql) at the same concurrency, in the round
// trips lockstep sends it in and again one statement per round trip. It
// prints throughput, latency percentiles, lock waits (from lockstep's
// /metrics), errors by status and memory, lockstep's rate as a ratio of each
// reference's, and writes a Markdown report and the same data as JSON.
//
// Without -target it serves lockstep in its own process, built by
// app.NewServer exactly as `lockstep serve` builds it. lockstep-bench -h
// lists the flags; `make bench` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/logging"
	schema "github.com/lockstep/lockstep/sql"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "lockstep-bench:", err)
		var usage *usageError
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a command line that makes no sense; the process exits 2,
// as lockstep does for its own.
type usageError struct{ error }

// run runs the load. Without -target it serves lockstep in this process, on
// 127.0.0.1:0, against DATABASE_URL and a fake Stripe, and drives that.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	opts, err := ParseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return &usageError{err}
	}
	if opts.CPUProfile != "" {
		f, err := os.Create(opts.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	cfg := Config{
		Options:     *opts,
		DatabaseURL: strings.TrimSpace(getenv("DATABASE_URL")),
		Command:     commandLine(getenv, args),
		Stdout:      stdout,
		Progress:    stderr,
	}
	cfg.LockstepDB = dbName(cfg.DatabaseURL)
	if opts.Target != "" {
		fake, err := stripefake.StartOn(opts.StripeListen)
		if err != nil {
			return fmt.Errorf("fake Stripe API: %w (choose another -stripe-listen)", err)
		}
		defer fake.Close()
		fmt.Fprintf(stderr, "bench: fake Stripe API on %s; the target must run with STRIPE_API_BASE=%s\n", fake.URL, fake.URL)
		cfg.TargetURL, cfg.Stripe = opts.Target, fake
		cfg.WebhookSecret = config.DevWebhookSecret
		if s := strings.TrimSpace(strings.Split(getenv("STRIPE_WEBHOOK_SECRET"), ",")[0]); s != "" {
			cfg.WebhookSecret = s
		}
		cfg.AppToken = config.DevAppAPIToken
		if t := strings.TrimSpace(getenv("APP_API_TOKEN")); t != "" {
			cfg.AppToken = t
		}
		cfg.MetricsToken = strings.TrimSpace(getenv("METRICS_TOKEN"))
		_, err = Run(ctx, cfg)
		return err
	}

	if opts.Scratch {
		if cfg.DatabaseURL == "" {
			return &config.Error{Var: "DATABASE_URL", Reason: "is required (a postgres:// URL of the server for the scratch databases)"}
		}
		db, err := CreateScratch(ctx, cfg.DatabaseURL, "lockstep")
		if err != nil {
			return err
		}
		defer func() {
			if err := db.Drop(); err != nil {
				fmt.Fprintf(stderr, "bench: could not drop %s: %v\n", db.Name(), err)
			}
		}()
		fmt.Fprintf(stderr, "bench: lockstep runs on scratch database %s (dropped at the end)\n", db.Name())
		outer := getenv
		getenv = func(name string) string {
			if name == "DATABASE_URL" {
				return db.URL()
			}
			return outer(name)
		}
		cfg.LockstepDB = db.Name()
	}
	fake := stripefake.Start()
	defer fake.Close()
	srv, err := startServer(ctx, getenv, opts, fake)
	if err != nil {
		return err
	}
	defer srv.close()
	cfg.TargetURL, cfg.InProcess, cfg.Stripe = srv.url, true, fake
	cfg.WebhookSecret, cfg.AppToken = srv.cfg.WebhookSecrets[0], srv.cfg.AppAPIToken
	cfg.MetricsToken = srv.cfg.MetricsToken
	if opts.Access {
		return runAccess(ctx, cfg, srv.cfg.DatabaseURL, opts.Keep)
	}
	if opts.LedgerRows > 0 {
		fmt.Fprintf(stderr, "bench: filling the ledger up to %d rows\n", opts.LedgerRows)
		added, err := fillLedger(ctx, srv.pool, opts.LedgerRows)
		if err != nil {
			return err
		}
		if added > 0 && !opts.Keep && !opts.Scratch {
			defer func() {
				if err := removeFill(context.WithoutCancel(ctx), srv.pool); err != nil {
					fmt.Fprintf(stderr, "bench: %v\n", err)
				}
			}()
		}
	}
	cfg.PID, cfg.DB = os.Getpid(), srv.counters
	rep, runErr := Run(ctx, cfg)
	if !opts.Keep && !opts.Scratch && rep != nil {
		if err := srv.removeRows(rep.Run); err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
		}
	}
	return runErr
}

// server is lockstep served in the bench's process.
type server struct {
	cfg      *config.Config
	pool     *pgxpool.Pool
	hs       *http.Server
	url      string
	counters *DBCounters
	logFile  *os.File
}

func startServer(ctx context.Context, getenv func(string) string, opts *Options, fake *stripefake.Server) (*server, error) {
	// The server's configuration is serve's, read from the same variables,
	// with development values for unset secrets and the fake Stripe.
	serverEnv := func(name string) string {
		switch name {
		case "STRIPE_API_BASE":
			return fake.URL
		case "LISTEN_ADDR":
			return "127.0.0.1:0"
		case "LOCKSTEP_ENV":
			if v := getenv(name); v != "" {
				return v
			}
			return "development"
		case "STRIPE_SECRET_KEY":
			if v := getenv(name); v != "" {
				return v
			}
			return config.DevSecretKey
		}
		return getenv(name)
	}
	cfg, err := config.Load(serverEnv, config.NeedDatabase|config.NeedServer)
	if err != nil {
		return nil, err
	}
	if err := schema.Up(cfg.MigrateURL()); err != nil {
		return nil, err
	}
	s := &server{cfg: cfg, counters: &DBCounters{}}
	var logOut io.Writer = io.Discard
	if opts.ServerLog != "" {
		if s.logFile, err = os.Create(opts.ServerLog); err != nil {
			return nil, fmt.Errorf("-server-log: %w", err)
		}
		logOut = s.logFile
	}
	// JSON, as in production, even when discarded: formatting is part of
	// what a request costs.
	var level slog.Level
	_ = level.UnmarshalText([]byte(getenv("LOG_LEVEL"))) // info unless set
	log := logging.New(logOut, level)

	// The pool is serve's, plus counters of statements and round trips for
	// the report.
	s.pool, err = lockmgr.OpenPool(ctx, cfg.DatabaseURL, cfg.MaxConns, func(pc *pgxpool.Config) {
		pc.ConnConfig.Tracer = s.counters
		pc.ConnConfig.DialFunc = s.counters.WrapDial(pc.ConnConfig.DialFunc)
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	s.url = "http://" + ln.Addr().String()
	a := app.NewServer(cfg, s.pool, log)
	if opts.LedgerMaxAge != "" {
		d, _ := time.ParseDuration(opts.LedgerMaxAge) // checked by ParseArgs
		a.Metrics.SetLedgerMaxAge(d)
	}
	s.hs = app.NewHTTPServer(a.Handler, log)
	go func() { _ = s.hs.Serve(ln) }()
	return s, nil
}

func (s *server) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_ = s.hs.Shutdown(ctx)
	s.pool.Close()
	if s.logFile != nil {
		_ = s.logFile.Close()
	}
}

// removeRows deletes what the run wrote: the rows of its customers
// (cus_bench_RUN_*), their subscriptions and the ledger rows of its events.
func (s *server) removeRows(run string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, q := range []string{
		`DELETE FROM stripe_events WHERE event_id LIKE 'evt\_bench\_' || $1 || '\_%'`,
		`DELETE FROM stripe_invoices WHERE stripe_customer_id LIKE 'cus\_bench\_' || $1 || '\_%'`,
		`DELETE FROM stripe_subscriptions WHERE stripe_customer_id LIKE 'cus\_bench\_' || $1 || '\_%'`,
		`DELETE FROM stripe_customers WHERE stripe_customer_id LIKE 'cus\_bench\_' || $1 || '\_%'`,
	} {
		if _, err := s.pool.Exec(ctx, q, run); err != nil {
			return fmt.Errorf("remove the bench's rows: %w", err)
		}
	}
	return nil
}

// commandLine is the command as the report shows it, with the database
// URL's password hidden.
func commandLine(getenv func(string) string, args []string) string {
	cmd := strings.TrimSpace("lockstep-bench " + strings.Join(args, " "))
	if u := strings.TrimSpace(getenv("DATABASE_URL")); u != "" {
		cmd = "DATABASE_URL='" + config.RedactURL(u) + "' " + cmd
	}
	return cmd
}
