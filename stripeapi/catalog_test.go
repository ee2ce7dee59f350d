package stripeapi_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/stripeapi"
)

// ActiveEntitlements reads every page of a customer's set, in one request
// per page, an empty set in one request dated by its answer.
func TestActiveEntitlementsPages(t *testing.T) {
	t.Parallel()
	fake := stripefake.New(t)
	var requests atomic.Int32
	fake.SetOnRequest(func(*http.Request) { requests.Add(1) })
	c := stripeapi.NewClient(fake.URL, "sk_test_catalog", stripeapi.Options{})
	ctx := context.Background()

	ents, at, err := c.ActiveEntitlements(ctx, "cus_empty")
	if err != nil || len(ents) != 0 || at.IsZero() {
		t.Fatalf("empty set: %v, %v, %v", ents, at, err)
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("empty set: %d requests, want 1 (no extra read to date it)", n)
	}

	var set []stripefake.Entitlement
	for i := range 250 {
		set = append(set, stripefake.Entitlement{Feature: "feat_" + string(rune('a'+i%26)) + string(rune('a'+i/26)), LookupKey: "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))})
	}
	fake.SetEntitlements("cus_many", set...)
	requests.Store(0)
	ents, at, err = c.ActiveEntitlements(ctx, "cus_many")
	if err != nil || len(ents) != 250 || at.IsZero() {
		t.Fatalf("250 entitlements: %d, %v, %v", len(ents), at, err)
	}
	if n := requests.Load(); n != 3 {
		t.Fatalf("250 entitlements: %d requests, want 3 pages", n)
	}
	for i, e := range ents {
		if e.FeatureID != set[i].Feature || e.LookupKey != set[i].LookupKey {
			t.Fatalf("entitlement %d: %+v, want %+v", i, e, set[i])
		}
	}
	if _, _, err := c.ActiveEntitlements(ctx, "not a customer"); !errors.Is(err, stripeapi.ErrNotFound) {
		t.Fatalf("bad id: %v", err)
	}
}

// Products and prices are read and listed, active and inactive, from the
// fake's shapes.
func TestCatalogReads(t *testing.T) {
	t.Parallel()
	fake := stripefake.New(t)
	c := stripeapi.NewClient(fake.URL, "sk_test_catalog", stripeapi.Options{})
	ctx := context.Background()
	fake.PutProduct(stripefake.Product{ID: "prod_a", Name: "A"})
	fake.PutProduct(stripefake.Product{ID: "prod_b", Name: "B", Inactive: true})
	fake.PutProduct(stripefake.Product{ID: "prod_gone", Name: "Gone", Deleted: true})
	fake.PutPrice(stripefake.Price{ID: "price_a", Product: "prod_a", LookupKey: "a_monthly", UnitAmount: 500, Interval: "month"})
	fake.PutPrice(stripefake.Price{ID: "price_b", Product: "prod_b", UnitAmount: 700, Inactive: true})

	p, _, err := c.Product(ctx, "prod_b")
	if err != nil || p.Name != "B" || p.Active {
		t.Fatalf("product: %+v, %v", p, err)
	}
	if _, _, err := c.Product(ctx, "prod_gone"); !errors.Is(err, stripeapi.ErrNotFound) {
		t.Fatalf("deleted product: %v, want not found", err)
	}
	pr, _, err := c.Price(ctx, "price_a")
	if err != nil || pr.ProductID != "prod_a" || pr.LookupKey != "a_monthly" || *pr.UnitAmount != 500 || pr.Interval != "month" || pr.IntervalCount != 1 {
		t.Fatalf("price: %+v, %v", pr, err)
	}
	var ids []string
	for d, err := range c.Products(ctx, stripeapi.ListParams{PageSize: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.Obj.ID)
	}
	if len(ids) != 2 {
		t.Fatalf("products listed: %v, want the active and the inactive one", ids)
	}
	ids = nil
	for d, err := range c.Prices(ctx, stripeapi.ListParams{PageSize: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, d.Obj.ID)
	}
	if len(ids) != 2 {
		t.Fatalf("prices listed: %v", ids)
	}
}
