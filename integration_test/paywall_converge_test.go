package integration_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// seedCatalog puts two products and three prices (price_0, price_1 and an
// inactive price_2, the plans seedAccount's subscriptions name) into the
// fake Stripe, and entitlements for the first two of customers: sso and api
// for the first, api for the second, none for the rest.
func seedCatalog(b *bundle, customers []string) {
	b.t.Helper()
	b.stripe.PutProduct(stripefake.Product{ID: "prod_pro", Name: "Pro"})
	b.stripe.PutProduct(stripefake.Product{ID: "prod_team", Name: "Team"})
	b.stripe.PutPrice(stripefake.Price{ID: "price_0", Product: "prod_pro", LookupKey: "pro_monthly", UnitAmount: 1500, Interval: "month"})
	b.stripe.PutPrice(stripefake.Price{ID: "price_1", Product: "prod_team", LookupKey: "team_yearly", UnitAmount: 90000, Interval: "year"})
	b.stripe.PutPrice(stripefake.Price{ID: "price_2", Product: "prod_pro", LookupKey: "pro_legacy", UnitAmount: 900, Interval: "month", Inactive: true})
	b.stripe.SetEntitlements(customers[0], stripefake.Entitlement{Feature: "feat_sso", LookupKey: "sso"},
		stripefake.Entitlement{Feature: "feat_api", LookupKey: "api"})
	b.stripe.SetEntitlements(customers[1], stripefake.Entitlement{Feature: "feat_api", LookupKey: "api"})
}

// assertCatalogStored checks the stored catalog and entitlement sets
// against what seedCatalog put into Stripe, with the test's own queries.
func (b *bundle) assertCatalogStored(customers []string) {
	b.t.Helper()
	want := map[string]string{
		"product prod_pro":  "Pro active=true deleted=false",
		"product prod_team": "Team active=true deleted=false",
		"price price_0":     "prod_pro pro_monthly active=true deleted=false usd 1500 month",
		"price price_1":     "prod_team team_yearly active=true deleted=false usd 90000 year",
		"price price_2":     "prod_pro pro_legacy active=false deleted=false usd 900 month",
		"ents 0":            "api,sso",
		"ents 1":            "api",
		"ents 2":            "",
	}
	got := map[string]string{
		"product prod_pro":  b.productRow("prod_pro"),
		"product prod_team": b.productRow("prod_team"),
		"price price_0":     b.priceRow("price_0"),
		"price price_1":     b.priceRow("price_1"),
		"price price_2":     b.priceRow("price_2"),
		"ents 0":            b.entitlementKeys(customers[0]),
		"ents 1":            b.entitlementKeys(customers[1]),
		"ents 2":            b.entitlementKeys(customers[2]),
	}
	for k, w := range want {
		if got[k] != w {
			b.t.Fatalf("stored %s: %q, Stripe says %q", k, got[k], w)
		}
	}
	if n := b.count(`SELECT count(*) FROM stripe_products`) + b.count(`SELECT count(*) FROM stripe_prices`); n != 5 {
		b.t.Fatalf("%d products and prices stored, want the 5 of Stripe", n)
	}
}

// sync stores the catalog (the inactive price too) and every customer's
// entitlements as Stripe has them; a dry run writes nothing; a second sync
// writes nothing. verify finds the store equal; a tampered product, price
// and entitlement set are each named (exit 3) and --repair mends them with
// one confirming read and one re-read per object, however many of its
// fields differ; verify --customer compares that customer's entitlements
// and leaves the catalog out.
func TestSyncVerifyCatalogAndEntitlements(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	a := seedAccount(b, 3)
	var customers []string
	for id := range a.customers {
		customers = append(customers, id)
	}
	// Stripe grants entitlements through subscriptions: the customers with
	// a live subscription first (seedCatalog gives the first two features),
	// the one whose subscription is canceled last (none; sync does not read
	// it, as it has no subscription that can grant access and nothing stored).
	canceled := map[string]bool{}
	for _, s := range a.subs {
		canceled[s.Customer] = s.Status == "canceled"
	}
	slices.SortFunc(customers, func(x, y string) int {
		if canceled[x] != canceled[y] {
			if canceled[x] {
				return 1
			}
			return -1
		}
		return strings.Compare(x, y)
	})
	if canceled[customers[0]] || canceled[customers[1]] || !canceled[customers[2]] {
		t.Fatalf("seedAccount(3) should cancel exactly one subscription: %v", canceled)
	}
	seedCatalog(b, customers)

	// 2 products + 3 prices + 3 customers + 3 subscriptions + 6 invoices;
	// no customer is stored yet, so no entitlement set is read.
	out, code := b.cli(ctx, nil, "sync", "--dry-run")
	if code != 0 || !strings.Contains(out, "read 17, would write 17,") ||
		!strings.Contains(out, "would write: product prod_pro: not stored; Stripe has it (present)") {
		t.Fatalf("dry run: exit %d, want 17 objects announced, the catalog among them:\n%s", code, out)
	}
	for _, table := range []string{"stripe_products", "stripe_prices", "stripe_customers", "stripe_entitlements", "stripe_sync_runs"} {
		if n := b.count(`SELECT count(*) FROM ` + table); n != 0 {
			t.Fatalf("dry run wrote %d rows to %s", n, table)
		}
	}

	// ... and the entitlement sets of the 2 customers whose subscription
	// can grant access.
	out, code = b.cli(ctx, nil, "sync")
	if code != 0 || !strings.Contains(out, "sync done: read 19, wrote 19,") {
		t.Fatalf("sync: exit %d, want 19 read and 19 written:\n%s", code, out)
	}
	b.assertCatalogStored(customers)
	b.assertStoredEquals(a)
	if plan := b.scalar(`SELECT pr.name FROM stripe_subscriptions s JOIN stripe_prices p ON p.stripe_price_id = s.price_id
JOIN stripe_products pr ON pr.stripe_product_id = p.stripe_product_id WHERE s.stripe_customer_id = $1`, customers[0]); plan == "" {
		t.Fatal("a synced subscription's plan has no stored product")
	}
	out, code = b.cli(ctx, nil, "sync")
	if code != 0 || !strings.Contains(out, "sync done: read 19, wrote 0,") {
		t.Fatalf("second sync: exit %d, want nothing written:\n%s", code, out)
	}

	before := b.stripe.Requests()
	out, code = b.cli(ctx, nil, "verify")
	equalReads := b.stripe.Requests() - before
	if code != 0 || !strings.Contains(out, "equals Stripe's") {
		t.Fatalf("verify after sync: exit %d, want 0:\n%s", code, out)
	}

	// Tamper: a product renamed and deactivated (2 fields), a price with
	// another lookup key, amount and interval (3 fields), a customer who
	// lost sso and gained a feature Stripe never granted (2 features).
	for _, q := range []string{
		`UPDATE stripe_products SET name = 'Hacked', active = false WHERE stripe_product_id = 'prod_pro'`,
		`UPDATE stripe_prices SET lookup_key = 'wrong', unit_amount = 1, recurring_interval = 'week' WHERE stripe_price_id = 'price_0'`,
		`DELETE FROM stripe_entitlements WHERE stripe_customer_id = '` + customers[0] + `' AND lookup_key = 'sso'`,
		`INSERT INTO stripe_entitlements (stripe_customer_id, stripe_feature_id, lookup_key) VALUES ('` + customers[0] + `', 'feat_foreign', 'foreign')`,
	} {
		if _, err := b.db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// Stripe's answers from now on are later than the stored snapshots
	// (as they are when a store drifts after a sync, not within its
	// second).
	b.stripe.SetClockOffset(2 * time.Second)
	drift := []string{
		"drift: product prod_pro name: stored Hacked, Stripe says Pro",
		"drift: product prod_pro active: stored false, Stripe says true",
		"drift: price price_0 lookup_key: stored wrong, Stripe says pro_monthly",
		"drift: price price_0 unit_amount: stored 1, Stripe says 1500",
		"drift: price price_0 interval: stored week, Stripe says month",
		"drift: entitlement " + customers[0] + " feature sso: stored (none), Stripe says granted",
		"drift: entitlement " + customers[0] + " feature foreign: stored granted, Stripe says (none)",
	}
	before = b.stripe.Requests()
	out, code = b.cli(ctx, nil, "verify")
	confirmReads := b.stripe.Requests() - before - equalReads
	if code != 3 || strings.Count(out, "drift: ") != len(drift) {
		t.Fatalf("verify of a tampered store: exit %d, want 3 and %d differences:\n%s", code, len(drift), out)
	}
	for _, want := range drift {
		if !strings.Contains(out, want) {
			t.Fatalf("verify output lacks %q:\n%s", want, out)
		}
	}
	if confirmReads != 3 {
		t.Fatalf("verify confirmed 3 drifted objects with %d extra Stripe reads, want 3 (one each)", confirmReads)
	}
	if got := b.scalar(`SELECT found::text FROM stripe_verify_runs ORDER BY id DESC LIMIT 1`); !strings.Contains(got, `"entitlement.feature": 2`) ||
		!strings.Contains(got, `"price.lookup_key": 1`) || !strings.Contains(got, `"product.name": 1`) {
		t.Fatalf("the verify run's counts: %s, want entitlement.feature 2, price.lookup_key 1, product.name 1", got)
	}

	before = b.stripe.Requests()
	out, code = b.cli(ctx, nil, "verify", "--repair")
	repairReads := b.stripe.Requests() - before - equalReads
	if code != 0 || strings.Count(out, "mended: ") != len(drift) {
		t.Fatalf("verify --repair: exit %d, want 0 and %d mended:\n%s", code, len(drift), out)
	}
	if !strings.Contains(out, "mended: entitlement "+customers[0]+" feature sso: stored (none), Stripe says granted") {
		t.Fatalf("verify --repair does not name the mended feature:\n%s", out)
	}
	// One confirming read and one re-read after the repair per object (3
	// objects): 6, where a repair per drifted field would read 3 + 7.
	t.Logf("verify --repair of 3 objects with 7 drifted fields: %d Stripe reads beyond an equal verify's %d", repairReads, equalReads)
	if repairReads != 6 {
		t.Fatalf("verify --repair made %d Stripe reads beyond an equal verify's, want 6 (2 per drifted object)", repairReads)
	}
	b.assertCatalogStored(customers)
	if out, code := b.cli(ctx, nil, "verify"); code != 0 || !strings.Contains(out, "equals Stripe's") {
		t.Fatalf("verify after repair: exit %d, want 0:\n%s", code, out)
	}
	m := scrapeMetrics(t, b)
	if found, repaired := m.val("lockstep_drift_found_total", "object", "entitlement", "field", "feature"),
		m.val("lockstep_drift_repaired_total", "object", "entitlement", "field", "feature"); found != 4 || repaired != 2 {
		t.Fatalf("entitlement drift metrics: found %v repaired %v, want 4 (two runs found 2 each) and 2", found, repaired)
	}

	// One customer: its entitlements are compared, the catalog is not.
	for _, q := range []string{
		`UPDATE stripe_products SET name = 'Again' WHERE stripe_product_id = 'prod_team'`,
		`DELETE FROM stripe_entitlements WHERE stripe_customer_id = '` + customers[1] + `'`,
	} {
		if _, err := b.db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	out, code = b.cli(ctx, nil, "verify", "--customer", customers[1])
	if code != 3 || strings.Count(out, "drift: ") != 1 ||
		!strings.Contains(out, "drift: entitlement "+customers[1]+" feature api: stored (none), Stripe says granted") {
		t.Fatalf("verify --customer: exit %d, want 3 and that customer's lost feature only:\n%s", code, out)
	}
	out, code = b.cli(ctx, nil, "sync", "--customer", customers[1])
	if code != 0 || b.entitlementKeys(customers[1]) != "api" || b.productRow("prod_team") != "Again active=true deleted=false" {
		t.Fatalf("sync --customer: exit %d, want the customer's entitlements back and the catalog left alone:\n%s", code, out)
	}
}

// A sync of one customer does not list the catalog (it is the account's),
// yet the customer's plan is stored: the price its subscription names is
// read from Stripe after the write, as for a webhook.
func TestSyncOneCustomerFillsItsPlan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := seedAccount(b, 2)
	var customers []string
	for id := range a.customers {
		customers = append(customers, id)
	}
	slices.Sort(customers)
	seedCatalog(b, customers)
	var cus, price string
	for _, s := range a.subs {
		if s.Status != "canceled" {
			cus, price = s.Customer, s.PriceID
		}
	}
	if out, code := b.cli(context.Background(), nil, "sync", "--customer", cus); code != 0 {
		t.Fatalf("sync --customer: exit %d:\n%s", code, out)
	}
	plan := b.scalar(`SELECT coalesce((SELECT pr.name FROM stripe_subscriptions s
JOIN stripe_prices p ON p.stripe_price_id = s.price_id JOIN stripe_products pr ON pr.stripe_product_id = p.stripe_product_id
WHERE s.stripe_customer_id = $1), '')`, cus)
	if plan == "" {
		t.Fatalf("after sync --customer %s, its subscription's price %s has no stored plan", cus, price)
	}
	if n := b.count(`SELECT count(*) FROM stripe_prices`); n != 1 {
		t.Fatalf("%d prices stored, want only the one the customer's subscription names", n)
	}
}
