package billing

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lockstep/lockstep/userid"
)

// SubscriptionView is a subscription as the paywall reads it.
type SubscriptionView struct {
	ID                string     `json:"id"`
	Status            string     `json:"status"`
	PriceID           string     `json:"price"`
	CurrentPeriodEnd  *time.Time `json:"current_period_end"`
	CancelAtPeriodEnd bool       `json:"cancel_at_period_end"`
}

// InvoiceView is an invoice as the app reads it.
type InvoiceView struct {
	ID             string `json:"id"`
	SubscriptionID string `json:"subscription,omitempty"`
	Status         string `json:"status"`
	AmountDue      int64  `json:"amount_due"`
	AmountPaid     int64  `json:"amount_paid"`
	Currency       string `json:"currency"`
}

// UserBillingView is everything lockstep knows of a user's billing.
type UserBillingView struct {
	UserID          string             `json:"user_id"`
	CustomerID      string             `json:"customer_id"`
	CustomerDeleted bool               `json:"customer_deleted"`
	Subscriptions   []SubscriptionView `json:"subscriptions"`
	Invoices        []InvoiceView      `json:"invoices"`
}

// userBillingQuery reads a consistent view in one statement and one round
// trip: the customer, its subscriptions, and its 20 latest invoices.
const userBillingQuery = `
SELECT c.stripe_customer_id, c.deleted,
  coalesce((SELECT json_agg(json_build_object(
        'id', s.stripe_subscription_id, 'status', s.status, 'price', coalesce(s.price_id, ''),
        'current_period_end', s.current_period_end, 'cancel_at_period_end', s.cancel_at_period_end)
        ORDER BY s.created_at, s.stripe_subscription_id)
     FROM stripe_subscriptions s WHERE s.stripe_customer_id = c.stripe_customer_id), '[]'),
  coalesce((SELECT json_agg(json_build_object(
        'id', i.stripe_invoice_id, 'subscription', coalesce(i.stripe_subscription_id, ''), 'status', i.status,
        'amount_due', i.amount_due, 'amount_paid', i.amount_paid, 'currency', i.currency)
        ORDER BY i.source_time DESC, i.stripe_invoice_id)
     FROM (SELECT * FROM stripe_invoices WHERE stripe_customer_id = c.stripe_customer_id
           ORDER BY source_time DESC, stripe_invoice_id LIMIT 20) i), '[]')
FROM stripe_customers c WHERE c.user_id = $1`

// UserBilling returns the user's customer, subscriptions and latest invoices.
// Events stored before the user was mapped show as soon as the mapping exists.
func (s *Service) UserBilling(ctx context.Context, userID string) (*UserBillingView, error) {
	if !userid.Valid(userID) {
		return nil, ErrUserNotFound
	}
	v := &UserBillingView{UserID: userID}
	var subs, invs []byte
	err := s.db.QueryRow(ctx, userBillingQuery, userID).Scan(&v.CustomerID, &v.CustomerDeleted, &subs, &invs)
	if isNoRows(err) {
		return nil, ErrUserNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read billing of user: %w", err)
	}
	if err := json.Unmarshal(subs, &v.Subscriptions); err != nil {
		return nil, fmt.Errorf("decode subscriptions: %w", err)
	}
	if err := json.Unmarshal(invs, &v.Invoices); err != nil {
		return nil, fmt.Errorf("decode invoices: %w", err)
	}
	return v, nil
}
