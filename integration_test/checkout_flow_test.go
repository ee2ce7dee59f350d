package integration_test

import (
	"net/http"
	"testing"
	"time"
)

// assertPaidUser checks what the paywall shows after a paid checkout: the
// user maps to the one customer, whose subscription is active.
func assertPaidUser(t *testing.T, b *bundle, fx fixture) {
	t.Helper()
	if n := b.count(`SELECT count(*) FROM stripe_customers WHERE stripe_customer_id = $1`, fx.customer); n != 1 {
		t.Fatalf("customer rows = %d, want 1", n)
	}
	code, v := b.userBilling(fx.user)
	if code != http.StatusOK {
		t.Fatalf("billing for %s: status %d", fx.user, code)
	}
	if v.CustomerID != fx.customer {
		t.Fatalf("user maps to %q, want %q", v.CustomerID, fx.customer)
	}
	if len(v.Subscriptions) != 1 || v.Subscriptions[0].ID != fx.subscription || v.Subscriptions[0].Status != "active" {
		t.Fatalf("subscriptions = %+v, want %s active", v.Subscriptions, fx.subscription)
	}
	if v.Subscriptions[0].PriceID != fx.price || v.Subscriptions[0].CurrentPeriodEnd == nil {
		t.Fatalf("subscription = %+v, want price %s and a period end", v.Subscriptions[0], fx.price)
	}
}

// The bug users hit today: the webhooks win the race, then the success page
// asks for the same session and must not fail on a duplicate customer.
func TestWebhookFirstThenSuccess(t *testing.T) {
	t.Parallel()
	b := setup(t)
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("webhook-first"), now)

	must200(t, "checkout.session.completed", b.postWebhook(sessionCompleted(fx, now)))
	must200(t, "customer.subscription.created", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", now)))

	r := b.checkout(fx.session, fx.user)
	must200(t, "checkout success", r)
	if got := r.json(t)["redirect"]; got != "/dashboard" {
		t.Fatalf("redirect = %v, want /dashboard", got)
	}
	assertPaidUser(t, b, fx)
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'processed'`); n != 2 {
		t.Fatalf("processed ledger rows = %d, want 2", n)
	}
}

func TestSuccessFirstThenWebhooks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("success-first"), now)

	r := b.checkout(fx.session, fx.user)
	must200(t, "checkout success", r)
	if got := r.json(t)["redirect"]; got != "/dashboard" {
		t.Fatalf("redirect = %v, want /dashboard", got)
	}
	if sub, _ := r.json(t)["subscription"].(map[string]any); sub["id"] != fx.subscription || sub["status"] != "active" || sub["price"] != fx.price {
		t.Fatalf("answer's subscription = %v, want %s active on %s", sub, fx.subscription, fx.price)
	}
	assertPaidUser(t, b, fx)

	for _, ev := range [][]byte{
		sessionCompleted(fx, now),
		subEvent(fx, "customer.subscription.created", "active", now),
	} {
		r := b.postWebhook(ev)
		must200(t, "webhook", r)
		if st := r.json(t)["status"]; st != "processed" {
			t.Fatalf("webhook status = %v, want processed", st)
		}
	}
	assertPaidUser(t, b, fx)
}
