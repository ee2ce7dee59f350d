package integration_test

import (
	"testing"
	"time"
)

// A subscription webhook whose status is one Stripe added later is
// answered 200, stored as Stripe names it and counted once on /metrics
// (a second delivery, a duplicate, is not counted again). Not parallel:
// the counter is the process's, so no other test moves it meanwhile.
func TestWebhookUnknownSubscriptionStatusCounted(t *testing.T) {
	b := setup(t)
	const status = "awaiting_approval"
	labels := map[string]string{"object": "subscription", "field": "status", "value": status}
	before, _ := scrapeMetrics(t, b).get("lockstep_stripe_unknown_enum_total", labels)

	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("unknown-status"), t0)
	ev := subEvent(fx, "customer.subscription.updated", status, t0)
	if r := b.postWebhook(ev); r.code != 200 || r.json(t)["status"] != "processed" {
		t.Fatalf("webhook with status %s: %d %s, want 200 processed", status, r.code, r.body)
	}
	if r := b.postWebhook(ev); r.code != 200 || r.json(t)["status"] != "duplicate" {
		t.Fatalf("second delivery: %d %s, want 200 duplicate", r.code, r.body)
	}
	if got := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); got != status {
		t.Fatalf("stored status %q, want %q", got, status)
	}
	after, ok := scrapeMetrics(t, b).get("lockstep_stripe_unknown_enum_total", labels)
	if !ok || after-before != 1 {
		t.Fatalf("lockstep_stripe_unknown_enum_total%v went %v -> %v (exported: %v), want one more", labels, before, after, ok)
	}
}
