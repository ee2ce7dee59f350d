package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/lockstep/lockstep/stripeapi"
)

// ErrSweepBusy means another sweeper (a replica, or `lockstep sweep`) holds
// the lease.
var ErrSweepBusy = errors.New("another sweeper holds the lease")

// SweepOptions says how a sweeper pass runs.
type SweepOptions struct {
	// Owner names this sweeper in the lease (host and pid).
	Owner string
	// Lease is how long the lease lasts unless renewed (default 2m); a
	// sweeper that dies frees it by letting it run out.
	Lease time.Duration
	// Lookback is where the first pass starts, before any cursor is stored
	// (default 72h, Stripe's retry window in live mode).
	Lookback time.Duration
	// Since, when set, starts this pass that far back whatever the cursor
	// says (`lockstep sweep --since`).
	Since time.Duration
	// Overlap is how far before the cursor each pass starts again
	// (default 10m): events can appear in the list a little after their
	// created time, and the cursor and Stripe's clock need not agree.
	Overlap time.Duration
	// Unreadable, when set, is told of each event Stripe listed that
	// lockstep cannot read (else it is logged); the pass goes on, and ends
	// with ErrUnreadable.
	Unreadable func(Unreadable)
}

// SweepResult is what one pass did.
type SweepResult struct {
	From      time.Time // created[gte] of the list
	Listed    int       // events of handled types listed
	Missing   int       // of which the ledger lacked
	Recovered int       // processed (or recorded ignored) now
	Failed    int       // recorded failed: replay or Stripe's redelivery will retry them
	Cursor    time.Time // where the next pass starts (less the overlap)
}

const sweeperName = "events"

// Sweep is one pass of the sweeper: it lists Stripe's Events API from the
// stored cursor (less an overlap) and processes, a page at a time as it is
// listed (see sweep), every event of a handled type that the ledger lacks,
// through the same path as a webhook. Events in the ledger, whatever their status, are left alone
// (failed ones are replay's). Only one sweeper runs at a time: the lease is
// a row taken and renewed by single statements, so it holds behind
// PgBouncer's transaction pooling.
func (b *Bulk) Sweep(ctx context.Context, o SweepOptions) (SweepResult, error) {
	if o.Lease <= 0 {
		o.Lease = 2 * time.Minute
	}
	if o.Lookback <= 0 {
		o.Lookback = 72 * time.Hour
	}
	if o.Overlap <= 0 {
		o.Overlap = 10 * time.Minute
	}
	cursor, err := b.takeSweepLease(ctx, o)
	if err != nil {
		return SweepResult{}, err
	}
	// The list starts now by this clock: the cursor only bounds the window,
	// and the overlap absorbs any skew between this clock and Stripe's.
	listStart := time.Now()
	res := SweepResult{From: listStart.Add(-o.Lookback)}
	switch {
	case o.Since > 0:
		res.From = listStart.Add(-o.Since)
	case cursor != nil:
		res.From = cursor.Add(-o.Overlap)
	}
	if floor := listStart.Add(-30 * 24 * time.Hour); res.From.Before(floor) {
		res.From = floor // Stripe keeps 30 days
	}
	err = b.sweep(ctx, o, &res)
	if err == nil || errors.Is(err, ErrUnreadable) {
		// Listing again would not make an unreadable event readable.
		res.Cursor = listStart
	}
	if ferr := b.releaseSweepLease(ctx, o.Owner, res, err); ferr != nil && err == nil {
		err = ferr
	}
	return res, err
}

// sweepPage is how many listed events of handled types the sweeper checks
// against the ledger, and applies, at a time.
const sweepPage = 100

// sweep lists the events and applies the missing ones page by page, as
// they are listed: what it holds is one page, however many are missing.
// The list is newest first, so pages apply newest first and each page
// oldest first; the store keeps the newest snapshot of each object
// whatever order its events arrive in, as it does for webhooks. The lease
// is renewed as the list moves forward, after what was gathered is
// applied, and only then: a pass that stops
// moving forward (a list that does not end ends with ErrListStuck; a
// Stripe that hangs answers nothing) lets its lease run out, and another
// replica takes over.
func (b *Bulk) sweep(ctx context.Context, o SweepOptions, res *SweepResult) error {
	types := slices.Sorted(maps.Keys(handledTypes))
	if len(types) > stripeapi.MaxEventTypes {
		// Stripe's filter takes fewer types than lockstep handles: list
		// every event and keep the handled ones here, where the loop sees
		// the list move forward through the others too.
		types = nil
	}
	page := make([]*stripeapi.Event, 0, sweepPage)
	renewed := time.Now()
	unreadable := 0
	flush := func() error {
		if len(page) == 0 {
			return nil
		}
		if err := b.applyMissing(ctx, page, res, func(u Unreadable) {
			unreadable++
			b.reportUnreadable(ctx, o.Unreadable, u)
		}); err != nil {
			return err
		}
		clear(page) // let the payloads go
		page = page[:0]
		return nil
	}
	// renew applies what the page holds, then renews the lease when a
	// quarter of it has passed: only a pass that moves forward gets here.
	renew := func() error {
		if time.Since(renewed) <= o.Lease/4 {
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		renewed = time.Now()
		return b.renewSweepLease(ctx, o)
	}
	for ev, err := range b.api.Events(ctx, stripeapi.ListParams{CreatedGTE: res.From}, types) {
		if u, ok := unreadableOf("event", err); ok {
			unreadable++
			b.reportUnreadable(ctx, o.Unreadable, u)
			continue
		}
		if err != nil {
			if ferr := flush(); ferr != nil {
				return ferr
			}
			return fmt.Errorf("sweep: list events: %w", err)
		}
		if _, ok := handledTypes[ev.Type]; ok {
			res.Listed++
			page = append(page, ev)
		}
		// Every listed event is progress, handled or not: the account's
		// other events (payment_intent.*, charge.*) can fill many pages
		// of the list, which Stripe's types[] filter cannot narrow to
		// more than 20 types.
		if len(page) == sweepPage {
			if err := flush(); err != nil {
				return err
			}
		}
		if err := renew(); err != nil {
			return err
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return unreadableError(unreadable)
}

// applyMissing processes, oldest first, the events of page that the ledger
// lacks. An event whose object is not what its type promises (no customer,
// bad JSON for its kind) is not recorded: it goes to unreadable.
func (b *Bulk) applyMissing(ctx context.Context, page []*stripeapi.Event, res *SweepResult, unreadable func(Unreadable)) error {
	s := b.Service
	ids := make([]string, len(page))
	for i, ev := range page {
		ids[i] = ev.ID
	}
	rows, err := s.db.Query(ctx, `SELECT event_id FROM stripe_events WHERE event_id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("sweep: read ledger: %w", err)
	}
	known, err := collectStrings(rows)
	if err != nil {
		return fmt.Errorf("sweep: read ledger: %w", err)
	}
	missing := slices.DeleteFunc(slices.Clone(page), func(ev *stripeapi.Event) bool { return slices.Contains(known, ev.ID) })
	res.Missing += len(missing)
	// Oldest first; the list is newest first, so equal times keep the
	// list's order reversed.
	slices.Reverse(missing)
	slices.SortStableFunc(missing, func(a, b *stripeapi.Event) int { return a.Created.Compare(b.Created) })
	for _, ev := range missing {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := s.processEvent(ctx, ev, "sweeper")
		switch {
		case errors.Is(err, stripeapi.ErrMalformed) && r.Outcome == "":
			unreadable(Unreadable{Object: "event", ID: ev.ID, Reason: err.Error()})
		case err != nil:
			res.Failed++
			s.log.WarnContext(ctx, "sweeper: event failed; recorded for replay", slog.String("event_id", ev.ID),
				slog.String("error", err.Error()))
		case r.Outcome == Processed || r.Outcome == Ignored:
			res.Recovered++
			s.log.InfoContext(ctx, "sweeper: recovered a missed event", slog.String("event_id", ev.ID),
				slog.String("type", ev.Type))
		}
	}
	return nil
}

// reportUnreadable hands u to report, or else logs it.
func (s *Service) reportUnreadable(ctx context.Context, report func(Unreadable), u Unreadable) {
	if report != nil {
		report(u)
		return
	}
	s.log.WarnContext(ctx, "stripe sent an object lockstep can't read; skipped", slog.String("object", u.Object),
		slog.String("id", u.ID), slog.String("reason", u.Reason))
}

// takeSweepLease takes the lease, free or run out or already ours, and
// returns the stored cursor (nil before the first pass).
func (s *Service) takeSweepLease(ctx context.Context, o SweepOptions) (*time.Time, error) {
	const q = `
INSERT INTO stripe_sweeper AS w (name, lease_owner, lease_until) VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until
WHERE w.lease_until IS NULL OR w.lease_until < now() OR w.lease_owner = excluded.lease_owner
RETURNING cursor`
	var cursor *time.Time
	err := s.db.QueryRow(ctx, q, sweeperName, o.Owner, o.Lease.Seconds()).Scan(&cursor)
	if isNoRows(err) {
		var owner string
		var until time.Time
		if err := s.db.QueryRow(ctx, `SELECT lease_owner, lease_until FROM stripe_sweeper WHERE name = $1`, sweeperName).
			Scan(&owner, &until); err != nil {
			return nil, fmt.Errorf("%w (and reading it: %v)", ErrSweepBusy, err)
		}
		return nil, fmt.Errorf("%w: %s, until %s", ErrSweepBusy, owner, until.UTC().Format(time.RFC3339))
	}
	if err != nil {
		return nil, fmt.Errorf("sweep: take lease: %w", err)
	}
	return cursor, nil
}

func (s *Service) renewSweepLease(ctx context.Context, o SweepOptions) error {
	held, err := s.renewLease(ctx, sweeperName, o.Owner, o.Lease)
	switch {
	case err != nil:
		return fmt.Errorf("sweep: renew lease: %w", err)
	case !held:
		return fmt.Errorf("sweep: lost the lease")
	}
	return nil
}

// renewLease extends owner's lease on the stripe_sweeper row name (the
// sweeper's, or a sync's) by d, in one statement; held is false when the
// row is no longer owner's: another took it over after it ran out.
func (s *Service) renewLease(ctx context.Context, name, owner string, d time.Duration) (held bool, err error) {
	tag, err := s.db.Exec(ctx, `UPDATE stripe_sweeper SET lease_until = now() + make_interval(secs => $3)
WHERE name = $1 AND lease_owner = $2`, name, owner, d.Seconds())
	return err == nil && tag.RowsAffected() > 0, err
}

// releaseSweepLease frees the lease and, after a pass that succeeded, moves
// the cursor (never backwards).
func (s *Service) releaseSweepLease(ctx context.Context, owner string, res SweepResult, passErr error) error {
	const q = `UPDATE stripe_sweeper SET lease_until = NULL, last_run_at = now(),
    cursor = CASE WHEN $3::timestamptz IS NULL THEN cursor ELSE greatest(cursor, $3) END,
    last_error = $4
WHERE name = $1 AND lease_owner = $2`
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var lastErr *string
	if passErr != nil {
		msg := truncate(passErr.Error(), maxErrorLen)
		lastErr = &msg
	}
	if _, err := s.db.Exec(ctx, q, sweeperName, owner, nullTime(res.Cursor), lastErr); err != nil {
		return fmt.Errorf("sweep: release lease: %w", err)
	}
	return nil
}
