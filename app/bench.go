package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/bench"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/logging"
	schema "github.com/lockstep/lockstep/sql"
)

// benchCmd runs the load command (package bench). Without -target it serves
// lockstep in this process, on 127.0.0.1:0, against DATABASE_URL and a fake
// Stripe, exactly as serve builds it, and drives that.
func benchCmd(ctx context.Context, args []string, env Env) error {
	opts, err := bench.ParseArgs(args, env.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return &UsageError{Msg: err.Error()}
	}
	if opts.CPUProfile != "" {
		f, err := os.Create(opts.CPUProfile)
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	cfg := bench.Config{
		Options:     *opts,
		DatabaseURL: strings.TrimSpace(env.Getenv("DATABASE_URL")),
		Command:     benchCommandLine(env, args),
		Stdout:      env.Stdout,
		Progress:    env.Stderr,
	}
	cfg.LockstepDB = benchDBName(cfg.DatabaseURL)
	if opts.Target != "" {
		fake, err := stripefake.StartOn(opts.StripeListen)
		if err != nil {
			return fmt.Errorf("bench: fake Stripe API: %w (choose another -stripe-listen)", err)
		}
		defer fake.Close()
		fmt.Fprintf(env.Stderr, "bench: fake Stripe API on %s; the target must run with STRIPE_API_BASE=%s\n", fake.URL, fake.URL)
		cfg.TargetURL, cfg.Stripe = opts.Target, fake
		cfg.WebhookSecret = config.DevWebhookSecret
		if s := strings.TrimSpace(strings.Split(env.Getenv("STRIPE_WEBHOOK_SECRET"), ",")[0]); s != "" {
			cfg.WebhookSecret = s
		}
		cfg.AppToken = config.DevAppAPIToken
		if t := strings.TrimSpace(env.Getenv("APP_API_TOKEN")); t != "" {
			cfg.AppToken = t
		}
		_, err = bench.Run(ctx, cfg)
		return err
	}

	if opts.Scratch {
		if cfg.DatabaseURL == "" {
			return &config.Error{Var: "DATABASE_URL", Reason: "is required (a postgres:// URL of the server for the scratch databases)"}
		}
		db, err := bench.CreateScratch(ctx, cfg.DatabaseURL, "lockstep")
		if err != nil {
			return err
		}
		defer func() {
			if err := db.Drop(); err != nil {
				fmt.Fprintf(env.Stderr, "bench: could not drop %s: %v\n", db.Name(), err)
			}
		}()
		fmt.Fprintf(env.Stderr, "bench: lockstep runs on scratch database %s (dropped at the end)\n", db.Name())
		outer := env.Getenv
		env.Getenv = func(name string) string {
			if name == "DATABASE_URL" {
				return db.URL()
			}
			return outer(name)
		}
		cfg.LockstepDB = db.Name()
	}
	fake := stripefake.Start()
	defer fake.Close()
	srv, err := startBenchServer(ctx, env, opts, fake)
	if err != nil {
		return err
	}
	defer srv.close()
	cfg.TargetURL, cfg.InProcess, cfg.Stripe = srv.url, true, fake
	cfg.WebhookSecret, cfg.AppToken = srv.cfg.WebhookSecrets[0], srv.cfg.AppAPIToken
	cfg.PID, cfg.DB = os.Getpid(), srv.counters
	rep, runErr := bench.Run(ctx, cfg)
	if !opts.Keep && !opts.Scratch && rep != nil {
		if err := srv.removeRows(rep.Run); err != nil {
			fmt.Fprintf(env.Stderr, "bench: %v\n", err)
		}
	}
	return runErr
}

// benchServer is lockstep served in the bench's process.
type benchServer struct {
	cfg      *config.Config
	pool     *pgxpool.Pool
	hs       *http.Server
	url      string
	counters *bench.DBCounters
	logFile  *os.File
}

func startBenchServer(ctx context.Context, env Env, opts *bench.Options, fake *stripefake.Server) (*benchServer, error) {
	// The server's configuration is serve's, read from the same variables,
	// with development values for unset secrets and the fake Stripe.
	getenv := func(name string) string {
		switch name {
		case "STRIPE_API_BASE":
			return fake.URL
		case "LISTEN_ADDR":
			return "127.0.0.1:0"
		case "LOCKSTEP_ENV":
			if v := env.Getenv(name); v != "" {
				return v
			}
			return "development"
		case "STRIPE_SECRET_KEY":
			if v := env.Getenv(name); v != "" {
				return v
			}
			return config.DevSecretKey
		}
		return env.Getenv(name)
	}
	cfg, err := config.Load(getenv, config.NeedDatabase|config.NeedServer)
	if err != nil {
		return nil, err
	}
	if err := schema.Up(cfg.MigrateURL()); err != nil {
		return nil, err
	}
	s := &benchServer{cfg: cfg, counters: &bench.DBCounters{}}
	var logOut io.Writer = io.Discard
	if opts.ServerLog != "" {
		if s.logFile, err = os.Create(opts.ServerLog); err != nil {
			return nil, fmt.Errorf("bench: -server-log: %w", err)
		}
		logOut = s.logFile
	}
	// JSON, as in production, even when discarded: formatting is part of
	// what a request costs.
	log := logging.New(logOut, logLevel(env.Getenv("LOG_LEVEL")))

	// The pool is lockmgr.OpenPool's, plus counters of statements and round
	// trips for the report.
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if !strings.Contains(cfg.DatabaseURL, "pool_max_conns") {
		pcfg.MaxConns = cfg.MaxConns
	}
	if pcfg.ConnConfig.RuntimeParams["application_name"] == "" {
		pcfg.ConnConfig.RuntimeParams["application_name"] = "lockstep"
	}
	pcfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pcfg.ConnConfig.Tracer = s.counters
	pcfg.ConnConfig.DialFunc = s.counters.WrapDial(pcfg.ConnConfig.DialFunc)
	if s.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	app := NewServer(cfg, s.pool, log)
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		s.pool.Close()
		return nil, fmt.Errorf("bench: listen: %w", err)
	}
	s.url = "http://" + ln.Addr().String()
	s.hs = newHTTPServer(app.Handler, log)
	go func() { _ = s.hs.Serve(ln) }()
	return s, nil
}

func (s *benchServer) close() {
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
func (s *benchServer) removeRows(run string) error {
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

// benchDBName is the database a postgres:// URL names ("" if none).
func benchDBName(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(u.Path, "/")
}

// benchCommandLine is the command as the report shows it, with the
// database URL's password hidden.
func benchCommandLine(env Env, args []string) string {
	cmd := "lockstep bench " + strings.Join(args, " ")
	if u := strings.TrimSpace(env.Getenv("DATABASE_URL")); u != "" {
		cmd = "DATABASE_URL='" + config.RedactURL(u) + "' " + cmd
	}
	return cmd
}
