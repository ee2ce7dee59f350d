package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/stripeapi"
)

// CheckoutResult is what the checkout-success call reports to the web app.
type CheckoutResult struct {
	SessionID    string            `json:"session_id"`
	Paid         bool              `json:"paid"`
	CustomerID   string            `json:"customer_id,omitempty"`
	Mapping      LinkResult        `json:"mapping,omitempty"`
	Subscription *SubscriptionView `json:"subscription,omitempty"`
}

// SyncCheckout is the success page's call: it reads the session from Stripe
// first, then, under the customer's lock, writes the customer, the user's
// mapping and the subscription, whether or not the webhook got there first.
// It is the user's own, authoritative word: it may re-point the user from an
// older customer, but never takes a customer mapped to someone else.
func (s *Service) SyncCheckout(ctx context.Context, sessionID, userID string) (*CheckoutResult, error) {
	if !stripeapi.ValidUserID(userID) {
		return nil, ErrInvalidUser
	}
	sess, err := s.stripe.CheckoutSession(ctx, sessionID)
	if errors.Is(err, stripeapi.ErrNotFound) {
		return nil, ErrSessionNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read checkout session %s: %w", sessionID, err)
	}
	fetchedAt := s.fetchTime()
	if sess.CustomerID != "" {
		ctx = logging.With(ctx, slog.String("customer", sess.CustomerID))
	}
	for _, u := range sess.ClaimedUsers() {
		if u != userID {
			return nil, ErrSessionOtherUser
		}
	}
	res := &CheckoutResult{SessionID: sess.ID, CustomerID: sess.CustomerID}
	switch {
	case sess.Status == "expired":
		return nil, ErrSessionExpired
	case !sess.Paid():
		return res, nil
	}
	res.Paid = true
	if sess.CustomerID == "" {
		return res, nil // a one-off payment that created no customer: nothing to keep
	}
	sub := sess.Subscription
	if sub != nil && sub.CustomerID != sess.CustomerID {
		sub = nil // never write across customers under one lock
	}
	err = s.locks.InCustomerTx(ctx, sess.CustomerID, lockmgr.Who{Writer: "checkout", Ref: sess.ID}, func(ctx context.Context, tx pgx.Tx) error {
		if err := ensureCustomer(ctx, tx, sess.CustomerID); err != nil {
			return err
		}
		link, err := linkUser(ctx, tx, sess.CustomerID, userID, sess.Created, authoritativeLink)
		if err != nil {
			return err
		}
		res.Mapping = link
		if sub != nil {
			v, err := applySubscription(ctx, tx, sub, fetchedAt, "api")
			if err != nil && !errors.Is(err, errTie) {
				return err
			}
			if link != LinkSuperseded { // a superseded customer is not the user's: nothing to show
				res.Subscription = &v
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}
