package app

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

// openForCommand loads the configuration a command needs, opens a pool of
// maxConns on the database and checks, once, that its schema is the one this
// binary knows (an error that says what to run if not).
func openForCommand(ctx context.Context, env Env, needs config.Needs, maxConns int32) (*config.Config, *pgxpool.Pool, error) {
	cfg, err := config.Load(env.Getenv, config.NeedDatabase|needs)
	if err != nil {
		return nil, nil, err
	}
	pool, err := lockmgr.OpenPool(ctx, cfg.DatabaseURL, maxConns)
	if err != nil {
		return nil, nil, err
	}
	if err := checkSchema(ctx, pool); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return cfg, pool, nil
}

// commandFlags is a command's flag set and what -h prints.
type commandFlags struct {
	*flag.FlagSet
	usage string
	out   io.Writer
}

// newFlags is a flag set whose errors are one-line usage errors and whose
// -h prints usage on stdout.
func newFlags(name, usage string, env Env) *commandFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &commandFlags{FlagSet: fs, usage: usage, out: env.Stdout}
}

// parseFlags parses args, which may hold flags only. After -h it returns
// an ExitError of code 0, which ends the command quietly.
func parseFlags(fs *commandFlags, args []string) error {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = io.WriteString(fs.out, fs.usage)
		return &ExitError{Code: 0}
	case err != nil:
		return &UsageError{Msg: fmt.Sprintf("%s: %v", fs.Name(), err)}
	case fs.NArg() > 0:
		return &UsageError{Msg: fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// lockManager is the lock manager serve and every command write through,
// with cfg's timeouts (see lockConfig).
func lockManager(cfg *config.Config, pool *pgxpool.Pool, obs lockmgr.Observer, log *slog.Logger) *lockmgr.Manager {
	return lockmgr.New(pool, lockConfig(cfg), obs, log)
}

// lockConfig is lockmgr's configuration with cfg's LOCK_TIMEOUT and
// RETRY_BUDGET. Zero (unset, or a Config built by hand in tests) keeps
// lockmgr's default: config does not know it, so that config stays a leaf.
func lockConfig(cfg *config.Config) lockmgr.Config {
	lcfg := lockmgr.DefaultConfig()
	if cfg.LockTimeout > 0 {
		lcfg.LockTimeout = cfg.LockTimeout
	}
	if cfg.RetryBudget > 0 {
		lcfg.RetryBudget = cfg.RetryBudget
	}
	return lcfg
}

// effective is cfg as lockstep runs with it, for printing: the lock
// timeout and retry budget it leaves to lockmgr's defaults filled in.
func effective(cfg *config.Config) *config.Config {
	c := *cfg
	lcfg := lockConfig(cfg)
	c.LockTimeout, c.RetryBudget = lcfg.LockTimeout, lcfg.RetryBudget
	return &c
}

const locksUsage = `usage: lockstep locks [--json]

Prints the customer advisory locks held or awaited right now, one row each:
the customer, the backend's pid, granted or waiting, for how long, whom it
waits for, and what the holder is doing. --json prints the document
GET /admin/locks returns.
`

func locksCmd(ctx context.Context, args []string, env Env) error {
	asJSON := false
	for _, a := range args {
		if a != "--json" {
			return &UsageError{Msg: fmt.Sprintf("locks: unknown flag %q", a)}
		}
		asJSON = true
	}
	_, pool, err := openForCommand(ctx, env, 0, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	locks, err := lockmgr.ListLocks(ctx, pool)
	if err != nil {
		return err
	}
	if asJSON {
		// The same document GET /admin/locks returns.
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"locks": locks})
	}
	PrintLocks(env.Stdout, locks)
	return nil
}

// PrintLocks writes locks as a table, one row each, grouped by lock: the
// holder, then whoever waits for it. FOR is how long a waiter has waited,
// or how long the holder's transaction has run; STATE and QUERY say what
// that backend is doing now.
func PrintLocks(w io.Writer, locks []lockmgr.LockInfo) {
	if len(locks) == 0 {
		fmt.Fprintln(w, "no advisory locks held or awaited")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CUSTOMER\tPID\tLOCK\tFOR\tBLOCKED BY\tAPPLICATION\tSTATE\tQUERY")
	waiting := 0
	for _, l := range locks {
		lock := "granted"
		if !l.Granted {
			lock = "waiting"
			waiting++
		}
		blocked := make([]string, len(l.BlockedBy))
		for i, p := range l.BlockedBy {
			blocked[i] = strconv.Itoa(int(p))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", lockOwner(l), l.PID, lock, l.Age(),
			or(strings.Join(blocked, ","), "-"), or(cell(l.ApplicationName, 63), "-"),
			or(cell(l.State, 40), "-"), or(cell(l.Query, 60), "-"))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "%d locks: %d granted, %d waiting\n", len(locks), len(locks)-waiting, waiting)
}

// lockOwner names whom a lock belongs to: the customer, "user:<id>" for a
// user's mapping lock, or the raw key when no row matches (a customer not
// committed yet, or another application's lock).
func lockOwner(l lockmgr.LockInfo) string {
	switch {
	case l.Kind == "customer" && l.CustomerID != "":
		return cell(l.CustomerID, 255)
	case l.Kind == "user" && l.UserID != "":
		return "user:" + cell(l.UserID, 255)
	case l.Kind == "customer" && l.Key != nil:
		return fmt.Sprintf("(key %d)", *l.Key)
	case l.Key != nil:
		return fmt.Sprintf("(%s key %d)", l.Kind, *l.Key)
	}
	return "(" + l.Kind + ")"
}

// cell makes s fit one table cell: whitespace runs and control characters
// become one space, and it is cut to limit runes.
func cell(s string, limit int) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }), " ")
	if utf8.RuneCountInString(s) <= limit {
		return s
	}
	r := []rune(s)
	return string(r[:limit-3]) + "..."
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

const replayUsage = `usage: lockstep replay EVENT_ID
       lockstep replay --failed

Processes stored events again, through the same locks as the live writers:
one event by id (evt_...), or every failed event, oldest first. Exits 1 when
an event fails again.
`

func replayCmd(ctx context.Context, args []string, env Env, log *slog.Logger) error {
	if len(args) != 1 {
		return &UsageError{Msg: "replay takes one EVENT_ID or --failed"}
	}
	if args[0] != "--failed" && !stripeapi.ValidID(args[0], "evt_") {
		return &UsageError{Msg: fmt.Sprintf("replay: %q is not an event id (evt_...)", args[0])}
	}
	cfg, pool, err := openForCommand(ctx, env, 0, 4)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Replay may have to settle a same-second tie by reading Stripe.
	if cfg.StripeSecretKey == "" {
		cfg.StripeSecretKey = "sk_unset"
	}
	svc := billing.NewService(lockManager(cfg, pool, nil, log), stripeapi.NewClient(cfg.StripeAPIBase, cfg.StripeSecretKey, stripeapi.Options{}), log)

	var results []billing.ReplayResult
	if args[0] == "--failed" {
		results, err = svc.ReplayFailed(ctx)
		if err != nil {
			return err
		}
	} else {
		r, err := svc.Replay(ctx, args[0])
		if r.Outcome == "" && err != nil {
			return fmt.Errorf("replay %s: %w", args[0], err)
		}
		results = append(results, r)
	}
	failed := 0
	for _, r := range results {
		line := fmt.Sprintf("%s\t%s", r.EventID, r.Outcome)
		if r.Error != "" {
			failed++
			line += "\t" + r.Error
		}
		fmt.Fprintln(env.Stdout, line)
	}
	fmt.Fprintf(env.Stdout, "replayed %d events, %d failed\n", len(results), failed)
	if failed > 0 {
		return fmt.Errorf("replay: %d events failed again", failed)
	}
	return nil
}
