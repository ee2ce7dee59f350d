package app

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

func openForCommand(ctx context.Context, env Env) (*config.Config, *pgxpool.Pool, error) {
	cfg, err := config.Load(env.Getenv, config.NeedDatabase)
	if err != nil {
		return nil, nil, err
	}
	pool, err := lockmgr.OpenPool(ctx, cfg.DatabaseURL, 4)
	if err != nil {
		return nil, nil, err
	}
	if err := Ready(ctx, pool); err != nil {
		pool.Close()
		return nil, nil, err
	}
	return cfg, pool, nil
}

func locksCmd(ctx context.Context, args []string, env Env) error {
	asJSON := false
	for _, a := range args {
		if a != "--json" {
			return &UsageError{Msg: fmt.Sprintf("locks: unknown flag %q", a)}
		}
		asJSON = true
	}
	_, pool, err := openForCommand(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	locks, err := lockmgr.ListLocks(ctx, pool)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(locks)
	}
	PrintLocks(env, locks)
	return nil
}

// PrintLocks writes locks as a table, one row each.
func PrintLocks(env Env, locks []lockmgr.LockInfo) {
	if len(locks) == 0 {
		fmt.Fprintln(env.Stdout, "no advisory locks held or awaited")
		return
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CUSTOMER\tKIND\tPID\tSTATE\tFOR\tBLOCKED BY\tAPPLICATION\tQUERY")
	for _, l := range locks {
		state := "granted"
		if !l.Granted {
			state = "waiting"
		}
		who := l.CustomerID
		if l.Kind == "user" {
			who = "user:" + l.UserID
		}
		if who == "" || who == "user:" {
			who = "-"
		}
		blocked := make([]string, len(l.BlockedBy))
		for i, p := range l.BlockedBy {
			blocked[i] = fmt.Sprint(p)
		}
		q := strings.Join(strings.Fields(l.Query), " ")
		if len(q) > 60 {
			q = q[:57] + "..."
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", who, l.Kind, l.PID, state, l.Age(),
			or(strings.Join(blocked, ","), "-"), or(l.ApplicationName, "-"), or(q, "-"))
	}
	_ = tw.Flush()
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func replayCmd(ctx context.Context, args []string, env Env, log *slog.Logger) error {
	if len(args) != 1 {
		return &UsageError{Msg: "replay takes one EVENT_ID or --failed"}
	}
	if args[0] != "--failed" && !stripeapi.ValidID(args[0], "evt_") {
		return &UsageError{Msg: fmt.Sprintf("replay: %q is not an event id (evt_...)", args[0])}
	}
	cfg, pool, err := openForCommand(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	// Replay may have to settle a same-second tie by reading Stripe.
	if cfg.StripeSecretKey == "" {
		cfg.StripeSecretKey = "sk_unset"
	}
	locks := lockmgr.New(pool, lockmgr.DefaultConfig(), nil, log)
	svc := billing.NewService(locks, stripeapi.NewClient(cfg.StripeAPIBase, cfg.StripeSecretKey, 0), log)

	var results []billing.ReplayResult
	if args[0] == "--failed" {
		results, err = svc.ReplayFailed(ctx)
		if err != nil {
			return err
		}
	} else {
		r, err := svc.Replay(ctx, args[0])
		if r.Outcome == "" && err != nil {
			return err
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
