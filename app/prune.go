package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/config"
)

// minRetention is the shortest cut prune takes, as for LEDGER_RETENTION.
const minRetention = 24 * time.Hour

const pruneUsage = `usage: lockstep prune --older-than AGE [--dry-run]

Deletes processed and ignored events settled (processed_at) more than AGE
ago from the stripe_events ledger, 1000 rows per statement. Failed events
are never deleted. AGE is a duration such as 90d or 2160h, at least 1d.
`

func pruneCmd(ctx context.Context, args []string, env Env) error {
	fs := newFlags("prune", pruneUsage, env)
	olderThan := fs.String("older-than", "", "")
	dryRun := fs.Bool("dry-run", false, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	age, err := parseRetention(*olderThan)
	if err != nil {
		return &UsageError{Msg: "prune: " + err.Error()}
	}
	_, pool, err := openForCommand(ctx, env, 0, 4)
	if err != nil {
		return err
	}
	defer pool.Close()

	opts := billing.PruneOptions{Before: time.Now().Add(-age), DryRun: *dryRun}
	start := time.Now()
	res, err := billing.PruneEvents(ctx, pool, opts)
	fmt.Fprintln(env.Stdout, pruneSummary(res, opts, *olderThan, time.Since(start)))
	return err
}

// parseRetention reads --older-than: required, ParseAge's units, at least
// minRetention.
func parseRetention(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("--older-than is required (a duration such as 90d)")
	}
	d, err := config.ParseAge(s)
	if err != nil {
		return 0, fmt.Errorf("--older-than must be a duration such as 90d or 2160h, got %q", s)
	}
	if d < minRetention {
		return 0, fmt.Errorf("--older-than must be at least 1d, got %q", s)
	}
	return d, nil
}

// pruneSummary is the line prune prints: what it deleted (or would), the
// cut, and the failed events it kept.
func pruneSummary(res billing.PruneResult, opts billing.PruneOptions, age string, took time.Duration) string {
	cut := opts.Before.UTC().Format(time.RFC3339)
	if opts.DryRun {
		return fmt.Sprintf("would prune %d events (%d processed, %d ignored) settled before %s (older than %s); %d failed events kept",
			res.Deleted(), res.Processed, res.Ignored, cut, age, res.FailedKept)
	}
	return fmt.Sprintf("pruned %d events (%d processed, %d ignored) settled before %s (older than %s) in %d batches, %s; %d failed events kept",
		res.Deleted(), res.Processed, res.Ignored, cut, age, res.Batches, took.Round(time.Millisecond), res.FailedKept)
}

// pruneInterval is how often serve prunes the ledger when LEDGER_RETENTION
// is set.
const pruneInterval = 24 * time.Hour

// startPruner prunes the ledger of events settled more than retention ago,
// daily, from a first run a few minutes after start (jittered, so replicas
// started together do not prune together; concurrent prunes are safe
// anyway, each skips the rows the other holds). It returns the function
// that stops it and waits for a running prune to end. Retention 0: nothing.
func startPruner(ctx context.Context, pool *pgxpool.Pool, retention time.Duration, log *slog.Logger) (stop func()) {
	if retention <= 0 {
		return func() {}
	}
	first := time.Minute + rand.N(10*time.Minute)
	log.Info("ledger retention on", slog.Duration("retention", retention), slog.Duration("first_prune_in", first.Round(time.Second)))
	return runEvery(ctx, first, pruneInterval, func(ctx context.Context) {
		pruneOnce(ctx, pool, retention, log)
	})
}

// runEvery calls fn after first, then every interval, until stop is called
// (or ctx ends); stop waits for a running fn to return.
func runEvery(ctx context.Context, first, interval time.Duration, fn func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(first)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			fn(ctx)
			t.Reset(interval)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// pruneOnce is serve's daily pass: paced (each batch followed by a pause
// as long as it took), since nothing waits for it.
func pruneOnce(ctx context.Context, pool *pgxpool.Pool, retention time.Duration, log *slog.Logger) {
	opts := billing.PruneOptions{Before: time.Now().Add(-retention), Pace: true}
	start := time.Now()
	res, err := billing.PruneEvents(ctx, pool, opts)
	attrs := []slog.Attr{slog.Int64("processed", res.Processed), slog.Int64("ignored", res.Ignored),
		slog.Int("batches", res.Batches), slog.Time("before", opts.Before), slog.Duration("took", time.Since(start)),
		slog.Int64("failed_kept", res.FailedKept)}
	if err != nil {
		if ctx.Err() != nil {
			return // shutting down
		}
		log.LogAttrs(ctx, slog.LevelWarn, "ledger prune failed; next try in 24h", append(attrs, slog.String("error", err.Error()))...)
		return
	}
	log.LogAttrs(ctx, slog.LevelInfo, "ledger pruned", attrs...)
}
