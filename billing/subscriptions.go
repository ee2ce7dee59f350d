package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

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
// because Stripe never revives such a subscription.
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
RETURNING true`

// applySubscription stores sub as of at (an event's created time, or the
// moment it was fetched). It returns errTie when the stored snapshot has the
// same time and different content.
func applySubscription(ctx context.Context, db DBTX, sub *stripeapi.Subscription, at time.Time, source string) (applied bool, err error) {
	var ok bool
	err = db.QueryRow(ctx, upsertSubscription, sub.ID, sub.CustomerID, sub.Status, nullString(sub.PriceID),
		nullTime(sub.CurrentPeriodEnd), sub.CancelAtPeriodEnd, at, source).Scan(&ok)
	if err == nil {
		return true, nil
	}
	if !isNoRows(err) {
		return false, fmt.Errorf("upsert subscription %s: %w", sub.ID, err)
	}
	const q = `SELECT status, coalesce(price_id, ''), current_period_end, cancel_at_period_end, source_time, source
FROM stripe_subscriptions WHERE stripe_subscription_id = $1`
	var st stripeapi.Subscription
	var end *time.Time
	var storedAt time.Time
	var storedSource string
	if err := db.QueryRow(ctx, q, sub.ID).Scan(&st.Status, &st.PriceID, &end, &st.CancelAtPeriodEnd, &storedAt, &storedSource); err != nil {
		return false, fmt.Errorf("read subscription %s: %w", sub.ID, err)
	}
	if end != nil {
		st.CurrentPeriodEnd = *end
	}
	if storedAt.Equal(at) && storedSource != source && !stripeapi.Terminal(st.Status) && !sameSnapshot(&st, sub) {
		return false, errTie
	}
	return false, nil // stale: the stored snapshot is newer or terminal
}

func sameSnapshot(a, b *stripeapi.Subscription) bool {
	return a.Status == b.Status && a.PriceID == b.PriceID && a.CancelAtPeriodEnd == b.CancelAtPeriodEnd &&
		a.CurrentPeriodEnd.Equal(b.CurrentPeriodEnd)
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
