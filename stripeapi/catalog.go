package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/form"
)

// Product is the part of a product lockstep stores: what names a plan.
type Product struct {
	ID      string
	Name    string
	Active  bool
	Deleted bool // set by product.deleted, or a deleted product's stub
	Created time.Time
}

// Price is the part of a price lockstep stores: what a subscription's
// plan is billed by, and the lookup key apps gate on.
type Price struct {
	ID            string
	ProductID     string
	LookupKey     string // "" when the price has none
	Active        bool
	Deleted       bool
	Currency      string
	UnitAmount    *int64 // nil for tiered or custom prices
	Interval      string // day, week, month, year; "" for a one-time price
	IntervalCount int64
	Created       time.Time
}

// Entitlement is one of a customer's active Stripe Entitlements: a feature
// the customer has, named by the feature's lookup key.
type Entitlement struct {
	ID        string // ent_...
	FeatureID string // feat_...
	LookupKey string
}

// EntitlementSummary is the object of an
// entitlements.active_entitlement_summary.updated event: a customer's
// active entitlements, at most one page of them. When HasMore is set, the
// whole set must be read from the active entitlements list.
type EntitlementSummary struct {
	CustomerID   string
	Entitlements []Entitlement
	HasMore      bool
}

// ParseProduct parses a product object (or a deleted product's stub).
func ParseProduct(b []byte) (*Product, error) {
	w, err := unmarshalWire[productWire](b, "product")
	if err != nil {
		return nil, err
	}
	if w.Object != "product" || !ValidID(w.ID, "prod_") {
		return nil, fmt.Errorf("%w: product: bad object or id", ErrMalformed)
	}
	if len(w.Name) > 1024 {
		return nil, fmt.Errorf("%w: product %s: name too long", ErrMalformed, w.ID)
	}
	p := &Product{ID: w.ID, Name: w.Name, Deleted: w.Deleted, Active: !w.Deleted, Created: unixTime(w.Created)}
	if w.Active != nil {
		p.Active = *w.Active && !w.Deleted
	}
	return p, nil
}

type productWire = struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Name    string `json:"name"`
	Active  *bool  `json:"active"`
	Deleted bool   `json:"deleted"`
	Created int64  `json:"created"`
}

// ParsePrice parses a price object (or a deleted price's stub, which
// names no product: ProductID is then "").
func ParsePrice(b []byte) (*Price, error) {
	w, err := unmarshalWire[priceWire](b, "price")
	if err != nil {
		return nil, err
	}
	if w.Object != "price" || !ValidID(w.ID, "price_") && !ValidID(w.ID, "plan_") {
		return nil, fmt.Errorf("%w: price: bad object or id", ErrMalformed)
	}
	if w.Product.ID != "" && !ValidID(w.Product.ID, "prod_") {
		return nil, fmt.Errorf("%w: price %s: bad product id", ErrMalformed, w.ID)
	}
	if w.Product.ID == "" && !w.Deleted {
		return nil, fmt.Errorf("%w: price %s: names no product", ErrMalformed, w.ID)
	}
	p := &Price{
		ID: w.ID, ProductID: w.Product.ID, Active: !w.Deleted, Deleted: w.Deleted,
		Currency: w.Currency, UnitAmount: w.UnitAmount, Created: unixTime(w.Created),
	}
	if w.Active != nil {
		p.Active = *w.Active && !w.Deleted
	}
	if w.LookupKey != nil {
		p.LookupKey = *w.LookupKey
	}
	if w.Recurring != nil {
		p.Interval, p.IntervalCount = w.Recurring.Interval, w.Recurring.IntervalCount
		if p.Interval != "" && !validEnum(p.Interval) {
			return nil, fmt.Errorf("%w: price %s: bad recurring.interval", ErrMalformed, w.ID)
		}
	}
	if len(p.LookupKey) > 200 || len(p.Currency) > 10 {
		return nil, fmt.Errorf("%w: price %s: field too long", ErrMalformed, w.ID)
	}
	return p, nil
}

type priceWire = struct {
	ID         string     `json:"id"`
	Object     string     `json:"object"`
	Product    expandable `json:"product"`
	LookupKey  *string    `json:"lookup_key"`
	Active     *bool      `json:"active"`
	Deleted    bool       `json:"deleted"`
	Currency   string     `json:"currency"`
	UnitAmount *int64     `json:"unit_amount"`
	Recurring  *struct {
		Interval      string `json:"interval"`
		IntervalCount int64  `json:"interval_count"`
	} `json:"recurring"`
	Created int64 `json:"created"`
}

// ParseEntitlement parses an entitlements.active_entitlement object.
func ParseEntitlement(b []byte) (*Entitlement, error) {
	w, err := unmarshalWire[entitlementWire](b, "active entitlement")
	if err != nil {
		return nil, err
	}
	return entitlementOf(w)
}

func entitlementOf(w entitlementWire) (*Entitlement, error) {
	if w.Object != "entitlements.active_entitlement" || !ValidID(w.ID, "ent_") {
		return nil, fmt.Errorf("%w: active entitlement: bad object or id", ErrMalformed)
	}
	if !ValidID(w.Feature.ID, "feat_") {
		return nil, fmt.Errorf("%w: active entitlement %s: bad feature id", ErrMalformed, w.ID)
	}
	if w.LookupKey == "" || len(w.LookupKey) > 200 {
		return nil, fmt.Errorf("%w: active entitlement %s: bad lookup_key", ErrMalformed, w.ID)
	}
	return &Entitlement{ID: w.ID, FeatureID: w.Feature.ID, LookupKey: w.LookupKey}, nil
}

type entitlementWire = struct {
	ID        string     `json:"id"`
	Object    string     `json:"object"`
	Feature   expandable `json:"feature"`
	LookupKey string     `json:"lookup_key"`
}

// ParseEntitlementSummary parses an
// entitlements.active_entitlement_summary object.
func ParseEntitlementSummary(b []byte) (*EntitlementSummary, error) {
	w, err := unmarshalWire[entitlementSummaryWire](b, "active entitlement summary")
	if err != nil {
		return nil, err
	}
	if w.Object != "entitlements.active_entitlement_summary" {
		return nil, fmt.Errorf("%w: active entitlement summary: bad object", ErrMalformed)
	}
	if !ValidID(w.Customer, "cus_") {
		return nil, fmt.Errorf("%w: active entitlement summary: bad customer id", ErrMalformed)
	}
	sum := &EntitlementSummary{CustomerID: w.Customer, Entitlements: []Entitlement{}, HasMore: w.Entitlements.HasMore}
	for _, ew := range w.Entitlements.Data {
		e, err := entitlementOf(ew)
		if err != nil {
			return nil, fmt.Errorf("active entitlement summary of %s: %w", w.Customer, err)
		}
		sum.Entitlements = append(sum.Entitlements, *e)
	}
	return sum, nil
}

type entitlementSummaryWire = struct {
	Object       string `json:"object"`
	Customer     string `json:"customer"`
	Entitlements struct {
		Data    []entitlementWire `json:"data"`
		HasMore bool              `json:"has_more"`
	} `json:"entitlements"`
}

// Product fetches a product (a deleted one answers its deleted stub), and
// Stripe's time of the answer.
func (c *Client) Product(ctx context.Context, id string) (*Product, time.Time, error) {
	return fetch(ctx, c, "/v1/products/", id, "prod_", ParseProduct)
}

// Price fetches a price, and Stripe's time of the answer.
func (c *Client) Price(ctx context.Context, id string) (*Price, time.Time, error) {
	if !ValidID(id, "price_") && ValidID(id, "plan_") {
		return fetch(ctx, c, "/v1/prices/", id, "plan_", ParsePrice)
	}
	return fetch(ctx, c, "/v1/prices/", id, "price_", ParsePrice)
}

// Products lists products, active and inactive, newest first, each dated
// by its page's Date header.
func (c *Client) Products(ctx context.Context, p ListParams) iter.Seq2[Dated[*Product], error] {
	if p.Customer != "" {
		return failed[*Product](errors.New("list /v1/products: products have no customer filter"))
	}
	return list(ctx, c, "/v1/products", p, nil, ParseProduct, func(pr *Product) string { return pr.ID })
}

// Prices lists prices, active and inactive, newest first, each dated by its
// page's Date header.
func (c *Client) Prices(ctx context.Context, p ListParams) iter.Seq2[Dated[*Price], error] {
	if p.Customer != "" {
		return failed[*Price](errors.New("list /v1/prices: prices have no customer filter"))
	}
	return list(ctx, c, "/v1/prices", p, nil, ParsePrice, func(pr *Price) string { return pr.ID })
}

// maxEntitlementPages bounds the pages ActiveEntitlements reads: 10,000
// entitlements, far more features than any product has.
const maxEntitlementPages = 100

// ActiveEntitlements reads the whole set of a customer's active
// entitlements from GET /v1/entitlements/active_entitlements, every page,
// dated by the first page's answer (its Date header, even when the list is
// empty, so an empty set costs one request). stripe-go v76 predates
// Entitlements: this goes through the same raw page path as every list
// here. A page that does not move forward (an empty page that says
// has_more, a last id already seen) or more than maxEntitlementPages pages
// stop it with an error naming the list.
func (c *Client) ActiveEntitlements(ctx context.Context, customerID string) ([]Entitlement, time.Time, error) {
	if !ValidID(customerID, "cus_") {
		return nil, time.Time{}, ErrNotFound
	}
	const path = "/v1/entitlements/active_entitlements"
	// Callers name the customer; the errors name the list.
	fail := func(err error) ([]Entitlement, time.Time, error) { return nil, time.Time{}, err }
	var (
		out   []Entitlement
		first time.Time
		after string
	)
	fw := newForward(path, "", maxEntitlementPages)
	for pages := 0; ; pages++ {
		f := &form.Values{}
		f.Add("customer", customerID)
		f.Add("limit", "100")
		if after != "" {
			f.Add("starting_after", after)
		}
		items, lc, err := c.page(ctx, path, f, &stripe.Params{Context: ctx}, fw, func(raw []byte, _ time.Time) (any, string, error) {
			e, err := ParseEntitlement(raw)
			if err != nil {
				return nil, "", err
			}
			return e, e.ID, nil
		})
		if err != nil {
			return fail(err)
		}
		pg := lc.(*rawPage)
		if pages == 0 { // c.page has checked the Date header, even of an empty page
			if first, err = responseTime(pg.LastResponse.Header); err != nil {
				return fail(fmt.Errorf("%w: GET %s: %v", ErrUnavailable, path, err))
			}
		}
		for _, it := range items {
			out = append(out, *it.(*Entitlement))
		}
		if !pg.HasMore {
			return out, first, nil
		}
		after = out[len(out)-1].ID // c.page refuses an empty page with more
	}
}

// failed is a list that yields err and ends.
func failed[T any](err error) iter.Seq2[Dated[T], error] {
	return func(yield func(Dated[T], error) bool) { yield(Dated[T]{}, err) }
}
