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
	"github.com/lockstep/lockstep/userid"
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
	if !userid.Valid(userID) {
		return nil, ErrInvalidUser
	}
	sess, fetchedAt, err := s.stripe.CheckoutSession(ctx, sessionID)
	if errors.Is(err, stripeapi.ErrNotFound) {
		return nil, ErrSessionNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read checkout session %s: %w", sessionID, err)
	}
	if sess.CustomerID != "" {
		ctx = logging.With(ctx, slog.String("customer", sess.CustomerID))
	}
	for _, u := range sess.ClaimedUsers() {
		if u != userID {
			return nil, ErrSessionOtherUser
		}
	}
	res := &CheckoutResult{SessionID: sess.ID, CustomerID: sess.CustomerID, Paid: sess.Paid()}
	switch {
	case sess.Status == "expired":
		return nil, ErrSessionExpired
	case sess.Status != "complete":
		return res, nil // nothing is Stripe's yet: the customer has not finished
	case sess.CustomerID == "":
		return res, nil // a one-off payment that created no customer: nothing to keep
	}
	// A complete session is stored whether paid or not: with a payment still
	// processing (a bank debit, 3-D Secure) the subscription Stripe made is
	// incomplete, and the paywall's answer must say "confirm the payment",
	// not "subscribe". The webhook stores the same session the same way.
	sub := sess.Subscription
	s.noteUnknownStatus(ctx, sub)
	if sub != nil && sub.CustomerID != sess.CustomerID {
		sub = nil // never write across customers under one lock
	}
	// Two snapshots of the same second (this read and an event's) settle
	// from the API, outside the lock.
	var missingPrice string
	err = s.settleTies(ctx, func(fresh *snapshot) error {
		var snap *snapshot
		switch {
		case fresh != nil:
			snap = fresh
		case sub != nil:
			snap = &snapshot{sub: sub, at: fetchedAt, source: "api"}
		}
		return s.locks.InCustomerTx(ctx, sess.CustomerID, lockmgr.Who{Writer: "checkout", Ref: sess.ID}, func(ctx context.Context, tx *lockmgr.Tx) error {
			var err error
			missingPrice, err = s.writeCheckout(ctx, tx, sess, userID, snap, res)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	s.fillCatalog(ctx, missingPrice) // the plan's name, read after the commit; never fails the call
	return res, nil
}

// writeCheckout is the success call's transaction, in tx holding the
// customer's lock, in two round trips at most: the customer row, the
// mapping read and snap (the session's subscription, or nil), behind BEGIN
// and the lock; then the mapping writes the rules decide, if any. A
// refusal rolls everything back. It fills res's mapping and subscription,
// and returns the subscription's price when lockstep has not stored its
// catalog yet.
func (s *Service) writeCheckout(ctx context.Context, tx *lockmgr.Tx, sess *stripeapi.CheckoutSession, userID string, snap *snapshot, res *CheckoutResult) (missingPrice string, err error) {
	res.Mapping, res.Subscription = "", nil
	b := &pgx.Batch{}
	queueEnsureCustomer(b, sess.CustomerID)
	found := queueReadLink(b, sess.CustomerID, userID)
	var sw *subscriptionWrite
	if snap != nil {
		sw = queueApplySubscription(b, *snap)
	}
	if err := tx.SendBatch(ctx, b); err != nil {
		return "", err
	}
	if sw != nil {
		if err := sw.settle(ctx, tx); err != nil {
			return "", err
		}
		if sw.tie != nil {
			return "", sw.tie
		}
		if sw.missingCatalog {
			missingPrice = sw.view.PriceID
		}
	}
	link, writes, err := decideLink(sess.CustomerID, userID, sess.Created, authoritativeLink, *found)
	if err != nil {
		return "", err
	}
	if len(writes) > 0 {
		b := &pgx.Batch{}
		queueLinkWrites(b, writes)
		if err := tx.SendBatch(ctx, b); err != nil {
			return "", err
		}
	}
	res.Mapping = link
	// A superseded customer is not the user's: nothing to show.
	if sw != nil && link != LinkSuperseded {
		v := sw.view
		res.Subscription = &v
	}
	return missingPrice, nil
}
