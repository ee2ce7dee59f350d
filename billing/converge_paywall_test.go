package billing

import (
	"slices"
	"testing"
	"time"

	"github.com/lockstep/lockstep/stripeapi"
)

// verify's diffs of the paywall's objects: what is drift and what is not.
func TestPaywallDiffs(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	later := t0.Add(time.Second)
	amount := int64(1500)
	other := int64(1)
	lines := func(cs []Change) []string {
		out := make([]string, len(cs))
		for i, c := range cs {
			out[i] = c.String()
		}
		return out
	}
	check := func(name string, got []Change, want ...string) {
		t.Helper()
		if g := lines(got); !slices.Equal(g, want) {
			t.Errorf("%s:\n got %q\nwant %q", name, g, want)
		}
	}
	pro := &stripeapi.Product{ID: "prod_1", Name: "Pro", Active: true}
	check("product equal", productDiff("prod_1", &storedProduct{name: "Pro", active: true, at: t0}, stripeapi.Dated[*stripeapi.Product]{Obj: pro, At: later}))
	check("product renamed", productDiff("prod_1", &storedProduct{name: "Old", active: true, at: t0}, stripeapi.Dated[*stripeapi.Product]{Obj: pro, At: later}),
		"product prod_1 name: stored Old, Stripe says Pro")
	check("stored product newer than the answer", productDiff("prod_1", &storedProduct{name: "Old", active: true, at: later},
		stripeapi.Dated[*stripeapi.Product]{Obj: pro, At: t0}))
	check("deleted product Stripe no longer answers", productDiff("prod_1", &storedProduct{name: "Pro", deleted: true, at: t0},
		stripeapi.Dated[*stripeapi.Product]{}))
	check("product Stripe does not have", productDiff("prod_1", &storedProduct{name: "Pro", active: true, at: t0},
		stripeapi.Dated[*stripeapi.Product]{}), "product prod_1: stored (present); Stripe has no such product")

	price := &stripeapi.Price{ID: "price_1", ProductID: "prod_1", LookupKey: "pro", Active: true, UnitAmount: &amount, Interval: "month"}
	check("price equal", priceDiff("price_1", &storedPrice{product: "prod_1", lookupKey: "pro", active: true, unitAmount: &amount,
		interval: "month", at: t0}, stripeapi.Dated[*stripeapi.Price]{Obj: price, At: later}))
	check("price drifted", priceDiff("price_1", &storedPrice{product: "prod_2", lookupKey: "", active: false, unitAmount: &other,
		interval: "year", at: t0}, stripeapi.Dated[*stripeapi.Price]{Obj: price, At: later}),
		"price price_1 product: stored prod_2, Stripe says prod_1",
		`price price_1 lookup_key: stored "", Stripe says pro`,
		"price price_1 active: stored false, Stripe says true",
		"price price_1 unit_amount: stored 1, Stripe says 1500",
		"price price_1 interval: stored year, Stripe says month")

	sso := stripeapi.Entitlement{FeatureID: "feat_sso", LookupKey: "sso"}
	api := stripeapi.Entitlement{FeatureID: "feat_api", LookupKey: "api"}
	stored := func(at time.Time, ents ...stripeapi.Entitlement) *storedEntitlements {
		s := &storedEntitlements{set: map[string]stripeapi.Entitlement{}, at: &at}
		for _, e := range ents {
			s.set[e.FeatureID] = e
		}
		return s
	}
	ents := func(at time.Time, e ...stripeapi.Entitlement) stripeapi.Dated[[]stripeapi.Entitlement] {
		return stripeapi.Dated[[]stripeapi.Entitlement]{Obj: e, At: at}
	}
	check("entitlements equal", entitlementsDiff("cus_1", stored(t0, sso, api), ents(later, api, sso)))
	check("a feature gained and one lost", entitlementsDiff("cus_1", stored(t0, api), ents(later, sso)),
		"entitlement cus_1 feature sso: stored (none), Stripe says granted",
		"entitlement cus_1 feature api: stored granted, Stripe says (none)")
	check("a feature renamed", entitlementsDiff("cus_1", stored(t0, stripeapi.Entitlement{FeatureID: "feat_sso", LookupKey: "saml"}), ents(later, sso)),
		"entitlement cus_1 feature sso: stored as saml, Stripe says sso")
	check("stored set newer than the answer", entitlementsDiff("cus_1", stored(later, api), ents(t0, sso)))
	check("set not read", entitlementsDiff("cus_1", stored(t0, api), stripeapi.Dated[[]stripeapi.Entitlement]{}))
	never := &storedEntitlements{set: map[string]stripeapi.Entitlement{}}
	check("never stored", entitlementsDiff("cus_1", never, ents(t0, sso)), "entitlement cus_1 feature sso: stored (none), Stripe says granted")

	// A repair mends a feature only when the re-read no longer finds it.
	gained := Change{Object: "entitlement", ID: "cus_1", Field: "feature", Stripe: "sso"}
	lost := Change{Object: "entitlement", ID: "cus_1", Field: "feature", Stored: "api"}
	if sameDrift(gained, lost) || !sameDrift(gained, gained) || !sameDrift(lost, lost) {
		t.Error("sameDrift does not tell two features of one customer apart")
	}
	if !sameDrift(Change{Object: "price", ID: "price_1", Field: "unit_amount", Stored: "1", Stripe: "1500"},
		Change{Object: "price", ID: "price_1", Field: "unit_amount", Stored: "1", Stripe: "1600"}) {
		t.Error("sameDrift: a field that still differs, with another value, is the same drift")
	}
}
