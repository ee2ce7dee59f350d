package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/stripeapi"
)

// errTie means a subscription snapshot has the same Stripe time as the one
// stored but different content: the order of two snapshots of the same
// second is unknown (Stripe dates events and API answers in whole seconds).
// The writer settles it by fetching the subscription from Stripe, outside
// the lock, and storing what Stripe says now (see settleTies).
var errTie = errors.New("subscription snapshot ties with the stored one")

// tieError is errTie with what settling needs: the subscription, and the
// version (xmin) of the stored row that tied. A snapshot fetched after that
// row was read is newer than it, even within the same second, so it may
// replace that very row version, and no other.
type tieError struct {
	subscriptionID string
	storedVersion  string
}

func (e *tieError) Error() string {
	return fmt.Sprintf("subscription %s: snapshot ties with the stored one", e.subscriptionID)
}

func (e *tieError) Is(target error) bool { return target == errTie }

// upsertSubscription stores a snapshot unless the stored one is newer or
// terminal, or says the same. A snapshot is newer when its Stripe time is
// later, or, for a snapshot fetched to settle a tie, when it is of the same
// second and the stored row is still the version that tied ($9). A
// terminal status (canceled, incomplete_expired) always wins and is never
// replaced, because Stripe never revives such a subscription. A snapshot
// that says what the stored one says is not written (no row version, no
// updated_at), so a second sync rewrites nothing: see the unchanged rule
// below. It returns the row stored, and whether the price it names (or
// the price's product) is missing from the catalog, or nothing when the
// stored snapshot was kept: the caller then reads the stored row (settle).
// An upsert-or-read CTE would answer both in one round trip, but makes
// every applied snapshot dearer (see 875a098); a kept snapshot is rare on
// the webhook path, where an event of a later second always writes.
const upsertSubscription = `
INSERT INTO stripe_subscriptions AS s (stripe_subscription_id, stripe_customer_id, status, price_id,
    current_period_end, cancel_at_period_end, source_time, source, trial_end, current_period_start, latest_invoice)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12)
ON CONFLICT (stripe_subscription_id) DO UPDATE SET
    status = excluded.status,
    price_id = coalesce(excluded.price_id, s.price_id),
    current_period_end = coalesce(excluded.current_period_end, s.current_period_end),
    current_period_start = coalesce(excluded.current_period_start, s.current_period_start),
    trial_end = excluded.trial_end,
    latest_invoice = coalesce(excluded.latest_invoice, s.latest_invoice),
    cancel_at_period_end = excluded.cancel_at_period_end,
    source_time = greatest(s.source_time, excluded.source_time),
    source = excluded.source,
    updated_at = now()
WHERE s.stripe_customer_id = excluded.stripe_customer_id
  AND s.status NOT IN ('canceled', 'incomplete_expired')
  AND (excluded.source_time > s.source_time
       OR excluded.status IN ('canceled', 'incomplete_expired')
       OR (excluded.source_time = s.source_time AND s.xmin::text = $9))
  AND ((s.status, s.price_id, s.current_period_end, s.current_period_start, s.trial_end, s.latest_invoice,
        s.cancel_at_period_end)
       IS DISTINCT FROM
       (excluded.status, coalesce(excluded.price_id, s.price_id),
        coalesce(excluded.current_period_end, s.current_period_end),
        coalesce(excluded.current_period_start, s.current_period_start), excluded.trial_end,
        coalesce(excluded.latest_invoice, s.latest_invoice), excluded.cancel_at_period_end)
       OR (excluded.source <> 'api' AND excluded.source_time > s.source_time))
RETURNING status, coalesce(price_id, ''), current_period_end, cancel_at_period_end, ` + catalogMissing

// catalogMissing tells, of a stored subscription row s, whether its price,
// or the price's product, is not stored (a deleted price counts as stored).
const catalogMissing = `s.price_id IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM stripe_prices pr WHERE pr.stripe_price_id = s.price_id
    AND (pr.deleted OR EXISTS (SELECT 1 FROM stripe_products p WHERE p.stripe_product_id = pr.stripe_product_id)))`

// The unchanged rule, for every upsert of a Stripe snapshot here
// (subscriptions, invoices, products, prices, entitlement sets): a
// snapshot whose fields equal the stored ones writes nothing, so a second
// sync (or verify --repair) of an unchanged account rewrites no row. The
// one exception is an event's snapshot (source not "api") of a later
// second: it still advances source_time, because events alone carry
// Stripe's order; were an event of an unchanged state not to advance it,
// an older event of another state delivered after it would win. A read
// from the API of an unchanged state advances nothing: an older event
// delivered after such a read can only have been followed by the event
// that changed the state back, which is newer than it and restores the
// state once it arrives too (Stripe redelivers it; the sweeper recovers it
// when Stripe gives up).

// snapshot is a subscription as of a Stripe time, from a source (an event
// id, or "api" for an object read from Stripe's API, dated by the answer's
// Date header). settles, when set, is the stored row version a fetched
// snapshot was read to settle.
type snapshot struct {
	sub     *stripeapi.Subscription
	at      time.Time
	source  string
	settles string
}

// subscriptionWrite is a queued upsert of a snapshot, and what it did once
// its batch ran.
type subscriptionWrite struct {
	snapshot

	// view is the subscription as stored afterwards: the snapshot when it
	// was applied, the newer or terminal row when it was stale (once
	// settle has read it).
	view SubscriptionView
	// stale is set when the stored snapshot was kept: it is newer, terminal
	// or says the same (unchanged).
	stale bool
	// unchanged is set when the stored snapshot says what this one says.
	unchanged bool
	// stored is what settling needs of the stored row when this snapshot
	// was not written.
	stored storedSubscription
	// missingCatalog is set when the stored subscription's price, or its
	// product, is not stored: the caller reads them from Stripe once its
	// transaction committed (fillCatalog).
	missingCatalog bool
	// tie is set by settle when the stored snapshot has the same Stripe
	// time and different content: the order is unknown (see errTie).
	tie *tieError
}

// storedSubscription is the part of a stored row the paywall's view
// leaves out, and its Stripe time and row version.
type storedSubscription struct {
	trialEnd, periodStart *time.Time
	latestInvoice         string
	at                    time.Time
	version               string
}

// queueApplySubscription queues the upsert of snap.
func queueApplySubscription(b *pgx.Batch, snap snapshot) *subscriptionWrite {
	sub := snap.sub
	w := &subscriptionWrite{snapshot: snap, view: SubscriptionView{ID: sub.ID}}
	b.Queue(upsertSubscription, sub.ID, sub.CustomerID, sub.Status, nullString(sub.PriceID),
		nullTime(sub.CurrentPeriodEnd), sub.CancelAtPeriodEnd, snap.at, snap.source, nullString(snap.settles),
		nullTime(sub.TrialEnd), nullTime(sub.CurrentPeriodStart), nullString(sub.LatestInvoiceID)).Fn = func(br pgx.BatchResults) error {
		v := &w.view
		err := br.QueryRow().Scan(&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd, &w.missingCatalog)
		switch {
		case isNoRows(err):
			w.stale = true
		case err != nil:
			return fmt.Errorf("upsert subscription %s: %w", sub.ID, err)
		}
		return nil
	}
	return w
}

// settle reads, in the same transaction, the stored snapshot a stale upsert
// kept: the view, whether it was unchanged, and whether it ties with the
// one refused. It costs a round trip, paid only by snapshots that arrive
// out of order or say what is stored.
func (w *subscriptionWrite) settle(ctx context.Context, db DBTX) error {
	if !w.stale {
		return nil
	}
	const q = `SELECT status, coalesce(price_id, ''), current_period_end, cancel_at_period_end,
    trial_end, current_period_start, coalesce(latest_invoice, ''), source_time, xmin::text, ` + catalogMissing + `
FROM stripe_subscriptions s WHERE stripe_subscription_id = $1`
	v, st := &w.view, &w.stored
	if err := db.QueryRow(ctx, q, w.sub.ID).Scan(&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd,
		&st.trialEnd, &st.periodStart, &st.latestInvoice, &st.at, &st.version, &w.missingCatalog); err != nil {
		return fmt.Errorf("read subscription %s: %w", w.sub.ID, err)
	}
	w.judge()
	return nil
}

// judge decides, from the stored row a stale write kept, whether it was
// unchanged, or ties: the same Stripe time, different content.
func (w *subscriptionWrite) judge() {
	w.unchanged = sameSnapshot(w.view, w.stored, w.sub)
	if w.stored.at.Equal(w.at) && !stripeapi.Terminal(w.view.Status) && !w.unchanged {
		w.tie = &tieError{subscriptionID: w.sub.ID, storedVersion: w.stored.version}
	}
}

// maxSettles bounds how many times one write asks Stripe to settle a tie:
// each settling fetch is newer than the row it settles, so a second tie
// needs another writer storing a third snapshot of the same second in
// between, and a third is not worth waiting for: the write fails with
// ErrUnsettled (a 503: Stripe's redelivery, the sweeper or a replay tries
// again).
const maxSettles = 3

// settleTies runs write, and while it ends in a tie, fetches the
// subscription from Stripe (outside any transaction: write has returned)
// and runs write again with what Stripe says now, which replaces the
// stored row version that tied.
func (s *Service) settleTies(ctx context.Context, write func(fresh *snapshot) error) error {
	err := write(nil)
	for range maxSettles {
		var tie *tieError
		if !errors.As(err, &tie) {
			return err
		}
		sub, at, ferr := s.stripe.Subscription(ctx, tie.subscriptionID)
		if ferr != nil {
			return fmt.Errorf("settle same-second snapshots of subscription %s: %w", tie.subscriptionID, ferr)
		}
		s.log.InfoContext(ctx, "same-second subscription snapshots settled from the api",
			slog.String("subscription", tie.subscriptionID))
		err = write(&snapshot{sub: sub, at: at, source: "api", settles: tie.storedVersion})
	}
	var tie *tieError
	if errors.As(err, &tie) {
		return fmt.Errorf("%w: subscription %s, after %d reads from Stripe", ErrUnsettled, tie.subscriptionID, maxSettles)
	}
	return err
}

// sameSnapshot reports whether the stored row (v, st) says what s says,
// by the rules of upsertSubscription: a field s leaves empty keeps the
// stored one.
func sameSnapshot(v SubscriptionView, st storedSubscription, s *stripeapi.Subscription) bool {
	keep := func(stored string, other string) bool { return other == "" || stored == other }
	return v.Status == s.Status && keep(v.PriceID, s.PriceID) && v.CancelAtPeriodEnd == s.CancelAtPeriodEnd &&
		sameTime(v.CurrentPeriodEnd, s.CurrentPeriodEnd, true) && sameTime(st.periodStart, s.CurrentPeriodStart, true) &&
		sameTime(st.trialEnd, s.TrialEnd, false) && keep(st.latestInvoice, s.LatestInvoiceID)
}

// sameTime compares a stored time with a snapshot's (zero: none); with
// keep, a zero snapshot time keeps the stored one.
func sameTime(stored *time.Time, t time.Time, keep bool) bool {
	switch {
	case t.IsZero():
		return keep || stored == nil
	case stored == nil:
		return false
	}
	return stored.Equal(t)
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
