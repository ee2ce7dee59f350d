package stripefake

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
)

// The catalog's lists: active and inactive, filters, deleted objects left
// out and answered 404; the entitlements list pages a customer's set and
// needs its customer.
func TestCatalogEndpoints(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.PutProduct(Product{ID: "prod_a", Name: "A"})
	s.PutProduct(Product{ID: "prod_b", Name: "B", Inactive: true})
	s.PutProduct(Product{ID: "prod_c", Name: "C", Deleted: true})
	s.PutPrice(Price{ID: "price_a", Product: "prod_a", LookupKey: "a", UnitAmount: 100, Interval: "month"})
	s.PutPrice(Price{ID: "price_b", Product: "prod_b", UnitAmount: 200})

	ids, _ := listIDs(t, s, "/v1/products", "")
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"prod_a", "prod_b"}) {
		t.Errorf("products: %v", ids)
	}
	ids, _ = listIDs(t, s, "/v1/prices", "")
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"price_a", "price_b"}) {
		t.Errorf("prices: %v", ids)
	}
	if code, e := getError(t, s, "/v1/products/prod_c"); code != http.StatusNotFound || e.Code != "resource_missing" {
		t.Errorf("deleted product: %d %v", code, e.Code)
	}
	m := getJSON(t, s, "/v1/prices/price_b", "")
	if m["type"] != "one_time" || m["recurring"] != nil || m["unit_amount"] != float64(200) {
		t.Errorf("one-time price: %v", m)
	}

	s.SetEntitlements("cus_1", Entitlement{Feature: "feat_1", LookupKey: "one"}, Entitlement{Feature: "feat_2", LookupKey: "two"},
		Entitlement{Feature: "feat_3", LookupKey: "three"})
	first, more := listIDs(t, s, "/v1/entitlements/active_entitlements?customer=cus_1&limit=2", "")
	if len(first) != 2 || !more {
		t.Fatalf("first page: %v, has_more %v", first, more)
	}
	rest, more := listIDs(t, s, "/v1/entitlements/active_entitlements?customer=cus_1&limit=2&starting_after="+first[1], "")
	if len(rest) != 1 || more {
		t.Fatalf("second page: %v, has_more %v", rest, more)
	}
	if code, _ := getError(t, s, "/v1/entitlements/active_entitlements"); code != http.StatusBadRequest {
		t.Errorf("no customer: %d, want 400", code)
	}
}

// UpdateEntitlements emits the summary event, truncated to a page with
// has_more when asked; UpdateProduct with product.deleted stores the
// product deleted.
func TestCatalogEvents(t *testing.T) {
	t.Parallel()
	s := New(t)
	_, payload := s.UpdateEntitlements("cus_1", 1, Entitlement{Feature: "feat_1", LookupKey: "one"}, Entitlement{Feature: "feat_2", LookupKey: "two"})
	var ev struct {
		Type string `json:"type"`
		Data struct {
			Object struct {
				Object       string `json:"object"`
				Customer     string `json:"customer"`
				Entitlements struct {
					Data    []map[string]any `json:"data"`
					HasMore bool             `json:"has_more"`
				} `json:"entitlements"`
			} `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(payload, &ev); err != nil {
		t.Fatal(err)
	}
	o := ev.Data.Object
	if ev.Type != "entitlements.active_entitlement_summary.updated" || o.Object != "entitlements.active_entitlement_summary" ||
		o.Customer != "cus_1" || len(o.Entitlements.Data) != 1 || !o.Entitlements.HasMore {
		t.Fatalf("summary event: %s", payload)
	}
	if all, _ := listIDs(t, s, "/v1/entitlements/active_entitlements?customer=cus_1", ""); len(all) != 2 {
		t.Fatalf("the list has %v, want both", all)
	}

	s.UpdateProduct(Product{ID: "prod_x", Name: "X"}, "product.created")
	s.UpdateProduct(Product{ID: "prod_x", Name: "X"}, "product.deleted")
	if code, _ := getError(t, s, "/v1/products/prod_x"); code != http.StatusNotFound {
		t.Errorf("deleted product: %d", code)
	}
	if ids, _ := listIDs(t, s, "/v1/events?types[]=product.created&types[]=product.deleted", ""); len(ids) != 2 {
		t.Errorf("product events: %v", ids)
	}
}
