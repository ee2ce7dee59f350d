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
RETURNING status, coalesce(price_id, ''), current_period_end, cancel_at_period_end`

// applySubscription stores sub as of at (an event's created time, or the
// moment it was fetched) and returns the subscription as stored afterwards:
// sub when it was applied, the newer or terminal row when it was stale. It
// returns errTie when the stored snapshot has the same time and different
// content.
func applySubscription(ctx context.Context, db DBTX, sub *stripeapi.Subscription, at time.Time, source string) (SubscriptionView, error) {
	v := SubscriptionView{ID: sub.ID}
	err := db.QueryRow(ctx, upsertSubscription, sub.ID, sub.CustomerID, sub.Status, nullString(sub.PriceID),
		nullTime(sub.CurrentPeriodEnd), sub.CancelAtPeriodEnd, at, source).
		Scan(&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd)
	if err == nil {
		return v, nil
	}
	if !isNoRows(err) {
		return v, fmt.Errorf("upsert subscription %s: %w", sub.ID, err)
	}
	const q = `SELECT status, coalesce(price_id, ''), current_period_end, cancel_at_period_end, source_time, source
FROM stripe_subscriptions WHERE stripe_subscription_id = $1`
	var storedAt time.Time
	var storedSource string
	if err := db.QueryRow(ctx, q, sub.ID).Scan(&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd,
		&storedAt, &storedSource); err != nil {
		return v, fmt.Errorf("read subscription %s: %w", sub.ID, err)
	}
	if storedAt.Equal(at) && storedSource != source && !stripeapi.Terminal(v.Status) && !sameSnapshot(v, sub) {
		return v, errTie
	}
	return v, nil // stale: the stored snapshot is newer or terminal
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
