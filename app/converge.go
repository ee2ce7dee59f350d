package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/stripeapi"
)

// The convergence commands: sync (backfill from Stripe's lists), verify
// (stored state against Stripe's) and sweep (one pass over Stripe's Events
// API). Each reads Stripe on the bulk share of the API budget and writes
// through the same customer locks as the live writers.

// bulkService opens the database and returns a billing service reading
// Stripe through a client on the bulk share of STRIPE_API_RPS.
func bulkService(ctx context.Context, env Env, log *slog.Logger) (*bulk, error) {
	cfg, pool, err := openForCommand(ctx, env, config.NeedStripe, 8)
	if err != nil {
		return nil, err
	}
	api := stripeapi.NewClient(cfg.StripeAPIBase, cfg.StripeSecretKey, stripeapi.Options{
		Budget: stripeapi.NewBudget(cfg.StripeAPIRPS), Share: stripeapi.Bulk})
	svc := billing.NewService(lockManager(cfg, pool, nil, log), api, log)
	return &bulk{cfg: cfg, Bulk: svc.Bulk(api), close: pool.Close}, nil
}

// bulk is what a convergence command works with.
type bulk struct {
	*billing.Bulk
	cfg   *config.Config
	close func()
}

// parseSince reads --since: a time (RFC 3339 or a date, 2026-01-31) not
// after now, or an age (72h, 30d) counted back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t, err = time.Parse(time.DateOnly, s)
	}
	switch {
	case err == nil && t.After(now):
		return time.Time{}, fmt.Errorf("--since %s is in the future; give a past time (2026-01-31) or an age (72h, 30d)", s)
	case err == nil:
		return t, nil
	}
	if d, err := config.ParseAge(s); err == nil && d > 0 {
		return now.Add(-d).Truncate(time.Second), nil
	}
	return time.Time{}, fmt.Errorf("--since wants a time (2026-01-31, 2026-01-31T12:00:00Z) or an age (72h, 30d), got %q", s)
}

// checkCustomerFlag refuses a --customer that is not a customer id. An
// empty one given on purpose (--customer "", a variable that was unset)
// is refused too: it would otherwise mean the whole account.
func checkCustomerFlag(fs *commandFlags, id string) error {
	cmd := fs.Name()
	if isSet(fs, "customer") && strings.TrimSpace(id) == "" {
		return &UsageError{Msg: fmt.Sprintf("%s: --customer is empty; give a Stripe customer id (cus_...), or leave the flag out for the whole account", cmd)}
	}
	if id != "" && !stripeapi.ValidID(id, "cus_") {
		return &UsageError{Msg: fmt.Sprintf("%s: --customer wants a Stripe customer id (cus_...), got %q", cmd, id)}
	}
	return nil
}

const syncUsage = `usage: lockstep sync [--customer cus_...] [--since T] [--dry-run] [--invoices N] [--page-size N]

Backfills products and prices (not with --customer), customers, subscriptions
and invoices from Stripe's lists, then each stored customer's active
entitlements, each customer's objects under its lock; run again to continue an
interrupted sync.
`

func syncCmd(ctx context.Context, args []string, env Env, log *slog.Logger) error {
	fs := newFlags("sync", syncUsage, env)
	customer := fs.String("customer", "", "")
	since := fs.String("since", "", "")
	dryRun := fs.Bool("dry-run", false, "")
	invoices := fs.Int("invoices", 10, "")
	pageSize := fs.Int("page-size", 100, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkCustomerFlag(fs, *customer); err != nil {
		return err
	}
	cut, err := parseSince(*since, time.Now())
	if err != nil {
		return &UsageError{Msg: "sync: " + err.Error()}
	}
	if *invoices < 1 || *invoices > 100 {
		return &UsageError{Msg: fmt.Sprintf("sync: --invoices wants 1 to 100, got %d", *invoices)}
	}
	if *pageSize < 1 || *pageSize > 100 {
		return &UsageError{Msg: fmt.Sprintf("sync: --page-size wants 1 to 100, got %d", *pageSize)}
	}
	b, err := bulkService(ctx, env, log)
	if err != nil {
		return err
	}
	defer b.close()

	progress := newProgressLine(env.Stderr)
	verb := "wrote"
	if *dryRun {
		verb = "would write"
	}
	p, err := b.Sync(ctx, billing.SyncOptions{
		Customer: *customer, Since: cut, SinceAsked: *since, DryRun: *dryRun, InvoicesPerCustomer: *invoices, PageSize: *pageSize,
		Progress: func(p billing.SyncProgress) { progress.show(syncLine(p)) },
		Change: func(c billing.Change) {
			if *dryRun {
				progress.print(env.Stdout, "would write: "+c.String())
			}
		},
		Note:       func(id, note string) { progress.print(env.Stderr, "customer "+id+": "+note) },
		Unreadable: func(u billing.Unreadable) { progress.print(env.Stderr, "sync: skipped: "+u.String()) },
		Owner:      sweepOwner("sync"),
	})
	progress.done()
	summary := fmt.Sprintf("read %d, %s %d, %s, %.0f objects/s", p.Read, verb, p.Written,
		p.Elapsed.Round(100*time.Millisecond), rate(p.ReadNow, p.Elapsed))
	if p.Resumed {
		summary += " (continued an interrupted run)"
	}
	switch {
	case errors.Is(err, billing.ErrSyncRunning):
		return err
	case errors.Is(err, billing.ErrUnreadable):
		fmt.Fprintf(env.Stdout, "sync done: %s\n", summary)
		return fmt.Errorf("sync: done, but %w", err)
	case err != nil && ctx.Err() != nil:
		return &ExitError{Code: 130, Msg: fmt.Sprintf("sync interrupted in %s: %s; run it again to continue", p.Phase, summary)}
	case err != nil && stripeAdvice(err) != "":
		return &explained{msg: fmt.Sprintf("sync stopped in %s (%s): %s", p.Phase, summary, stripeAdvice(err)), err: err}
	case err != nil:
		return &explained{msg: fmt.Sprintf("sync stopped in %s (%s; run it again to continue): %s", p.Phase, summary,
			strings.TrimPrefix(err.Error(), "sync: ")), err: err}
	}
	fmt.Fprintf(env.Stdout, "sync done: %s\n", summary)
	return nil
}

// isSet reports whether the command line gave flag name.
func isSet(fs *commandFlags, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// commandError is err said under the command's name once ("verify: ...",
// never "verify: verify: ..." when billing's error already names it), or,
// for a Stripe key that was refused, what to do about the key.
func commandError(name string, err error) error {
	if advice := stripeAdvice(err); advice != "" {
		return &explained{msg: name + ": " + advice, err: err}
	}
	if strings.HasPrefix(err.Error(), name+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

// stripeAdvice says what to do about a Stripe answer that running again
// will not mend (the key refused), or "" for any other error. Stripe's own
// message is never repeated: it can quote the key.
func stripeAdvice(err error) string {
	where := ""
	var apiErr *stripeapi.APIError
	if errors.As(err, &apiErr) {
		where = fmt.Sprintf(", GET %s, request %s", apiErr.Path, apiErr.RequestID)
	}
	switch {
	case errors.Is(err, stripeapi.ErrUnauthorized):
		return "Stripe rejected STRIPE_SECRET_KEY (HTTP 401" + where + "): set it to a valid secret (sk_) or restricted (rk_) key of this Stripe account; lockstep doctor checks it"
	case errors.Is(err, stripeapi.ErrForbidden):
		return "STRIPE_SECRET_KEY lacks a permission this read needs (HTTP 403" + where + "): give the restricted key read access to Checkout Sessions, Customers, Subscriptions, Invoices, Products, Prices, Entitlements and Events, or use a secret key; lockstep doctor checks it"
	}
	return ""
}

func syncLine(p billing.SyncProgress) string {
	// Stripe's lists give no totals, so there is no ETA to show.
	return fmt.Sprintf("sync %s: read %d, written %d, %.0f/s, %s", p.Phase, p.Read, p.Written,
		rate(p.ReadNow, p.Elapsed), p.Elapsed.Round(time.Second))
}

func rate(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

const verifyUsage = `usage: lockstep verify [--customer cus_...] [--repair]

Compares stored products and prices (not with --customer), customers,
mappings, subscriptions and entitlements with Stripe's, one line per
difference. Exit 0 equal, 3 drift (with --repair: 0 once mended), 2 usage.
`

func verifyCmd(ctx context.Context, args []string, env Env, log *slog.Logger) error {
	fs := newFlags("verify", verifyUsage, env)
	customer := fs.String("customer", "", "")
	repair := fs.Bool("repair", false, "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkCustomerFlag(fs, *customer); err != nil {
		return err
	}
	b, err := bulkService(ctx, env, log)
	if err != nil {
		return err
	}
	defer b.close()
	res, err := b.Verify(ctx, billing.VerifyOptions{
		Customer: *customer, Repair: *repair,
		Found:      func(c billing.Change) { fmt.Fprintln(env.Stdout, "drift: "+c.String()) },
		Mended:     func(c billing.Change) { fmt.Fprintln(env.Stdout, "mended: "+c.String()) },
		Unreadable: func(u billing.Unreadable) { fmt.Fprintln(env.Stdout, "verify: skipped: "+u.String()) },
	})
	// Objects that could not be read were reported; the rest was compared,
	// and the run exits non-zero only after saying how that went.
	var done error
	if errors.Is(err, billing.ErrUnreadable) {
		done, err = fmt.Errorf("verify: compared the rest, but %w", err), nil
	}
	if err != nil {
		return commandError("verify", err)
	}
	switch {
	case len(res.Found) == 0:
		fmt.Fprintln(env.Stdout, "verify: stored state equals Stripe's")
		return done
	case *repair && len(res.Remaining) == 0:
		fmt.Fprintf(env.Stdout, "verify: %d differences found, all mended\n", len(res.Found))
		return done
	case *repair:
		for _, c := range res.Remaining {
			fmt.Fprintln(env.Stdout, "not mended: "+c.String())
		}
		return &ExitError{Code: 3, Msg: fmt.Sprintf("verify: %d differences found, %d not mended (see the README: Operations, verify)",
			len(res.Found), len(res.Remaining))}
	}
	return &ExitError{Code: 3, Msg: fmt.Sprintf("verify: %d differences found (verify --repair mends them)", len(res.Found))}
}

const sweepUsage = `usage: lockstep sweep [--since AGE]

One pass of the missed-event sweeper over Stripe's Events API, from the stored
cursor or AGE back (at most 30d).
`

func sweepCmd(ctx context.Context, args []string, env Env, log *slog.Logger) error {
	fs := newFlags("sweep", sweepUsage, env)
	since := fs.String("since", "", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var back time.Duration
	if *since != "" {
		d, err := config.ParseAge(*since)
		if err != nil || d <= 0 || d > 30*24*time.Hour {
			return &UsageError{Msg: fmt.Sprintf("sweep: --since wants an age up to 30d (Stripe keeps 30 days of events), such as 6h or 3d, got %q", *since)}
		}
		back = d
	}
	b, err := bulkService(ctx, env, log)
	if err != nil {
		return err
	}
	defer b.close()
	res, err := b.Sweep(ctx, billing.SweepOptions{Owner: sweepOwner("cli"), Lookback: b.cfg.SweepLookback, Since: back,
		Unreadable: func(u billing.Unreadable) { fmt.Fprintln(env.Stdout, "sweep: skipped: "+u.String()) }})
	if errors.Is(err, billing.ErrUnreadable) {
		fmt.Fprintln(env.Stdout, sweepLine(res))
		return fmt.Errorf("sweep: pass done, but %w", err)
	}
	if err != nil {
		return commandError("sweep", err)
	}
	fmt.Fprintln(env.Stdout, sweepLine(res))
	return nil
}

func sweepLine(r billing.SweepResult) string {
	return fmt.Sprintf("sweep: %d events of handled types since %s, %d missing from the ledger, %d recovered, %d failed (recorded for replay)",
		r.Listed, r.From.UTC().Format(time.RFC3339), r.Missing, r.Recovered, r.Failed)
}

// sweepOwner names this process in the sweeper's lease.
func sweepOwner(role string) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), role)
}

// startSweeper sweeps every interval (the first pass after 10% jitter
// more, so replicas started together do not line up) through runEvery,
// like the pruner. It returns the function that stops it and waits for a
// running pass to end (the pass ends at its next call to Stripe or the
// database and frees its lease). A pass another replica holds the lease
// for is skipped quietly. Interval 0: nothing.
func startSweeper(ctx context.Context, srv *Server, interval, lookback time.Duration, log *slog.Logger) (stop func()) {
	if interval <= 0 {
		return func() {}
	}
	owner := sweepOwner("serve")
	first := interval + time.Duration(rand.Int64N(int64(interval)/10+1))
	return runEvery(ctx, first, interval, func(ctx context.Context) {
		sweepOnce(ctx, srv, owner, lookback, log)
	})
}

// sweepOnce is one pass of serve's sweeper.
func sweepOnce(ctx context.Context, srv *Server, owner string, lookback time.Duration, log *slog.Logger) {
	res, err := srv.Bulk.Sweep(ctx, billing.SweepOptions{Owner: owner, Lookback: lookback})
	switch {
	case errors.Is(err, billing.ErrSweepBusy):
		log.Debug("sweeper: another replica holds the lease", slog.String("error", err.Error()))
	case err != nil && ctx.Err() != nil:
		return // shutting down
	case errors.Is(err, billing.ErrUnreadable):
		srv.Metrics.SweepFailed()
		srv.Metrics.SweepRecovered(res.Recovered)
		log.Error("sweeper: pass done, but some events could not be read (logged above, by id)", slog.Int("listed", res.Listed),
			slog.Int("missing", res.Missing), slog.Int("recovered", res.Recovered), slog.String("error", err.Error()))
	case err != nil:
		srv.Metrics.SweepFailed()
		log.Error("sweeper: pass failed; the next starts from the same cursor", slog.String("error", err.Error()))
	default:
		srv.Metrics.SweepRecovered(res.Recovered)
		log.Info("sweeper: pass done", slog.Int("listed", res.Listed), slog.Int("missing", res.Missing),
			slog.Int("recovered", res.Recovered), slog.Int("failed", res.Failed))
	}
}

// progressLine draws one line that updates in place on a terminal, at most
// a few times a second; elsewhere (a pipe, a log) it prints nothing until
// the summary.
type progressLine struct {
	mu   sync.Mutex // sync reports changes from its workers
	w    io.Writer
	tty  bool
	last time.Time
	text string
}

func newProgressLine(w io.Writer) *progressLine {
	p := &progressLine{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progressLine) show(text string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.tty || time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.text = text
	fmt.Fprintf(p.w, "\r\033[K%s", text)
}

// print writes a line above the progress line.
func (p *progressLine) print(w io.Writer, line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.text != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintln(w, strings.TrimRight(line, "\n"))
	if p.tty && p.text != "" {
		fmt.Fprint(p.w, p.text)
	}
}

func (p *progressLine) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.text != "" {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
