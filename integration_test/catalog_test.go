package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// productRow is a stored product, as one string.
func (b *bundle) productRow(id string) string {
	b.t.Helper()
	return b.scalar(`SELECT name || ' active=' || active || ' deleted=' || deleted FROM stripe_products
WHERE stripe_product_id = $1`, id)
}

func (b *bundle) priceRow(id string) string {
	b.t.Helper()
	return b.scalar(`SELECT stripe_product_id || ' ' || coalesce(lookup_key, '-') || ' active=' || active ||
    ' deleted=' || deleted || ' ' || currency || ' ' || coalesce(unit_amount::text, '-') || ' ' ||
    coalesce(recurring_interval, '-') FROM stripe_prices WHERE stripe_price_id = $1`, id)
}

// entitlementKeys is the customer's stored features, sorted.
func (b *bundle) entitlementKeys(customer string) string {
	b.t.Helper()
	return b.scalar(`SELECT coalesce(string_agg(lookup_key, ',' ORDER BY lookup_key), '') FROM stripe_entitlements
WHERE stripe_customer_id = $1`, customer)
}

func (b *bundle) ledgerStatus(eventID string) string {
	b.t.Helper()
	return b.scalar(`SELECT status || ' attempts=' || attempts FROM stripe_events WHERE event_id = $1`, eventID)
}

// Every catalog event type is stored from its webhook, once, and its
// ledger row says processed; a duplicate delivery changes nothing.
func TestCatalogEventsStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	prod := stripefake.Product{ID: stripefake.NewID("prod_"), Name: "Pro"}
	price := stripefake.Price{ID: stripefake.NewID("price_"), Product: prod.ID, LookupKey: "pro_monthly",
		UnitAmount: 1200, Interval: "month"}

	steps := []struct {
		typ  string
		obj  map[string]any
		want func() (string, string)
	}{
		{"product.created", stripefake.ProductJSON(prod), func() (string, string) { return b.productRow(prod.ID), "Pro active=true deleted=false" }},
		{"price.created", stripefake.PriceJSON(price), func() (string, string) {
			return b.priceRow(price.ID), prod.ID + " pro_monthly active=true deleted=false usd 1200 month"
		}},
		{"product.updated", stripefake.ProductJSON(stripefake.Product{ID: prod.ID, Name: "Pro Plus", Inactive: true}), func() (string, string) {
			return b.productRow(prod.ID), "Pro Plus active=false deleted=false"
		}},
		{"price.updated", stripefake.PriceJSON(stripefake.Price{ID: price.ID, Product: prod.ID, LookupKey: "pro_v2",
			UnitAmount: 1200, Interval: "month", Inactive: true}), func() (string, string) {
			return b.priceRow(price.ID), prod.ID + " pro_v2 active=false deleted=false usd 1200 month"
		}},
		{"price.deleted", stripefake.PriceJSON(stripefake.Price{ID: price.ID, Product: prod.ID, LookupKey: "pro_v2",
			UnitAmount: 1200, Interval: "month", Inactive: true}), func() (string, string) {
			return b.priceRow(price.ID), prod.ID + " pro_v2 active=false deleted=true usd 1200 month"
		}},
		{"product.deleted", stripefake.ProductJSON(stripefake.Product{ID: prod.ID, Name: "Pro Plus", Inactive: true}), func() (string, string) {
			return b.productRow(prod.ID), "Pro Plus active=false deleted=true"
		}},
	}
	for i, st := range steps {
		id := stripefake.NewID("evt_")
		payload := event(id, st.typ, base.Add(time.Duration(i)*time.Second), st.obj)
		must200(t, st.typ, b.postWebhook(payload))
		if got, want := st.want(); got != want {
			t.Fatalf("after %s: stored %q, want %q", st.typ, got, want)
		}
		must200(t, st.typ+" again", b.postWebhook(payload))
		if got := b.ledgerStatus(id); got != "processed attempts=1" {
			t.Errorf("%s ledger: %s, want processed once", st.typ, got)
		}
	}
}

// A product event delivered late, older than the stored snapshot, never
// wins; a deletion stays deleted, whatever comes after it.
func TestCatalogLateOlderEventLoses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	id := stripefake.NewID("prod_")
	post := func(typ, name string, at time.Time) {
		t.Helper()
		must200(t, typ, b.postWebhook(event(stripefake.NewID("evt_"), typ, at,
			stripefake.ProductJSON(stripefake.Product{ID: id, Name: name}))))
	}
	post("product.updated", "Newer", base.Add(10*time.Second))
	post("product.created", "Older", base) // delivered late
	if got := b.productRow(id); got != "Newer active=true deleted=false" {
		t.Fatalf("after a late older event: %q, want the newer snapshot kept", got)
	}
	// Same second: the one delivered second does not replace an equal-time
	// active snapshot.
	post("product.updated", "Same second", base.Add(10*time.Second))
	if got := b.productRow(id); got != "Newer active=true deleted=false" {
		t.Fatalf("same-second update replaced the stored one: %q", got)
	}
	post("product.deleted", "Newer", base.Add(5*time.Second)) // a deletion, even an older one, wins
	post("product.updated", "Revived?", base.Add(time.Minute))
	if got := b.productRow(id); got != "Newer active=false deleted=true" {
		t.Fatalf("after a deletion and a later update: %q, want deleted", got)
	}
}

// An entitlement summary replaces the customer's set; a truncated one
// (has_more) ends with the whole set read from Stripe; an older summary
// never wins; a duplicate is applied once.
func TestEntitlementSummaries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cus := stripefake.NewID("cus_")
	b.stripe.PutCustomer(stripefake.Customer{ID: cus})
	ent := func(keys ...string) []stripefake.Entitlement {
		out := make([]stripefake.Entitlement, len(keys))
		for i, k := range keys {
			out[i] = stripefake.Entitlement{Feature: "feat_" + k, LookupKey: k}
		}
		return out
	}
	base := b.stripe.Now().Add(-time.Hour).Truncate(time.Second)

	first := event(stripefake.NewID("evt_"), "entitlements.active_entitlement_summary.updated", base,
		stripefake.EntitlementSummaryJSON(cus, ent("export", "sso"), 0))
	must200(t, "summary", b.postWebhook(first))
	must200(t, "summary again", b.postWebhook(first))
	if got := b.entitlementKeys(cus); got != "export,sso" {
		t.Fatalf("after the summary: %q", got)
	}
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE type = 'entitlements.active_entitlement_summary.updated' AND attempts = 1 AND status = 'processed'`); n != 1 {
		t.Fatalf("%d processed ledger rows, want the one event once", n)
	}

	// Truncated: the event carries 2 of 5; Stripe's list has all 5.
	before := b.stripe.Requests()
	_, truncated := b.stripe.UpdateEntitlements(cus, 2, ent("a", "b", "c", "d", "e")...)
	if !strings.Contains(string(truncated), `"has_more": true`) {
		t.Fatalf("the fake's summary is not truncated:\n%s", truncated)
	}
	must200(t, "truncated summary", b.postWebhook(truncated))
	if got := b.entitlementKeys(cus); got != "a,b,c,d,e" {
		t.Fatalf("after a truncated summary: %q, want the whole set", got)
	}
	if b.stripe.Requests() == before {
		t.Fatal("the truncated summary was stored without reading the whole set")
	}

	// Older than the stored set: loses.
	older := event(stripefake.NewID("evt_"), "entitlements.active_entitlement_summary.updated", base.Add(time.Minute),
		stripefake.EntitlementSummaryJSON(cus, ent("stale"), 0))
	must200(t, "older summary", b.postWebhook(older))
	if got := b.entitlementKeys(cus); got != "a,b,c,d,e" {
		t.Fatalf("after an older summary: %q, want the newer set kept", got)
	}

	// Empty: the customer has no entitlements left.
	_, empty := b.stripe.UpdateEntitlements(cus, 0)
	must200(t, "empty summary", b.postWebhook(empty))
	if got := b.entitlementKeys(cus); got != "" {
		t.Fatalf("after an empty summary: %q, want none", got)
	}
}

// A subscription whose price lockstep has not stored gets the price and
// its product read from Stripe after its transaction, shortly; a price
// Stripe does not know leaves the webhook answered 200.
func TestUnknownPriceFilledFromStripe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	prod := stripefake.Product{ID: stripefake.NewID("prod_"), Name: "Team"}
	price := stripefake.Price{ID: stripefake.NewID("price_"), Product: prod.ID, LookupKey: "team_yearly",
		UnitAmount: 9900, Interval: "year"}
	b.stripe.PutProduct(prod)
	b.stripe.PutPrice(price)
	fx := b.paidCheckout(uniqueUser("fill"), time.Now().Add(-time.Hour).Truncate(time.Second))
	fx.price = price.ID
	b.stripe.PutSubscription(fx.subObj("active"))

	must200(t, "subscription event", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", fx.created)))
	dbtest.WaitFor(t, "the price and product stored", 5*time.Second, func() (bool, string) {
		var p, n int
		_ = b.db.Pool.QueryRow(context.Background(), `SELECT
    (SELECT count(*) FROM stripe_prices WHERE stripe_price_id = $1),
    (SELECT count(*) FROM stripe_products WHERE stripe_product_id = $2)`, price.ID, prod.ID).Scan(&p, &n)
		return p == 1 && n == 1, fmt.Sprintf("%d price(s), %d product(s)", p, n)
	})
	if got := b.priceRow(price.ID); got != prod.ID+" team_yearly active=true deleted=false usd 9900 year" {
		t.Errorf("price stored as %q", got)
	}
	if got := b.productRow(prod.ID); got != "Team active=true deleted=false" {
		t.Errorf("product stored as %q", got)
	}

	// A price Stripe has no trace of: the webhook still succeeds.
	other := b.paidCheckout(uniqueUser("nofill"), time.Now().Add(-time.Hour).Truncate(time.Second))
	other.price = stripefake.NewID("price_")
	must200(t, "subscription with an unknown price", b.postWebhook(subEvent(other, "customer.subscription.created", "active", other.created)))
	if got := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, other.subscription); got != "active" {
		t.Errorf("subscription with an unknown price: %q", got)
	}
}

// The fields the paywall's next step reads are stored from events: a
// subscription's trial_end, current_period_start and latest_invoice, in
// either API shape; an invoice's hosted_invoice_url from each invoice event
// type. A status Stripe adds later is stored as Stripe names it.
func TestSubscriptionAndInvoiceFieldsStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, version := range []string{stripefake.DefaultAPIVersion, stripefake.BasilAPIVersion} {
		fx := b.paidCheckout(uniqueUser("fields"), time.Now().Add(-time.Hour).Truncate(time.Second))
		start := fx.created.Add(24 * time.Hour)
		trial := fx.created.Add(14 * 24 * time.Hour)
		inv := stripefake.NewID("in_")
		sub := fx.subObj("trialing")
		sub.CurrentPeriodStart, sub.TrialEnd, sub.LatestInvoice = start, trial, inv
		payload := stripefake.EventJSON(stripefake.NewID("evt_"), "customer.subscription.created", fx.created, version,
			stripefake.SubscriptionJSON(sub, version))
		must200(t, version, b.postWebhook(payload))
		got := b.scalar(`SELECT status || ' ' || extract(epoch FROM trial_end)::bigint || ' ' ||
        extract(epoch FROM current_period_start)::bigint || ' ' || latest_invoice
    FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription)
		if want := fmt.Sprintf("trialing %d %d %s", trial.Unix(), start.Unix(), inv); got != want {
			t.Errorf("%s: subscription stored %q, want %q", version, got, want)
		}

		for i, typ := range []string{"invoice.finalized", "invoice.payment_action_required", "invoice.payment_failed", "invoice.paid"} {
			id := stripefake.NewID("in_")
			status := map[string]string{"invoice.paid": "paid"}[typ]
			if status == "" {
				status = "open"
			}
			obj := stripefake.InvoiceJSON(stripefake.Invoice{ID: id, Customer: fx.customer, Subscription: fx.subscription,
				Status: status, AmountDue: 500, Created: fx.created}, version)
			must200(t, typ, b.postWebhook(stripefake.EventJSON(stripefake.NewID("evt_"), typ,
				fx.created.Add(time.Duration(i)*time.Second), version, obj)))
			if got := b.scalar(`SELECT hosted_invoice_url FROM stripe_invoices WHERE stripe_invoice_id = $1`, id); got != "https://invoice.stripe.com/i/"+id {
				t.Errorf("%s %s: hosted_invoice_url %q", version, typ, got)
			}
		}

		// A status Stripe adds later.
		later := fx.subObj("awaiting_approval")
		r := b.postWebhook(stripefake.EventJSON(stripefake.NewID("evt_"), "customer.subscription.updated",
			fx.created.Add(time.Minute), version, stripefake.SubscriptionJSON(later, version)))
		if r.code != http.StatusOK {
			t.Fatalf("%s: a new status got %d: %s", version, r.code, r.body)
		}
		if got := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); got != "awaiting_approval" {
			t.Errorf("%s: new status stored as %q", version, got)
		}
	}
}

// The sweeper recovers a missed catalog event and a missed entitlement
// summary, like any other.
func TestSweepRecoversCatalogEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	prod := stripefake.Product{ID: stripefake.NewID("prod_"), Name: "Missed"}
	b.stripe.UpdateProduct(prod, "product.created") // never delivered
	cus := stripefake.NewID("cus_")
	b.stripe.PutCustomer(stripefake.Customer{ID: cus})
	b.stripe.UpdateEntitlements(cus, 1, stripefake.Entitlement{Feature: "feat_x", LookupKey: "x"},
		stripefake.Entitlement{Feature: "feat_y", LookupKey: "y"}) // never delivered, truncated
	if out, err := b.command(context.Background(), "sweep", "--since", "1h"); err != nil {
		t.Fatalf("sweep: %v\n%s", err, out)
	}
	if got := b.productRow(prod.ID); got != "Missed active=true deleted=false" {
		t.Errorf("missed product: %q", got)
	}
	if got := b.entitlementKeys(cus); got != "x,y" {
		t.Errorf("missed entitlement summary: %q", got)
	}
}

// Deliveries racing for the catalog: the same product event delivered
// eight times at once is processed once, and snapshots of one price
// delivered at once in any order end at the newest.
func TestCatalogConcurrentDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	prod := stripefake.Product{ID: stripefake.NewID("prod_"), Name: "Raced"}
	id := stripefake.NewID("evt_")
	payload := event(id, "product.created", base, stripefake.ProductJSON(prod))
	codes := make([]int, 8)
	fns := make([]func(), len(codes))
	for i := range fns {
		fns[i] = func() { codes[i] = b.postWebhook(payload).code }
	}
	concurrently(fns...)
	for i, c := range codes {
		if c != http.StatusOK {
			t.Fatalf("delivery %d: %d", i, c)
		}
	}
	if got := b.ledgerStatus(id); got != "processed attempts=1" {
		t.Fatalf("ledger after 8 racing deliveries: %s, want processed once", got)
	}

	price := stripefake.NewID("price_")
	fns = fns[:0]
	for i := range 8 {
		p := stripefake.Price{ID: price, Product: prod.ID, LookupKey: fmt.Sprintf("v%d", i), UnitAmount: 100, Interval: "month"}
		ev := event(stripefake.NewID("evt_"), "price.updated", base.Add(time.Duration(i)*time.Second), stripefake.PriceJSON(p))
		fns = append(fns, func() { must200(t, "price event", b.postWebhook(ev)) })
	}
	concurrently(fns...)
	if got := b.scalar(`SELECT lookup_key FROM stripe_prices WHERE stripe_price_id = $1`, price); got != "v7" {
		t.Fatalf("after racing price events: lookup_key %q, want the newest (v7)", got)
	}
}

// Two different summaries of the same second: their order is unknown, so
// lockstep reads the customer's set from Stripe and stores what Stripe
// says now.
func TestEntitlementSameSecondSettledFromStripe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cus := stripefake.NewID("cus_")
	b.stripe.PutCustomer(stripefake.Customer{ID: cus})
	at := b.stripe.Now().Add(-time.Hour).Truncate(time.Second)
	summary := func(keys ...string) []byte {
		ents := make([]stripefake.Entitlement, len(keys))
		for i, k := range keys {
			ents[i] = stripefake.Entitlement{Feature: "feat_" + k, LookupKey: k}
		}
		return event(stripefake.NewID("evt_"), "entitlements.active_entitlement_summary.updated", at,
			stripefake.EntitlementSummaryJSON(cus, ents, 0))
	}
	b.stripe.SetEntitlements(cus, stripefake.Entitlement{Feature: "feat_now", LookupKey: "now"})
	must200(t, "first", b.postWebhook(summary("one")))
	if got := b.entitlementKeys(cus); got != "one" {
		t.Fatalf("first summary: %q", got)
	}
	before := b.stripe.Requests()
	must200(t, "same second", b.postWebhook(summary("two")))
	if got := b.entitlementKeys(cus); got != "now" {
		t.Fatalf("after two same-second summaries: %q, want Stripe's set now", got)
	}
	if b.stripe.Requests() == before {
		t.Fatal("the tie was settled without asking Stripe")
	}
	// Stripe's set is now stored, dated by Stripe's answer: a summary of
	// the earlier second is older, and asks nothing.
	before = b.stripe.Requests()
	must200(t, "same again", b.postWebhook(summary("now")))
	if b.stripe.Requests() != before {
		t.Fatal("an older summary asked Stripe")
	}
}
