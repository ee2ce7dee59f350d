package billing

import (
	"context"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

// rowVersion is a row's version (xmin), which any write changes.
func rowVersion(t *testing.T, db *dbtest.DB, table, key, id string) string {
	t.Helper()
	var v string
	err := db.Pool.QueryRow(context.Background(),
		`SELECT xmin::text FROM `+table+` WHERE `+key+` = $1`, id).Scan(&v)
	if err != nil {
		t.Fatalf("read %s %s: %v", table, id, err)
	}
	return v
}

// The same snapshot applied twice, or a later read from the API that says
// the same, rewrites no row: the second sync of an unchanged account
// writes nothing. A changed snapshot still writes, and a newer event of
// the same state still advances the Stripe time.
func TestUnchangedSnapshotsWriteNothing(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	s := NewService(lockmgr.New(db.Pool, lockmgr.DefaultConfig(), nil, nil), nil, nil)
	at := time.Unix(1_800_000_000, 0).UTC()
	later := at.Add(time.Minute)
	amount := int64(900)

	sub := &stripeapi.Subscription{ID: "sub_same", CustomerID: "cus_same", Status: "trialing", PriceID: "price_same",
		CurrentPeriodStart: at, CurrentPeriodEnd: at.AddDate(0, 1, 0), TrialEnd: at.AddDate(0, 0, 14),
		LatestInvoiceID: "in_same"}
	inv := &stripeapi.Invoice{ID: "in_same", CustomerID: "cus_same", SubscriptionID: "sub_same", Status: "open",
		AmountDue: 900, Currency: "usd", HostedInvoiceURL: "https://invoice.stripe.com/i/in_same"}
	prod := &stripeapi.Product{ID: "prod_same", Name: "Pro", Active: true}
	price := &stripeapi.Price{ID: "price_same", ProductID: "prod_same", LookupKey: "pro_monthly", Active: true,
		Currency: "usd", UnitAmount: &amount, Interval: "month", IntervalCount: 1}
	ents := []stripeapi.Entitlement{{ID: "ent_1", FeatureID: "feat_1", LookupKey: "sso"}}
	o := ApplyOptions{Writer: "sync"}

	applyAll := func(when time.Time) {
		t.Helper()
		if _, err := s.ApplyProduct(ctx, stripeapi.Dated[*stripeapi.Product]{Obj: prod, At: when}, o); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyPrice(ctx, stripeapi.Dated[*stripeapi.Price]{Obj: price, At: when}, o); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplySubscription(ctx, stripeapi.Dated[*stripeapi.Subscription]{Obj: sub, At: when}, o); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyInvoice(ctx, stripeapi.Dated[*stripeapi.Invoice]{Obj: inv, At: when}, o); err != nil {
			t.Fatal(err)
		}
		if _, err := s.ApplyEntitlements(ctx, "cus_same", ents, when, o); err != nil {
			t.Fatal(err)
		}
	}
	rows := []struct{ table, key, id string }{
		{"stripe_products", "stripe_product_id", "prod_same"},
		{"stripe_prices", "stripe_price_id", "price_same"},
		{"stripe_subscriptions", "stripe_subscription_id", "sub_same"},
		{"stripe_invoices", "stripe_invoice_id", "in_same"},
		{"stripe_customers", "stripe_customer_id", "cus_same"},
		{"stripe_entitlements", "stripe_feature_id", "feat_1"},
	}
	versions := func() map[string]string {
		out := map[string]string{}
		for _, r := range rows {
			out[r.table] = rowVersion(t, db, r.table, r.key, r.id)
		}
		return out
	}

	applyAll(at)
	first := versions()
	applyAll(at)    // the same snapshot again
	applyAll(later) // a later read that says the same
	for table, v := range versions() {
		if v != first[table] {
			t.Errorf("%s row rewritten by an unchanged snapshot: %s -> %s", table, first[table], v)
		}
	}
	var stored string
	if err := db.Pool.QueryRow(ctx, `SELECT status || ' ' || trial_end::date::text || ' ' || current_period_start::date::text
    || ' ' || latest_invoice FROM stripe_subscriptions WHERE stripe_subscription_id = 'sub_same'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if want := "trialing 2027-01-29 2027-01-15 in_same"; stored != want {
		t.Errorf("subscription stored %q, want %q", stored, want)
	}
	var url string
	if err := db.Pool.QueryRow(ctx, `SELECT hosted_invoice_url FROM stripe_invoices WHERE stripe_invoice_id = 'in_same'`).Scan(&url); err != nil || url != inv.HostedInvoiceURL {
		t.Errorf("hosted_invoice_url = %q, %v", url, err)
	}

	// A change is written, and reported.
	changed := *sub
	changed.Status = "active"
	changes, err := s.ApplySubscription(ctx, stripeapi.Dated[*stripeapi.Subscription]{Obj: &changed, At: later}, o)
	if err != nil || len(changes) != 1 || changes[0].Field != "status" {
		t.Fatalf("changed status: changes %v, err %v", changes, err)
	}
	if v := rowVersion(t, db, "stripe_subscriptions", "stripe_subscription_id", "sub_same"); v == first["stripe_subscriptions"] {
		t.Error("a changed snapshot was not written")
	}
	// A change of a field only the next step reads is written and reported too.
	ended := changed
	ended.TrialEnd = later
	changes, err = s.ApplySubscription(ctx, stripeapi.Dated[*stripeapi.Subscription]{Obj: &ended, At: later.Add(time.Second)}, o)
	if err != nil || len(changes) != 1 || changes[0].Field != "trial_end" {
		t.Fatalf("changed trial_end: changes %v, err %v", changes, err)
	}
}

// decideEntitlements: an older set never wins, an unchanged one writes
// nothing unless an event's of a later second, a same-second different
// set ties unless it settles one.
func TestDecideEntitlements(t *testing.T) {
	t.Parallel()
	at := time.Unix(1_800_000_000, 0)
	a := []stripeapi.Entitlement{{ID: "ent_a", FeatureID: "feat_a", LookupKey: "a"}}
	b := []stripeapi.Entitlement{{ID: "ent_b", FeatureID: "feat_b", LookupKey: "b"}}
	stored := map[string]stripeapi.Entitlement{"feat_a": a[0]}
	for _, tc := range []struct {
		name     string
		storedAt *time.Time
		set      entitlementSet
		want     entitlementDecision
	}{
		{"nothing stored", nil, entitlementSet{ents: nil, at: at, source: "api"}, entWrite},
		{"older, different", &at, entitlementSet{ents: b, at: at.Add(-time.Second), source: "evt_1"}, entKeep},
		{"newer, different", &at, entitlementSet{ents: b, at: at.Add(time.Second), source: "api"}, entWrite},
		{"newer read, same", &at, entitlementSet{ents: a, at: at.Add(time.Second), source: "api"}, entKeep},
		{"newer event, same", &at, entitlementSet{ents: a, at: at.Add(time.Second), source: "evt_1"}, entWrite},
		{"same second, same", &at, entitlementSet{ents: a, at: at, source: "evt_1"}, entKeep},
		{"same second, different", &at, entitlementSet{ents: b, at: at, source: "evt_1"}, entTie},
		{"same second, settling", &at, entitlementSet{ents: b, at: at, source: "evt_1", settles: true}, entWrite},
	} {
		if got := decideEntitlements(tc.storedAt, stored, tc.set); got != tc.want {
			t.Errorf("%s: decision %d, want %d", tc.name, got, tc.want)
		}
	}
}

// A dry run of the catalog and entitlement writers reports what it would
// change and writes nothing; the real run then reports the same.
func TestCatalogDryRun(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	s := NewService(lockmgr.New(db.Pool, lockmgr.DefaultConfig(), nil, nil), nil, nil)
	at := time.Unix(1_800_000_000, 0).UTC()
	amount := int64(500)
	prod := stripeapi.Dated[*stripeapi.Product]{Obj: &stripeapi.Product{ID: "prod_dry", Name: "Dry", Active: true}, At: at}
	price := stripeapi.Dated[*stripeapi.Price]{Obj: &stripeapi.Price{ID: "price_dry", ProductID: "prod_dry", Active: true,
		Currency: "usd", UnitAmount: &amount, Interval: "month", IntervalCount: 1}, At: at}
	ents := []stripeapi.Entitlement{{ID: "ent_dry", FeatureID: "feat_dry", LookupKey: "dry"}}
	count := func() int {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM stripe_products) + (SELECT count(*) FROM stripe_prices)
    + (SELECT count(*) FROM stripe_entitlements)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, dry := range []bool{true, false} {
		o := ApplyOptions{Writer: "verify", DryRun: dry}
		pc, err := s.ApplyProduct(ctx, prod, o)
		if err != nil || len(pc) != 1 || pc[0].Object != "product" || pc[0].Field != "" {
			t.Fatalf("dry=%v product: %v, %v", dry, pc, err)
		}
		rc, err := s.ApplyPrice(ctx, price, o)
		if err != nil || len(rc) != 1 || rc[0].Object != "price" {
			t.Fatalf("dry=%v price: %v, %v", dry, rc, err)
		}
		ec, err := s.ApplyEntitlements(ctx, "cus_dry", ents, at, o)
		if err != nil || len(ec) != 1 || ec[0].Stripe != "dry" || ec[0].Stored != "" {
			t.Fatalf("dry=%v entitlements: %v, %v", dry, ec, err)
		}
		if n, want := count(), map[bool]int{true: 0, false: 3}[dry]; n != want {
			t.Fatalf("dry=%v: %d rows stored, want %d", dry, n, want)
		}
	}
	// Renamed, newer: one field change; an older snapshot: none.
	renamed := stripeapi.Dated[*stripeapi.Product]{Obj: &stripeapi.Product{ID: "prod_dry", Name: "Wet", Active: true}, At: at.Add(time.Second)}
	if c, err := s.ApplyProduct(ctx, renamed, ApplyOptions{DryRun: true}); err != nil || len(c) != 1 || c[0].Field != "name" {
		t.Fatalf("renamed, dry: %v, %v", c, err)
	}
	older := stripeapi.Dated[*stripeapi.Product]{Obj: &stripeapi.Product{ID: "prod_dry", Name: "Wet", Active: true}, At: at.Add(-time.Second)}
	if c, err := s.ApplyProduct(ctx, older, ApplyOptions{}); err != nil || len(c) != 0 {
		t.Fatalf("older: %v, %v", c, err)
	}
}
