package integration_test

import (
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// A subscription's events delivered in any order end at the newest event's
// state.
func TestOrderingAnyDeliveryOrderEndsAtNewest(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		fx := b.paidCheckout(uniqueUser("order"), time.Now().Add(-time.Hour).Truncate(time.Second))
		statuses := []string{"incomplete", "active", "past_due", "active", "trialing", "past_due"}
		var events [][]byte
		for i, st := range statuses {
			events = append(events, subEvent(fx, "customer.subscription.updated", st, fx.created.Add(time.Duration(i)*time.Second)))
		}
		rng.Shuffle(len(events), func(i, j int) { events[i], events[j] = events[j], events[i] })
		for _, ev := range events {
			must200(t, "webhook", b.postWebhook(ev))
		}
		if st := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); st != statuses[len(statuses)-1] {
			t.Fatalf("round %d: status %s, want the newest %s", round, st, statuses[len(statuses)-1])
		}
	}
}

// A canceled subscription is never brought back by a late event.
func TestOrderingCanceledIsFinal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fx := b.paidCheckout(uniqueUser("cancel"), time.Now().Add(-time.Hour).Truncate(time.Second))
	must200(t, "deleted", b.postWebhook(subEvent(fx, "customer.subscription.deleted", "canceled", fx.created.Add(10*time.Second))))
	must200(t, "late update", b.postWebhook(subEvent(fx, "customer.subscription.updated", "active", fx.created.Add(5*time.Second))))
	must200(t, "late resumed", b.postWebhook(subEvent(fx, "customer.subscription.resumed", "active", fx.created.Add(20*time.Second))))
	if st := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); st != "canceled" {
		t.Fatalf("status %s, want canceled", st)
	}
	// The success call's fresh read does not revive it either.
	b.stripe.PutSubscription(fx.subObj("active"))
	must200(t, "success", b.checkout(fx.session, fx.user))
	if st := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); st != "canceled" {
		t.Fatalf("status %s after success call, want canceled", st)
	}
}

// A late, older event arriving after the success call synced newer state
// changes nothing.
func TestOrderingOldEventAfterSuccessChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fx := b.paidCheckout(uniqueUser("late"), time.Now().Add(-10*time.Minute).Truncate(time.Second))
	must200(t, "success", b.checkout(fx.session, fx.user))
	before := b.snapshot(fx.customer)
	r := b.postWebhook(subEvent(fx, "customer.subscription.created", "incomplete", fx.created))
	must200(t, "late created event", r)
	if after := b.snapshot(fx.customer); after != before {
		t.Fatalf("late event changed state:\nbefore %s\nafter  %s", before, after)
	}
	// It is still recorded as processed: Stripe must not retry it.
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'processed'`); n != 1 {
		t.Fatalf("processed events = %d, want 1", n)
	}
}

// Events created in the same second with different content: the order is
// unknown, so lockstep asks Stripe (outside the lock) and stores what it says,
// whatever order the events came in.
func TestOrderingSameSecondTieAsksStripe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for round, order := range [][]string{{"past_due", "active"}, {"active", "past_due"}} {
		fx := b.paidCheckout(uniqueUser("tie"), time.Now().Add(-time.Hour).Truncate(time.Second))
		b.stripe.PutSubscription(fx.subObj("past_due")) // what Stripe says now
		second := fx.created.Add(time.Minute)
		before := b.stripe.Requests()
		for _, st := range order {
			must200(t, "tied event", b.postWebhook(subEvent(fx, "customer.subscription.updated", st, second)))
		}
		if st := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); st != "past_due" {
			t.Fatalf("round %d (%v): status %s, want Stripe's past_due", round, order, st)
		}
		if b.stripe.Requests() == before {
			t.Fatalf("round %d: the tie was settled without asking Stripe", round)
		}
	}
}

// Subscription and invoice events can come before anything says whose the
// customer is: they are kept, and the user sees them once mapped.
func TestEventsBeforeMappingAreKept(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fx := b.paidCheckout(uniqueUser("early"), time.Now().Add(-time.Hour).Truncate(time.Second))
	inv := stripefake.Invoice{ID: stripefake.NewID("in_"), Customer: fx.customer, Subscription: fx.subscription,
		Status: "paid", Currency: "eur", AmountDue: 4200, AmountPaid: 4200, Created: fx.created}
	must200(t, "subscription", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", fx.created)))
	must200(t, "invoice", b.postWebhook(event(stripefake.NewID("evt_"), "invoice.paid", fx.created,
		stripefake.InvoiceJSON(inv, stripefake.DefaultAPIVersion))))
	if code, _ := b.userBilling(fx.user); code != http.StatusNotFound {
		t.Fatalf("billing before mapping: %d, want 404", code)
	}
	must200(t, "session completed", b.postWebhook(sessionCompleted(fx, fx.created.Add(time.Second))))
	code, v := b.userBilling(fx.user)
	if code != http.StatusOK || v.CustomerID != fx.customer {
		t.Fatalf("billing after mapping: %d %+v", code, v)
	}
	if len(v.Subscriptions) != 1 || v.Subscriptions[0].Status != "active" {
		t.Fatalf("subscriptions %+v, want the early active one", v.Subscriptions)
	}
	if len(v.Invoices) != 1 || v.Invoices[0].ID != inv.ID || v.Invoices[0].AmountPaid != 4200 || v.Invoices[0].Status != "paid" {
		t.Fatalf("invoices %+v, want the early paid one", v.Invoices)
	}
}
