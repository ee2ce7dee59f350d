package billing

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/stripeapi"
)

// What sync and verify do with the paywall's objects: the catalog
// (products, prices: account-wide, listed) and each stored customer's
// active entitlements (read one customer at a time: Stripe has no list of
// them across customers).

// products lists every product, active and inactive, into the store. The
// catalog is the account's: a sync of one customer leaves it out (a
// subscription's unknown price is read when the subscription is stored).
func (st *syncState) products(ctx context.Context) error {
	if st.o.Customer != "" {
		return nil
	}
	st.object = "product"
	p := st.params()
	p.Customer = ""
	return pages(ctx, st, st.api.Products(ctx, p), func(p *stripeapi.Product) string { return p.ID },
		func(ctx context.Context, d stripeapi.Dated[*stripeapi.Product]) (int, error) {
			changes, err := st.s.ApplyProduct(ctx, d, st.opts())
			return st.report(changes), err
		})
}

// prices lists every price, active and inactive, into the store.
func (st *syncState) prices(ctx context.Context) error {
	if st.o.Customer != "" {
		return nil
	}
	st.object = "price"
	p := st.params()
	p.Customer = ""
	return pages(ctx, st, st.api.Prices(ctx, p), func(p *stripeapi.Price) string { return p.ID },
		func(ctx context.Context, d stripeapi.Dated[*stripeapi.Price]) (int, error) {
			changes, err := st.s.ApplyPrice(ctx, d, st.opts())
			return st.report(changes), err
		})
}

// entitlements reads the active entitlements of every stored customer in
// scope (deleted ones left out), a page of customers at a time in id
// order, and stores each set (ApplyEntitlements: under the customer's
// lock, after the read). The cursor is the last customer handled. Stripe's
// entitlements carry no creation time, so --since does not narrow them:
// every customer in scope is read.
func (st *syncState) entitlements(ctx context.Context) error {
	st.object = "entitlements"
	for {
		ids, err := st.s.storedCustomerIDs(ctx, st.o.Customer, st.run.after, st.o.PageSize)
		if err != nil {
			return fmt.Errorf("sync: %w", err)
		}
		if len(ids) == 0 {
			return ctx.Err()
		}
		page := make([]stripeapi.Dated[string], len(ids))
		for i, id := range ids {
			page[i].Obj = id
		}
		err = applyPage(ctx, st, page, func(ctx context.Context, d stripeapi.Dated[string]) (int, error) {
			ents, at, err := st.api.ActiveEntitlements(ctx, d.Obj)
			switch {
			case errors.Is(err, stripeapi.ErrNotFound):
				return 0, nil // deleted in Stripe since: the customer's own sync says so
			case err != nil:
				return 0, fmt.Errorf("sync: read entitlements of %s: %w", d.Obj, err)
			}
			changes, err := st.s.ApplyEntitlements(ctx, d.Obj, ents, at, st.opts())
			return st.report(changes), err
		})
		if err != nil {
			return err
		}
		st.run.after = ids[len(ids)-1]
		if err := st.saveProgress(ctx); err != nil {
			return err
		}
	}
}

// mayHaveEntitlements is the condition on stripe_customers c under which a
// whole-account sync or verify reads a customer's active entitlements from
// Stripe (one read per customer, the slowest part of a sync): Stripe grants
// entitlements through subscriptions, so a customer with no subscription
// that can still grant access, and no entitlements stored, has none to
// read. A customer named with --customer is always read.
const mayHaveEntitlements = `(EXISTS (SELECT 1 FROM stripe_subscriptions s
        WHERE s.stripe_customer_id = c.stripe_customer_id AND s.status NOT IN ('canceled', 'incomplete_expired'))
     OR EXISTS (SELECT 1 FROM stripe_entitlements e WHERE e.stripe_customer_id = c.stripe_customer_id))`

// storedCustomerIDs is a page of the stored customers (not deleted) after
// the id after, in id order: one, or all that may have entitlements when
// customerID is "".
func (s *Service) storedCustomerIDs(ctx context.Context, customerID, after string, limit int) ([]string, error) {
	rows, err := s.db.Query(ctx, `SELECT c.stripe_customer_id FROM stripe_customers c
WHERE NOT c.deleted AND ($1 = '' OR c.stripe_customer_id = $1) AND c.stripe_customer_id > $2
  AND ($1 <> '' OR `+mayHaveEntitlements+`)
ORDER BY c.stripe_customer_id LIMIT $3`, customerID, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read stored customers: %w", err)
	}
	ids, err := collectStrings(rows)
	if err != nil {
		return nil, fmt.Errorf("read stored customers: %w", err)
	}
	return ids, nil
}

// storedProduct is a stored product with its snapshot time.
type storedProduct struct {
	name            string
	active, deleted bool
	at              time.Time
}

// storedPrice is a stored price with its snapshot time.
type storedPrice struct {
	product, lookupKey, interval string
	active, deleted              bool
	unitAmount                   *int64
	at                           time.Time
}

// storedEntitlements is a stored customer's entitlement set (by feature
// id) and its Stripe time (nil: never stored).
type storedEntitlements struct {
	set map[string]stripeapi.Entitlement
	at  *time.Time
}

// catalog compares the stored products and prices with Stripe's
// lists, and with Repair mends what differs.
func (v *verifier) catalog(ctx context.Context) error {
	stored, err := v.s.storedProducts(ctx, "")
	if err != nil {
		return err
	}
	products := map[string]stripeapi.Dated[*stripeapi.Product]{}
	for d, err := range v.api.Products(ctx, stripeapi.ListParams{}) {
		if v.skip(ctx, "product", err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("verify: list products: %w", err)
		}
		products[d.Obj.ID] = d
	}
	err = compare(ctx, v, stored, products, kind[*stripeapi.Product, *storedProduct]{
		name:       "product",
		fetch:      v.api.Product,
		stored:     v.s.storedProducts,
		diff:       productDiff,
		repairable: func(Change) bool { return true },
		apply: func(ctx context.Context, _ string, d stripeapi.Dated[*stripeapi.Product]) error {
			_, err := v.s.ApplyProduct(ctx, d, ApplyOptions{Writer: "verify"})
			return err
		},
	})
	if err != nil {
		return err
	}
	storedPrices, err := v.s.storedPrices(ctx, "")
	if err != nil {
		return err
	}
	prices := map[string]stripeapi.Dated[*stripeapi.Price]{}
	for d, err := range v.api.Prices(ctx, stripeapi.ListParams{}) {
		if v.skip(ctx, "price", err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("verify: list prices: %w", err)
		}
		prices[d.Obj.ID] = d
	}
	return compare(ctx, v, storedPrices, prices, kind[*stripeapi.Price, *storedPrice]{
		name:       "price",
		fetch:      v.api.Price,
		stored:     v.s.storedPrices,
		diff:       priceDiff,
		repairable: func(Change) bool { return true },
		apply: func(ctx context.Context, _ string, d stripeapi.Dated[*stripeapi.Price]) error {
			_, err := v.s.ApplyPrice(ctx, d, ApplyOptions{Writer: "verify"})
			return err
		},
	})
}

// entitlements compares each stored customer's entitlement set (not the
// deleted ones; with Customer, that one's) with Stripe's, read customer by
// customer, and with Repair stores Stripe's set.
func (v *verifier) entitlements(ctx context.Context) error {
	stored, err := v.s.storedEntitlementSets(ctx, v.o.Customer)
	if err != nil {
		return err
	}
	fetch := func(ctx context.Context, id string) ([]stripeapi.Entitlement, time.Time, error) {
		ents, at, err := v.api.ActiveEntitlements(ctx, id)
		if err == nil {
			ents = uniqueFeatures(ents)
		}
		return ents, at, err
	}
	listed := map[string]stripeapi.Dated[[]stripeapi.Entitlement]{}
	for _, id := range slices.Sorted(maps.Keys(stored)) {
		ents, at, err := fetch(ctx, id)
		switch {
		case errors.Is(err, stripeapi.ErrNotFound):
			continue // deleted in Stripe: the customer's own diff says so
		case err != nil:
			return fmt.Errorf("verify: read entitlements of %s: %w", id, err)
		}
		listed[id] = stripeapi.Dated[[]stripeapi.Entitlement]{Obj: ents, At: at}
	}
	return compare(ctx, v, stored, listed, kind[[]stripeapi.Entitlement, *storedEntitlements]{
		name:       "entitlements of",
		fetch:      fetch,
		stored:     v.s.storedEntitlementSets,
		diff:       entitlementsDiff,
		repairable: func(Change) bool { return true },
		apply: func(ctx context.Context, id string, d stripeapi.Dated[[]stripeapi.Entitlement]) error {
			_, err := v.s.ApplyEntitlements(ctx, id, d.Obj, d.At, ApplyOptions{Writer: "verify"})
			return err
		},
	})
}

// productDiff compares a stored product (nil: none) with Stripe's (zero:
// none; Stripe answers 404 for a deleted product). A stored snapshot newer
// than Stripe's answer is not drift.
func productDiff(id string, stored *storedProduct, d stripeapi.Dated[*stripeapi.Product]) []Change {
	p := d.Obj
	switch {
	case stored == nil && p == nil:
		return nil
	case stored == nil:
		return []Change{{Object: "product", ID: id, Stripe: state(p.Deleted, "deleted", "present")}}
	case p == nil:
		if stored.deleted {
			return nil
		}
		return []Change{{Object: "product", ID: id, Stored: "present"}}
	case stored.at.After(d.At):
		return nil
	}
	var out []Change
	add := changeAdder(&out, "product", id)
	if !p.Deleted || p.Name != "" {
		add("name", stored.name, p.Name)
	}
	add("active", strconv.FormatBool(stored.active), strconv.FormatBool(p.Active && !p.Deleted))
	add("deleted", strconv.FormatBool(stored.deleted), strconv.FormatBool(p.Deleted))
	return out
}

// priceDiff compares a stored price (nil: none) with Stripe's (zero: none).
func priceDiff(id string, stored *storedPrice, d stripeapi.Dated[*stripeapi.Price]) []Change {
	p := d.Obj
	switch {
	case stored == nil && p == nil:
		return nil
	case stored == nil:
		return []Change{{Object: "price", ID: id, Stripe: state(p.Deleted, "deleted", "present")}}
	case p == nil:
		if stored.deleted {
			return nil
		}
		return []Change{{Object: "price", ID: id, Stored: "present"}}
	case stored.at.After(d.At):
		return nil
	}
	var out []Change
	add := changeAdder(&out, "price", id)
	if p.ProductID != "" {
		add("product", stored.product, p.ProductID)
	}
	add("lookup_key", stored.lookupKey, p.LookupKey)
	add("active", strconv.FormatBool(stored.active), strconv.FormatBool(p.Active && !p.Deleted))
	add("deleted", strconv.FormatBool(stored.deleted), strconv.FormatBool(p.Deleted))
	add("unit_amount", int64String(stored.unitAmount), int64String(p.UnitAmount))
	add("interval", stored.interval, p.Interval)
	return out
}

// entitlementsDiff compares a stored customer's set with Stripe's (zero:
// not read): one change per feature gained, lost or renamed. A stored set
// newer than Stripe's answer is not drift.
func entitlementsDiff(id string, stored *storedEntitlements, d stripeapi.Dated[[]stripeapi.Entitlement]) []Change {
	if stored == nil || d.At.IsZero() || stored.at != nil && stored.at.After(d.At) {
		return nil
	}
	return entitlementChanges(id, stored.set, d.Obj)
}

// sameDrift reports whether a and b are the same difference: the same
// object and field, and for an entitlement the same feature.
func sameDrift(a, b Change) bool {
	if a.Object != b.Object || a.ID != b.ID || a.Field != b.Field {
		return false
	}
	if a.Object == "entitlement" {
		return featureKey(a) == featureKey(b)
	}
	return true
}

// featureKey is the lookup key an entitlement change is about: Stripe's,
// or the stored one for a feature Stripe no longer grants.
func featureKey(c Change) string {
	if c.Stripe != "" {
		return c.Stripe
	}
	return c.Stored
}

// storedProducts reads stored products: one, or all when id is "".
func (s *Service) storedProducts(ctx context.Context, id string) (map[string]*storedProduct, error) {
	rows, err := s.db.Query(ctx, `SELECT stripe_product_id, name, active, deleted, source_time FROM stripe_products
WHERE $1 = '' OR stripe_product_id = $1`, id)
	if err != nil {
		return nil, fmt.Errorf("read stored products: %w", err)
	}
	out := map[string]*storedProduct{}
	var pid string
	p := &storedProduct{}
	_, err = pgx.ForEachRow(rows, []any{&pid, &p.name, &p.active, &p.deleted, &p.at}, func() error {
		c := *p
		out[pid] = &c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read stored products: %w", err)
	}
	return out, nil
}

// storedPrices reads stored prices: one, or all when id is "".
func (s *Service) storedPrices(ctx context.Context, id string) (map[string]*storedPrice, error) {
	rows, err := s.db.Query(ctx, `SELECT stripe_price_id, stripe_product_id, coalesce(lookup_key, ''),
    coalesce(recurring_interval, ''), active, deleted, unit_amount, source_time
FROM stripe_prices WHERE $1 = '' OR stripe_price_id = $1`, id)
	if err != nil {
		return nil, fmt.Errorf("read stored prices: %w", err)
	}
	out := map[string]*storedPrice{}
	var pid string
	p := &storedPrice{}
	_, err = pgx.ForEachRow(rows, []any{&pid, &p.product, &p.lookupKey, &p.interval, &p.active, &p.deleted, &p.unitAmount, &p.at}, func() error {
		c := *p
		out[pid] = &c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read stored prices: %w", err)
	}
	return out, nil
}

// storedEntitlementSets reads the entitlement sets of the stored customers
// (not deleted): one, or all when customerID is "".
func (s *Service) storedEntitlementSets(ctx context.Context, customerID string) (map[string]*storedEntitlements, error) {
	rows, err := s.db.Query(ctx, `SELECT c.stripe_customer_id, c.entitlements_time,
    e.stripe_feature_id, e.lookup_key, e.stripe_entitlement_id
FROM stripe_customers c LEFT JOIN stripe_entitlements e ON e.stripe_customer_id = c.stripe_customer_id
WHERE NOT c.deleted AND ($1 = '' OR c.stripe_customer_id = $1)
  AND ($1 <> '' OR `+mayHaveEntitlements+`)`, customerID)
	if err != nil {
		return nil, fmt.Errorf("read stored entitlements: %w", err)
	}
	out := map[string]*storedEntitlements{}
	var (
		cid                 string
		at                  *time.Time
		feature, key, entID *string
	)
	_, err = pgx.ForEachRow(rows, []any{&cid, &at, &feature, &key, &entID}, func() error {
		set := out[cid]
		if set == nil {
			set = &storedEntitlements{set: map[string]stripeapi.Entitlement{}, at: at}
			out[cid] = set
		}
		if feature != nil {
			set.set[*feature] = stripeapi.Entitlement{FeatureID: *feature, LookupKey: derefString(key), ID: derefString(entID)}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read stored entitlements: %w", err)
	}
	return out, nil
}
