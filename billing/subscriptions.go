package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/stripeapi"
)

// errTie means a subscription snapshot has the same Stripe time as the one
// stored but different content: the order of two events created in the same
// second is unknown. The processor settles it by fetching the subscription
// from Stripe, outside the lock, and storing what Stripe says now.
var errTie = errors.New("subscription snapshot ties with the stored one")

// upsertSubscription stores a snapshot unless the stored one is newer or
// terminal. A snapshot is newer when its Stripe time is later; a terminal
// status (canceled, incomplete_expired) always wins and is never replaced,
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
  AND (excluded.source_time > s.source_time OR excluded.status IN ('canceled', 'incomplete_expired'))
RETURNING status, coalesce(price_id, ''), current_period_end, cancel_at_period_end`

// subscriptionWrite is a queued upsert of sub as of at from source, and
// what it did once its batch ran.
type subscriptionWrite struct {
	sub    *stripeapi.Subscription
	at     time.Time
	source string

	// view is the subscription as stored afterwards: the snapshot when it
	// was applied, the newer or terminal row when it was stale (once
	// settle has read it).
	view SubscriptionView
	// stale is set when the stored snapshot was kept.
	stale bool
	// tie is set by settle when the stored snapshot has the same Stripe
	// time and different content: the order is unknown (see errTie).
	tie bool
}

// queueApplySubscription queues the upsert of sub as of at (an event's
// created time, or the moment it was fetched) from source (the event id,
// or "api").
func queueApplySubscription(b *pgx.Batch, sub *stripeapi.Subscription, at time.Time, source string) *subscriptionWrite {
	w := &subscriptionWrite{sub: sub, at: at, source: source, view: SubscriptionView{ID: sub.ID}}
	b.Queue(upsertSubscription, sub.ID, sub.CustomerID, sub.Status, nullString(sub.PriceID),
		nullTime(sub.CurrentPeriodEnd), sub.CancelAtPeriodEnd, at, source).Fn = func(br pgx.BatchResults) error {
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
	const q = `SELECT status, coalesce(price_id, ''), current_period_end, cancel_at_period_end, source_time, source
FROM stripe_subscriptions WHERE stripe_subscription_id = $1`
	var storedAt time.Time
	var storedSource string
	v := &w.view
	if err := db.QueryRow(ctx, q, w.sub.ID).Scan(&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd,
		&storedAt, &storedSource); err != nil {
		return fmt.Errorf("read subscription %s: %w", w.sub.ID, err)
	}
	w.tie = storedAt.Equal(w.at) && storedSource != w.source && !stripeapi.Terminal(v.Status) && !sameSnapshot(*v, w.sub)
	return nil
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
