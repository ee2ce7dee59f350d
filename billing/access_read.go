package billing

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/userid"
)

// AccessQuery gathers everything Decide reads, in one statement and one
// round trip, with the database's clock of that statement: a grace period
// ends on time with no event, and every replica agrees on when. It answers
// one row per subscription of the user's customer, or one row of NULLs
// after now when the user has no customer or the customer no subscription.
// The invoice URLs are read only for the statuses whose next step links to
// an invoice. Decide sorts the features itself.
const AccessQuery = `
SELECT n.now, c.stripe_customer_id, coalesce(c.deleted, false),
  ARRAY(SELECT e.lookup_key FROM stripe_entitlements e WHERE e.stripe_customer_id = c.stripe_customer_id),
  s.stripe_subscription_id, s.status, s.cancel_at_period_end, s.current_period_start,
  s.current_period_end, s.trial_end, s.created_at, s.price_id,
  li.status, li.hosted_invoice_url, oi.hosted_invoice_url,
  p.stripe_price_id IS NOT NULL, p.lookup_key, p.recurring_interval, nullif(p.stripe_product_id, ''), pr.name
FROM (SELECT now() AS now) n
LEFT JOIN stripe_customers c ON c.user_id = $1
LEFT JOIN stripe_subscriptions s ON s.stripe_customer_id = c.stripe_customer_id
LEFT JOIN stripe_invoices li ON li.stripe_invoice_id = s.latest_invoice
  AND s.status IN ('past_due', 'incomplete', 'unpaid')
LEFT JOIN LATERAL (
  SELECT i.hosted_invoice_url FROM stripe_invoices i
  WHERE s.status IN ('past_due', 'incomplete', 'unpaid')
    AND i.stripe_customer_id = c.stripe_customer_id
    AND i.stripe_subscription_id = s.stripe_subscription_id
    AND i.status = 'open' AND i.hosted_invoice_url IS NOT NULL
  ORDER BY i.source_time DESC, i.stripe_invoice_id DESC LIMIT 1) oi ON true
LEFT JOIN stripe_prices p ON p.stripe_price_id = s.price_id
LEFT JOIN stripe_products pr ON pr.stripe_product_id = p.stripe_product_id`

// SetPastDueGrace sets ACCESS_PAST_DUE_GRACE for the access read; call it
// before serving.
func (s *Service) SetPastDueGrace(d time.Duration) { s.pastDueGrace = d }

// Access reads the user's paywall decision (ReadAccess with the
// service's ACCESS_PAST_DUE_GRACE). A denied decision is logged at debug
// level with its state and reason; the customer and the state join the
// request's access-log line. Neither names the person.
func (s *Service) Access(ctx context.Context, userID, feature string) (*Access, error) {
	a, err := ReadAccess(ctx, s.db, userID, feature, s.pastDueGrace)
	if err != nil {
		return nil, err
	}
	if a.CustomerID != "" {
		ctx = logging.With(ctx, slog.String("customer", a.CustomerID), slog.String("access_state", a.State))
	} else {
		ctx = logging.With(ctx, slog.String("access_state", a.State))
	}
	if !a.Access {
		s.log.DebugContext(ctx, "access denied", slog.String("state", a.State), slog.String("reason", a.Reason))
	}
	return a, nil
}

// ReadAccess reads the user's paywall decision from what is stored, with
// the database's clock (no Stripe call): one statement, then Decide.
// feature, when not "", is a feature key to answer for; grace is
// ACCESS_PAST_DUE_GRACE. An unknown user is not an error: its state is
// none.
func ReadAccess(ctx context.Context, db DBTX, userID, feature string, grace time.Duration) (*Access, error) {
	if !userid.Valid(userID) {
		return nil, ErrInvalidUser
	}
	if feature != "" {
		if err := CheckFeatureKey(feature); err != nil {
			return nil, err
		}
	}
	in, err := ReadAccessInputs(ctx, db, userID)
	if err != nil {
		return nil, err
	}
	in.PastDueGrace, in.Feature = grace, feature
	return Decide(in), nil
}

// ReadAccessInputs runs AccessQuery for userID (PastDueGrace and Feature
// are left for the caller).
func ReadAccessInputs(ctx context.Context, db DBTX, userID string) (AccessInputs, error) {
	in := AccessInputs{UserID: userID}
	rows, err := db.Query(ctx, AccessQuery, userID)
	if err != nil {
		return in, fmt.Errorf("read access inputs: %w", err)
	}
	defer rows.Close()
	// The row's destinations are pgtype values in one struct, scanned
	// through one slice: pgx plans each column's scan on every query, and
	// pointer-to-pointer destinations cost it a reflected allocation per
	// column (two thirds of the read's allocations).
	r := new(accessRow)
	dest := r.dest(&in.Features)
	for rows.Next() {
		*r = accessRow{}
		if err := rows.Scan(dest...); err != nil {
			return in, fmt.Errorf("read access inputs: %w", err)
		}
		sub, err := r.inputs(&in)
		if err != nil {
			return in, fmt.Errorf("read access inputs: %w", err)
		}
		if sub != nil {
			in.Subscriptions = append(in.Subscriptions, *sub)
		}
	}
	if err := rows.Err(); err != nil {
		return in, fmt.Errorf("read access inputs: %w", err)
	}
	return in, nil
}

// accessRow is one row of AccessQuery as scanned (the features go straight
// to AccessInputs.Features).
type accessRow struct {
	now                                        pgtype.Timestamptz
	customerID                                 pgtype.Text
	deleted                                    pgtype.Bool
	subID, status                              pgtype.Text
	cancel                                     pgtype.Bool
	periodStart, periodEnd, trialEnd, storedAt pgtype.Timestamptz
	priceID, liStatus, liURL, oiURL            pgtype.Text
	priceKnown                                 pgtype.Bool
	lookupKey, interval, productID, name       pgtype.Text
}

// dest is the row's destinations in AccessQuery's column order.
func (r *accessRow) dest(features *[]string) []any {
	return []any{&r.now, &r.customerID, &r.deleted, features,
		&r.subID, &r.status, &r.cancel, &r.periodStart, &r.periodEnd, &r.trialEnd, &r.storedAt, &r.priceID,
		&r.liStatus, &r.liURL, &r.oiURL,
		&r.priceKnown, &r.lookupKey, &r.interval, &r.productID, &r.name}
}

// inputs sets in's clock and customer from the row and returns its
// subscription (nil when the row has none).
func (r *accessRow) inputs(in *AccessInputs) (*AccessSubscription, error) {
	now, err := timeOrNil(r.now, "now")
	if err != nil {
		return nil, err
	}
	if now != nil {
		in.Now = *now
	}
	in.CustomerID, in.CustomerDeleted = r.customerID.String, r.deleted.Bool
	if !r.subID.Valid {
		return nil, nil
	}
	sub := &AccessSubscription{ID: r.subID.String, Status: r.status.String, PriceID: r.priceID.String,
		CancelAtPeriodEnd:   r.cancel.Valid && r.cancel.Bool,
		LatestInvoiceStatus: r.liStatus.String, LatestInvoiceURL: r.liURL.String, OpenInvoiceURL: r.oiURL.String,
		PriceKnown: r.priceKnown.Bool,
		LookupKey:  textOrNil(r.lookupKey), Interval: textOrNil(r.interval), ProductID: textOrNil(r.productID), ProductName: textOrNil(r.name)}
	for _, t := range []struct {
		v    pgtype.Timestamptz
		to   **time.Time
		name string
	}{{r.periodStart, &sub.CurrentPeriodStart, "current_period_start"}, {r.periodEnd, &sub.CurrentPeriodEnd, "current_period_end"},
		{r.trialEnd, &sub.TrialEnd, "trial_end"}} {
		if *t.to, err = timeOrNil(t.v, t.name); err != nil {
			return nil, err
		}
	}
	stored, err := timeOrNil(r.storedAt, "created_at")
	if err != nil {
		return nil, err
	}
	if stored != nil {
		sub.StoredAt = *stored
	}
	return sub, nil
}

// timeOrNil is a scanned timestamptz as a *time.Time (nil for NULL); an
// infinite one is an error, as pgx's scan into a time.Time makes it.
func timeOrNil(t pgtype.Timestamptz, column string) (*time.Time, error) {
	switch {
	case !t.Valid:
		return nil, nil
	case t.InfinityModifier != pgtype.Finite:
		return nil, fmt.Errorf("%s is %v, not a time", column, t.InfinityModifier)
	}
	v := t.Time
	return &v, nil
}

func textOrNil(t pgtype.Text) *string {
	if !t.Valid {
		return nil
	}
	s := t.String
	return &s
}
