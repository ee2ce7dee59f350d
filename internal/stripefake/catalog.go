package stripefake

import (
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"
)

// The catalog (products, prices) and Stripe Entitlements:
//
//	GET /v1/products/{id}                          (a deleted product answers 404, as Stripe does)
//	GET /v1/prices/{id}                            (a deleted price answers 404)
//	GET /v1/products                               active=true|false; deleted ones are not listed
//	GET /v1/prices                                 active, product, lookup_keys[]; deleted ones are not listed
//	GET /v1/entitlements/active_entitlements       customer= (required); limit, starting_after
//
// Events: UpdateProduct and UpdatePrice store and emit product.* and
// price.*; UpdateEntitlements stores a customer's active entitlements and
// emits entitlements.active_entitlement_summary.updated, truncated to a
// page with has_more when asked.

// Product is a Stripe product. Zero values render as active, Created now
// (fixed at PutProduct time).
type Product struct {
	ID       string
	Name     string
	Inactive bool // archived: renders active false
	Deleted  bool // deleted: GET answers 404 and lists leave it out
	Created  time.Time
}

// Price is a Stripe price. Zero values render as active, Currency "usd",
// a one-time price when Interval is "", IntervalCount 1, Created now.
type Price struct {
	ID            string
	Product       string
	LookupKey     string // "" renders as null
	Inactive      bool
	Deleted       bool
	Currency      string
	UnitAmount    int64
	Interval      string // day | week | month | year; "" for a one-time price
	IntervalCount int64
	Created       time.Time
}

// Entitlement is one of a customer's active entitlements. A zero ID is
// derived from the customer and the feature, so it is stable across sets.
type Entitlement struct {
	ID        string
	Feature   string // feat_...
	LookupKey string
}

// PutProduct stores or replaces a product.
func (s *Server) PutProduct(p Product) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putProductLocked(p)
}

// PutPrice stores or replaces a price.
func (s *Server) PutPrice(p Price) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putPriceLocked(p)
}

// SetEntitlements replaces the customer's active entitlements (none clears
// them), in the order given, which is the list's order.
func (s *Server) SetEntitlements(customer string, ents ...Entitlement) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setEntitlementsLocked(customer, ents)
}

// UpdateProduct stores p as PutProduct does and emits an event of type typ
// (product.created, product.updated, product.deleted) carrying it. A
// product.deleted event stores the product as Deleted and carries it as
// Stripe does: the product's last state, active false.
func (s *Server) UpdateProduct(p Product, typ string) (id string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if typ == "product.deleted" {
		p.Deleted = true
	}
	p = s.putProductLocked(p)
	return s.emitLocked(typ, ProductJSON(p), time.Time{})
}

// UpdatePrice stores p as PutPrice does and emits an event of type typ
// (price.created, price.updated, price.deleted) carrying it.
func (s *Server) UpdatePrice(p Price, typ string) (id string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if typ == "price.deleted" {
		p.Deleted = true
	}
	p = s.putPriceLocked(p)
	return s.emitLocked(typ, PriceJSON(p), time.Time{})
}

// UpdateEntitlements replaces the customer's active entitlements as
// SetEntitlements does and emits
// entitlements.active_entitlement_summary.updated carrying them. page > 0
// carries at most page entitlements, with has_more set when there are more
// (the whole set is then read from the active entitlements list); page <= 0
// carries them all.
func (s *Server) UpdateEntitlements(customer string, page int, ents ...Entitlement) (id string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ents = s.setEntitlementsLocked(customer, ents)
	return s.emitLocked("entitlements.active_entitlement_summary.updated",
		EntitlementSummaryJSON(customer, ents, page), time.Time{})
}

func (s *Server) putProductLocked(p Product) Product {
	if s.products == nil {
		s.products = map[string]Product{}
	}
	if p.Created.IsZero() {
		p.Created = s.stamp()
	}
	s.products[p.ID] = p
	s.productOrder.put(p.ID, p.Created.Unix())
	clear(s.rendered)
	return p
}

func (s *Server) putPriceLocked(p Price) Price {
	if s.prices == nil {
		s.prices = map[string]Price{}
	}
	if p.Created.IsZero() {
		p.Created = s.stamp()
	}
	s.prices[p.ID] = p
	s.priceOrder.put(p.ID, p.Created.Unix())
	clear(s.rendered)
	return p
}

func (s *Server) setEntitlementsLocked(customer string, ents []Entitlement) []Entitlement {
	if s.entitlements == nil {
		s.entitlements = map[string][]Entitlement{}
	}
	out := make([]Entitlement, len(ents))
	for i, e := range ents {
		if e.ID == "" {
			e.ID = "ent_" + derivedID("ent:"+customer+":"+e.Feature)
		}
		out[i] = e
	}
	s.entitlements[customer] = out
	clear(s.rendered)
	return slices.Clone(out)
}

// ProductJSON renders a product as Stripe sends it.
func ProductJSON(p Product) map[string]any {
	created := orNow(p.Created).Unix()
	return map[string]any{
		"id":                   p.ID,
		"object":               "product",
		"active":               !p.Inactive && !p.Deleted,
		"created":              created,
		"default_price":        nil,
		"description":          nil,
		"images":               []any{},
		"livemode":             false,
		"marketing_features":   []any{},
		"metadata":             map[string]any{},
		"name":                 p.Name,
		"package_dimensions":   nil,
		"shippable":            nil,
		"statement_descriptor": nil,
		"tax_code":             nil,
		"unit_label":           nil,
		"updated":              created,
		"url":                  nil,
	}
}

// PriceJSON renders a price as Stripe sends it.
func PriceJSON(p Price) map[string]any {
	var recurring any
	typ := "one_time"
	if p.Interval != "" {
		typ = "recurring"
		count := p.IntervalCount
		if count <= 0 {
			count = 1
		}
		recurring = map[string]any{
			"aggregate_usage":   nil,
			"interval":          p.Interval,
			"interval_count":    count,
			"meter":             nil,
			"trial_period_days": nil,
			"usage_type":        "licensed",
		}
	}
	return map[string]any{
		"id":                  p.ID,
		"object":              "price",
		"active":              !p.Inactive && !p.Deleted,
		"billing_scheme":      "per_unit",
		"created":             orNow(p.Created).Unix(),
		"currency":            orDefault(p.Currency, "usd"),
		"custom_unit_amount":  nil,
		"livemode":            false,
		"lookup_key":          nullable(p.LookupKey),
		"metadata":            map[string]any{},
		"nickname":            nil,
		"product":             p.Product,
		"recurring":           recurring,
		"tax_behavior":        "unspecified",
		"tiers_mode":          nil,
		"transform_quantity":  nil,
		"type":                typ,
		"unit_amount":         p.UnitAmount,
		"unit_amount_decimal": strconv.FormatInt(p.UnitAmount, 10),
	}
}

// EntitlementJSON renders an entitlements.active_entitlement.
func EntitlementJSON(e Entitlement) map[string]any {
	return map[string]any{
		"id":         e.ID,
		"object":     "entitlements.active_entitlement",
		"feature":    e.Feature,
		"livemode":   false,
		"lookup_key": e.LookupKey,
	}
}

// EntitlementSummaryJSON renders the
// entitlements.active_entitlement_summary of customer's entitlements, as
// its event carries it: page > 0 carries at most page of them, with
// has_more set when there are more.
func EntitlementSummaryJSON(customer string, ents []Entitlement, page int) map[string]any {
	more := false
	if page > 0 && len(ents) > page {
		ents, more = ents[:page], true
	}
	data := make([]any, len(ents))
	for i, e := range ents {
		if e.ID == "" {
			e.ID = "ent_" + derivedID("ent:"+customer+":"+e.Feature)
		}
		data[i] = EntitlementJSON(e)
	}
	return map[string]any{
		"object":       "entitlements.active_entitlement_summary",
		"customer":     customer,
		"livemode":     false,
		"entitlements": listJSON("/v1/customer/"+customer+"/entitlements", more, data),
	}
}

// The handlers below run with s.mu held.

func (s *Server) product(id string) (map[string]any, int, *stripeError) {
	p, ok := s.products[id]
	if !ok || p.Deleted {
		return nil, http.StatusNotFound, noSuch("product", id)
	}
	return ProductJSON(p), http.StatusOK, nil
}

func (s *Server) price(id string) (map[string]any, int, *stripeError) {
	p, ok := s.prices[id]
	if !ok || p.Deleted {
		return nil, http.StatusNotFound, noSuch("price", id)
	}
	return PriceJSON(p), http.StatusOK, nil
}

// listProducts answers GET /v1/products, active and archived.
func (s *Server) listProducts(q url.Values) (map[string]any, int, *stripeError) {
	p, apiErr := parseList(q)
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	ids, more, apiErr := p.page(&s.productOrder, "product", func(id string) bool {
		pr := s.products[id]
		return !pr.Deleted && p.createdIn(pr.Created.Unix())
	})
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	data := make([]any, len(ids))
	for i, id := range ids {
		data[i] = ProductJSON(s.products[id])
	}
	return listJSON("/v1/products", more, data), http.StatusOK, nil
}

// listPrices answers GET /v1/prices, active and archived.
func (s *Server) listPrices(q url.Values) (map[string]any, int, *stripeError) {
	p, apiErr := parseList(q)
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	ids, more, apiErr := p.page(&s.priceOrder, "price", func(id string) bool {
		pr := s.prices[id]
		return !pr.Deleted && p.createdIn(pr.Created.Unix())
	})
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	data := make([]any, len(ids))
	for i, id := range ids {
		data[i] = PriceJSON(s.prices[id])
	}
	return listJSON("/v1/prices", more, data), http.StatusOK, nil
}

// listActiveEntitlements answers GET
// /v1/entitlements/active_entitlements?customer= in the order the set was
// given, paged by limit and starting_after (an entitlement id of that
// customer's set).
func (s *Server) listActiveEntitlements(q url.Values) (map[string]any, int, *stripeError) {
	p, apiErr := parseList(q, "customer")
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	if p.createdMin != math.MinInt64 {
		return nil, http.StatusBadRequest, unknownParam("created")
	}
	customer := p.one("customer")
	if customer == "" {
		return nil, http.StatusBadRequest, invalidParam("customer", "parameter_missing", "Missing required param: customer.")
	}
	ents := s.entitlements[customer]
	start := 0
	if p.startingAfter != "" {
		i := slices.IndexFunc(ents, func(e Entitlement) bool { return e.ID == p.startingAfter })
		if i < 0 {
			return nil, http.StatusBadRequest, noSuchCursor("entitlements.active_entitlement", p.startingAfter, "starting_after")
		}
		start = i + 1
	}
	end := min(start+p.limit, len(ents))
	data := make([]any, 0, end-start)
	for _, e := range ents[start:end] {
		data = append(data, EntitlementJSON(e))
	}
	return listJSON("/v1/entitlements/active_entitlements", end < len(ents), data), http.StatusOK, nil
}
