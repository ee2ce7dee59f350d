package integration_test

// Stripe's clock orders Stripe's snapshots, never lockstep's: an object read
// from the API is dated by the answer's Date header, so an event Stripe
// creates after the read always wins and an older event delivered after the
// read never does, however far lockstep's clock is from Stripe's.

import (
	"fmt"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

func TestStripeClockOrdersSnapshots(t *testing.T) {
	t.Parallel()
	for _, skew := range []time.Duration{4 * time.Second, -4 * time.Second, 0} {
		t.Run(fmt.Sprintf("stripe %+v", skew), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.stripe.SetClockOffset(skew)
			for round := range 8 {
				// An event created after the success call's read wins, even in
				// the same second as the read.
				fx := b.paidCheckout(uniqueUser("clock"), b.stripe.Now().Add(-time.Minute).Truncate(time.Second))
				b.stripe.PutSubscription(fx.subObj("incomplete"))
				must200(t, "success", b.checkout(fx.session, fx.user))
				if st := b.subStatus(fx.subscription); st != "incomplete" {
					t.Fatalf("round %d: after the success call %s, want incomplete", round, st)
				}
				b.stripe.PutSubscription(fx.subObj("active"))
				_, payload := b.stripe.Emit("customer.subscription.updated",
					stripefake.SubscriptionJSON(fx.subObj("active"), stripefake.DefaultAPIVersion))
				must200(t, "newer event", b.postWebhook(payload))
				if st := b.subStatus(fx.subscription); st != "active" {
					t.Fatalf("round %d: an event created after the read left the subscription %s, want active", round, st)
				}

				// An event created before the read (in the same second, and a
				// few seconds before) and delivered after it changes nothing.
				fx = b.paidCheckout(uniqueUser("clock"), b.stripe.Now().Add(-time.Minute).Truncate(time.Second))
				older := stripefake.EventJSON(stripefake.NewID("evt_"), "customer.subscription.updated",
					b.stripe.Now().Add(-3*time.Second), stripefake.DefaultAPIVersion,
					stripefake.SubscriptionJSON(fx.subObj("past_due"), stripefake.DefaultAPIVersion))
				_, sameSecond := b.stripe.Emit("customer.subscription.updated",
					stripefake.SubscriptionJSON(fx.subObj("incomplete"), stripefake.DefaultAPIVersion))
				b.stripe.PutSubscription(fx.subObj("active"))
				must200(t, "success", b.checkout(fx.session, fx.user))
				must200(t, "same-second older event", b.postWebhook(sameSecond))
				must200(t, "older event", b.postWebhook(older))
				if st := b.subStatus(fx.subscription); st != "active" {
					t.Fatalf("round %d: an event older than the read left the subscription %s, want active", round, st)
				}
			}
		})
	}
}

func (b *bundle) subStatus(id string) string {
	b.t.Helper()
	return b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, id)
}
