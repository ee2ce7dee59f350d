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
// terminal. A snapshot is newer when its Stripe time is later, or, for a
// snapshot fetched to settle a tie, when it is of the same second and the
// stored row is still the version that tied ($9). A terminal status
// (canceled, incomplete_expired) always wins and is never replaced,
// because Stripe never revives such a subscription. It returns the row
// stored, or nothing when the stored snapshot was kept.
const upsertSubscription = `
INSERT INTO stripe_subscriptions AS s (stripe_subscription_id, stripe_customer_id, status, price_id,
    current_period_end, cancel_at_period_end, source_time, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (stripe_subscription_id) DO UPDATE SET
    status = excluded.status,
    price_id = coalesce(excluded.price_id, s.price_id),
    current_period_end = coalesce(excluded.current_period_end, s.current_period_end),
    cancel_at_period_end = excluded.cancel_at_period_end,
    source_time = greatest(s.source_time, excluded.source_time),
    source = excluded.source,
    updated_at = now()
WHERE s.stripe_customer_id = excluded.stripe_customer_id
  AND s.status NOT IN ('canceled', 'incomplete_expired')
  AND (excluded.source_time > s.source_time
       OR excluded.status IN ('canceled', 'incomplete_expired')
       OR (excluded.source_time = s.source_time AND s.xmin::text = $9))
RETURNING status, coalesce(price_id, ''), current_period_end, cancel_at_period_end`

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
	// stale is set when the stored snapshot was kept.
	stale bool
	// tie is set by settle when the stored snapshot has the same Stripe
	// time and different content: the order is unknown (see errTie).
	tie *tieError
}

// queueApplySubscription queues the upsert of snap.
func queueApplySubscription(b *pgx.Batch, snap snapshot) *subscriptionWrite {
	sub := snap.sub
	w := &subscriptionWrite{snapshot: snap, view: SubscriptionView{ID: sub.ID}}
	b.Queue(upsertSubscription, sub.ID, sub.CustomerID, sub.Status, nullString(sub.PriceID),
		nullTime(sub.CurrentPeriodEnd), sub.CancelAtPeriodEnd, snap.at, snap.source, nullString(snap.settles)).Fn = func(br pgx.BatchResults) error {
		v := &w.view
		err := br.QueryRow().Scan(&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd)
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
// kept: the view, and whether it ties with the one refused. It costs a round
// trip, paid only by snapshots that arrive out of order.
func (w *subscriptionWrite) settle(ctx context.Context, db DBTX) error {
	if !w.stale {
		return nil
	}
	const q = `SELECT status, coalesce(price_id, ''), current_period_end, cancel_at_period_end, source_time, xmin::text
FROM stripe_subscriptions WHERE stripe_subscription_id = $1`
	var storedAt time.Time
	var version string
	v := &w.view
	if err := db.QueryRow(ctx, q, w.sub.ID).Scan(&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd,
		&storedAt, &version); err != nil {
		return fmt.Errorf("read subscription %s: %w", w.sub.ID, err)
	}
	if storedAt.Equal(w.at) && !stripeapi.Terminal(v.Status) && !sameSnapshot(*v, w.sub) {
		w.tie = &tieError{subscriptionID: w.sub.ID, storedVersion: version}
	}
	return nil
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

func sameSnapshot(v SubscriptionView, s *stripeapi.Subscription) bool {
	end := time.Time{}
	if v.CurrentPeriodEnd != nil {
		end = *v.CurrentPeriodEnd
	}
	return v.Status == s.Status && v.PriceID == s.PriceID && v.CancelAtPeriodEnd == s.CancelAtPeriodEnd &&
		end.Equal(s.CurrentPeriodEnd)
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
