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
	_, err := parseArgs(fs, args, 0)
	return err
}

// parseArgs parses args: flags, and at most most other arguments before,
// between or after them (everything after "--" is one of those), which it
// returns in order. Errors are parseFlags'.
func parseArgs(fs *commandFlags, args []string, most int) ([]string, error) {
	var rest []string
	for {
		err := fs.Parse(args)
		switch {
		case errors.Is(err, flag.ErrHelp):
			_, _ = io.WriteString(fs.out, fs.usage)
			return nil, &ExitError{Code: 0}
		case err != nil:
			return nil, &UsageError{Msg: fmt.Sprintf("%s: %v", fs.Name(), err)}
		}
		more := fs.Args()
		if parsed := args[:len(args)-len(more)]; len(parsed) > 0 && parsed[len(parsed)-1] == "--" {
			rest, more = append(rest, more...), nil
		} else if len(more) > 0 {
			rest, more = append(rest, more[0]), more[1:]
		}
		if len(rest) > most {
			return nil, &UsageError{Msg: fmt.Sprintf("%s: unexpected argument %q", fs.Name(), rest[most])}
		}
		if len(more) == 0 {
			return rest, nil
		}
		args = more
	}
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
	fs := newFlags("locks", locksUsage, env)
	asJSON := fs.Bool("json", false, "print GET /admin/locks's document")
	if err := parseFlags(fs, args); err != nil {
		return err
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
	if *asJSON {
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
	fs := newFlags("replay", replayUsage, env)
	allFailed := fs.Bool("failed", false, "replay every failed event")
	ids, err := parseArgs(fs, args, 1)
	switch {
	case err != nil:
		return err
	case *allFailed && len(ids) > 0, !*allFailed && len(ids) == 0:
		return &UsageError{Msg: "replay takes one EVENT_ID or --failed"}
	case len(ids) == 1 && !stripeapi.ValidID(ids[0], "evt_"):
		return &UsageError{Msg: fmt.Sprintf("replay: %q is not an event id (evt_...)", ids[0])}
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
	if *allFailed {
		results, err = svc.ReplayFailed(ctx)
		if err != nil {
			return err
		}
	} else {
		r, err := svc.Replay(ctx, ids[0])
		if r.Outcome == "" && err != nil {
			return fmt.Errorf("replay %s: %w", ids[0], err)
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
