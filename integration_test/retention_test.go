package integration_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// prune ages every ledger row past 90 days and runs lockstep prune, as an
// operator (or serve's daily pass) would once the retention has passed.
func (b *bundle) pruneAll() string {
	b.t.Helper()
	if _, err := b.db.Pool.Exec(context.Background(), `
UPDATE stripe_events SET received_at = now() - interval '100 days', processed_at = now() - interval '100 days'
WHERE status <> 'failed'`); err != nil {
		b.t.Fatal(err)
	}
	var out bytes.Buffer
	env := app.Env{Getenv: func(k string) string { return map[string]string{"DATABASE_URL": b.db.URL}[k] },
		Stdout: &out, Stderr: io.Discard}
	if err := app.Run(context.Background(), []string{"prune", "--older-than", "90d"}, env); err != nil {
		b.t.Fatalf("prune: %v", err)
	}
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status <> 'failed'`); n != 0 {
		b.t.Fatalf("%d settled events left after prune: %s", n, out.String())
	}
	return strings.TrimSpace(out.String())
}

// redeliver posts an event the ledger no longer knows: it is processed
// again as new (not a duplicate), and must change nothing.
func (b *bundle) redeliver(what string, ev []byte) {
	b.t.Helper()
	r := b.postWebhook(ev)
	must200(b.t, what, r)
	if st := r.json(b.t)["status"]; st != "processed" {
		b.t.Fatalf("%s: status %v, want processed (the pruned ledger no longer knows it)", what, st)
	}
}

// A pruned event that Stripe delivers again is processed as new, and the
// snapshot ordering keeps it from regressing state: an older subscription
// or invoice snapshot never overwrites a newer one, a canceled subscription
// and a paid invoice are final, and the mapping is not moved.
func TestRetentionRedeliveredPrunedEventsDoNotRegress(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fx := b.paidCheckout(uniqueUser("retention"), time.Now().Add(-time.Hour).Truncate(time.Second))
	inv := stripefake.Invoice{ID: stripefake.NewID("in_"), Customer: fx.customer, Subscription: fx.subscription,
		Currency: "usd", AmountDue: 1900, Created: fx.created}
	invEvent := func(typ, status string, at time.Time) []byte {
		i := inv
		i.Status = status
		if status == "paid" {
			i.AmountPaid = i.AmountDue
		}
		return event(stripefake.NewID("evt_"), typ, at, stripefake.InvoiceJSON(i, stripefake.DefaultAPIVersion))
	}

	completed := sessionCompleted(fx, fx.created)
	created := subEvent(fx, "customer.subscription.created", "incomplete", fx.created.Add(1*time.Second))
	activated := subEvent(fx, "customer.subscription.updated", "active", fx.created.Add(10*time.Second))
	pastDue := subEvent(fx, "customer.subscription.updated", "past_due", fx.created.Add(20*time.Second))
	finalized := invEvent("invoice.finalized", "open", fx.created.Add(5*time.Second))
	failed := invEvent("invoice.payment_failed", "open", fx.created.Add(15*time.Second))
	paid := invEvent("invoice.paid", "paid", fx.created.Add(25*time.Second))
	for i, ev := range [][]byte{completed, created, activated, finalized, failed, pastDue, paid} {
		must200(t, "delivery "+string(rune('1'+i)), b.postWebhook(ev))
	}
	before := b.snapshot(fx.customer)
	if !strings.Contains(before, "past_due") || !strings.Contains(before, "paid") || !strings.Contains(before, fx.user) {
		t.Fatalf("setup did not store the newest state:\n%s", before)
	}

	t.Logf("%s", b.pruneAll())
	// Stripe delivers them all again, newest last, after the cut.
	for _, ev := range []struct {
		what string
		body []byte
	}{{"checkout.session.completed", completed}, {"subscription created (incomplete)", created},
		{"subscription updated (active)", activated}, {"invoice finalized (open)", finalized},
		{"invoice payment_failed (open)", failed}} {
		b.redeliver(ev.what, ev.body)
	}
	if after := b.snapshot(fx.customer); after != before {
		t.Fatalf("redelivered pruned events changed state:\nbefore %s\nafter  %s", before, after)
	}

	// Terminal: canceled, pruned, then an older active event again.
	must200(t, "deleted", b.postWebhook(subEvent(fx, "customer.subscription.deleted", "canceled", fx.created.Add(30*time.Second))))
	canceled := b.snapshot(fx.customer)
	t.Logf("%s", b.pruneAll())
	b.redeliver("subscription updated (past_due)", pastDue)
	b.redeliver("subscription updated (active)", activated)
	if after := b.snapshot(fx.customer); after != canceled {
		t.Fatalf("a redelivered pruned event revived a canceled subscription:\nbefore %s\nafter  %s", canceled, after)
	}
	if st := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); st != "canceled" {
		t.Fatalf("status %s, want canceled", st)
	}
}
