package billing

import (
	"context"
	"fmt"
	"log/slog"
	"time"

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
  p.stripe_price_id IS NOT NULL, p.lookup_key, p.recurring_interval, p.stripe_product_id, pr.name
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
	for rows.Next() {
		var (
			customerID, subID, status, priceID *string
			liStatus, liURL, oiURL             *string
			cancel                             *bool
			storedAt                           *time.Time
			sub                                AccessSubscription
		)
		if err := rows.Scan(&in.Now, &customerID, &in.CustomerDeleted, &in.Features,
			&subID, &status, &cancel, &sub.CurrentPeriodStart, &sub.CurrentPeriodEnd, &sub.TrialEnd, &storedAt, &priceID,
			&liStatus, &liURL, &oiURL,
			&sub.PriceKnown, &sub.LookupKey, &sub.Interval, &sub.ProductID, &sub.ProductName); err != nil {
			return in, fmt.Errorf("read access inputs: %w", err)
		}
		in.CustomerID = strOrEmpty(customerID)
		if subID == nil {
			continue
		}
		sub.ID, sub.Status, sub.PriceID = *subID, strOrEmpty(status), strOrEmpty(priceID)
		sub.CancelAtPeriodEnd = cancel != nil && *cancel
		if storedAt != nil {
			sub.StoredAt = *storedAt
		}
		sub.LatestInvoiceStatus, sub.LatestInvoiceURL, sub.OpenInvoiceURL = strOrEmpty(liStatus), strOrEmpty(liURL), strOrEmpty(oiURL)
		in.Subscriptions = append(in.Subscriptions, sub)
	}
	if err := rows.Err(); err != nil {
		return in, fmt.Errorf("read access inputs: %w", err)
	}
	return in, nil
}

func strOrEmpty(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
