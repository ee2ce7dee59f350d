package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

// The catalog: products and prices, from product.* and price.* events and
// from reads of Stripe's API (sync, verify, and a subscription whose price
// lockstep has not stored yet).
//
// Products and prices are account-wide, not a customer's: no customer lock
// guards them. Each snapshot is written by one statement, which PostgreSQL
// runs atomically, and the statement itself orders snapshots by Stripe's
// clock (source_time): the upsert's row lock serializes two writers of one
// product, and the second one's WHERE sees the first one's row. An event's
// statement also claims its ledger row (stripe_events), so the mark and
// the write commit together, and a concurrent delivery of the same event
// waits on that row and then finds it processed.
//
// Ordering, for both tables (the catalogWins fragment): an older snapshot
// never replaces a newer one; a deleted one is final, and a deletion wins
// whatever its time (Stripe never revives a deleted product or price). Of
// two snapshots of the same second, whose order Stripe's whole seconds do
// not tell, the deleted one wins, then the inactive (archived) one, since
// archiving is what follows the other changes in practice; otherwise the
// stored one is kept, until a later event or read (sync, verify --repair)
// says otherwise. A snapshot that says what is stored writes nothing (the
// unchanged rule, see upsertSubscription).

// catalogTable is what the catalog statements need of a table.
type catalogTable struct {
	table, key string
	cols       []string // the snapshot's columns after the key, source_time and source last
	types      []string // their SQL types, for the parameters
	set        []string // the DO UPDATE's SET list, updated_at excluded
	distinct   [2]string
}

var productTable = catalogTable{
	table: "stripe_products", key: "stripe_product_id",
	cols:  []string{"name", "active", "deleted", "source_time", "source"},
	types: []string{"text", "boolean", "boolean", "timestamptz", "text"},
	set: []string{
		// a deletion's stub may carry no name: the name is kept
		"name = CASE WHEN excluded.deleted AND excluded.name = '' THEN p.name ELSE excluded.name END",
		"active = excluded.active", "deleted = excluded.deleted",
	},
	distinct: [2]string{"(p.name, p.active, p.deleted)",
		"(CASE WHEN excluded.deleted AND excluded.name = '' THEN p.name ELSE excluded.name END, excluded.active, excluded.deleted)"},
}

var priceTable = catalogTable{
	table: "stripe_prices", key: "stripe_price_id",
	cols: []string{"stripe_product_id", "lookup_key", "active", "deleted", "currency", "unit_amount",
		"recurring_interval", "recurring_interval_count", "source_time", "source"},
	types: []string{"text", "text", "boolean", "boolean", "text", "bigint", "text", "integer", "timestamptz", "text"},
	set: []string{
		// a deleted price's stub names no product and no currency: they are kept
		"stripe_product_id = coalesce(nullif(excluded.stripe_product_id, ''), p.stripe_product_id)",
		"lookup_key = excluded.lookup_key", "active = excluded.active", "deleted = excluded.deleted",
		"currency = coalesce(nullif(excluded.currency, ''), p.currency)", "unit_amount = excluded.unit_amount",
		"recurring_interval = excluded.recurring_interval",
		"recurring_interval_count = excluded.recurring_interval_count",
	},
	distinct: [2]string{
		"(p.stripe_product_id, p.lookup_key, p.active, p.deleted, p.currency, p.unit_amount, p.recurring_interval, p.recurring_interval_count)",
		"(coalesce(nullif(excluded.stripe_product_id, ''), p.stripe_product_id), excluded.lookup_key, excluded.active, excluded.deleted, " +
			"coalesce(nullif(excluded.currency, ''), p.currency), excluded.unit_amount, excluded.recurring_interval, excluded.recurring_interval_count)",
	},
}

// wins is the condition under which snapshot excluded replaces stored row
// p: the ordering above, and the unchanged rule.
func (c catalogTable) wins() string {
	return `NOT p.deleted
  AND (excluded.source_time > p.source_time
       OR excluded.deleted
       OR (excluded.source_time = p.source_time AND NOT excluded.active AND p.active))
  AND (` + c.distinct[0] + ` IS DISTINCT FROM ` + c.distinct[1] + `
       OR (excluded.source <> 'api' AND excluded.source_time > p.source_time))`
}

// params is the snapshot's parameters $first.., cast to the columns' types.
func (c catalogTable) params(first int) string {
	out := make([]string, 0, len(c.cols)+1)
	for i, t := range append([]string{"text"}, c.types...) {
		out = append(out, fmt.Sprintf("$%d::%s", first+i, t))
	}
	return strings.Join(out, ", ")
}

// upsert is the statement that stores a snapshot given as $first..,
// written only when gate (a WHERE clause, or "") holds. It returns one row
// when it wrote.
func (c catalogTable) upsert(first int, gate string) string {
	return `INSERT INTO ` + c.table + ` AS p (` + c.key + `, ` + strings.Join(c.cols, ", ") + `)
SELECT ` + c.params(first) + ` ` + gate + `
ON CONFLICT (` + c.key + `) DO UPDATE SET ` + strings.Join(c.set, ", ") + `,
    source_time = greatest(p.source_time, excluded.source_time), source = excluded.source, updated_at = now()
WHERE ` + c.wins() + `
RETURNING 1`
}

// applySQL stores a snapshot ($1..) and returns the stored row as it was
// before (the statement's snapshot; old are expressions on it, as p) and
// whether the snapshot was written;
// dryRunSQL returns the same without writing: whether it would be.
func (c catalogTable) applySQL(old []string) string {
	return `WITH up AS (` + c.upsert(1, "") + `)
SELECT p.` + c.key + ` IS NOT NULL, ` + strings.Join(old, ", ") + `, EXISTS (SELECT 1 FROM up)
FROM (SELECT 1) one LEFT JOIN ` + c.table + ` p ON p.` + c.key + ` = $1`
}

func (c catalogTable) dryRunSQL(old []string) string {
	cols := make([]string, 0, len(c.cols)+1)
	for i, col := range append([]string{c.key}, c.cols...) {
		cols = append(cols, fmt.Sprintf("$%d::%s AS %s", i+1, append([]string{"text"}, c.types...)[i], col))
	}
	return `SELECT p.` + c.key + ` IS NOT NULL, ` + strings.Join(old, ", ") + `,
    p.` + c.key + ` IS NULL OR coalesce((` + c.wins() + `), false)
FROM (SELECT ` + strings.Join(cols, ", ") + `) excluded LEFT JOIN ` + c.table + ` p ON p.` + c.key + ` = excluded.` + c.key
}

// eventSQL claims the event's ledger row ($1 event id, $2 type, $3 api
// version, $4 created, $5 payload) and, only when it did (the event is new
// or failed before), stores the snapshot ($6..). It returns whether the
// event was claimed and whether the snapshot was written.
func (c catalogTable) eventSQL() string {
	return `WITH ledger AS (
INSERT INTO stripe_events (event_id, type, api_version, stripe_customer_id, stripe_created, status,
    attempts, last_error, payload, processed_at)
VALUES ($1, $2, $3, NULL, $4, 'processed', 1, NULL, $5, now())
ON CONFLICT (event_id) DO UPDATE SET
    status = 'processed', attempts = stripe_events.attempts + 1, last_error = NULL,
    processed_at = now(), updated_at = now()
WHERE stripe_events.status = 'failed'
RETURNING 1
), up AS (` + c.upsert(6, "WHERE EXISTS (SELECT 1 FROM ledger)") + `)
SELECT EXISTS (SELECT 1 FROM ledger), EXISTS (SELECT 1 FROM up)`
}

var (
	productOld = []string{"p.name", "p.active", "p.deleted"}
	priceOld   = []string{"p.stripe_product_id", "coalesce(p.lookup_key, '')", "p.active", "p.deleted", "p.currency",
		"p.unit_amount", "coalesce(p.recurring_interval, '')"}

	productEventSQL  = productTable.eventSQL()
	priceEventSQL    = priceTable.eventSQL()
	productApplySQL  = productTable.applySQL(productOld)
	productDryRunSQL = productTable.dryRunSQL(productOld)
	priceApplySQL    = priceTable.applySQL(priceOld)
	priceDryRunSQL   = priceTable.dryRunSQL(priceOld)
)

func productArgs(p *stripeapi.Product, at time.Time, source string) []any {
	return []any{p.ID, p.Name, p.Active && !p.Deleted, p.Deleted, at, source}
}

func priceArgs(p *stripeapi.Price, at time.Time, source string) []any {
	var count *int64
	if p.Interval != "" {
		count = &p.IntervalCount
	}
	return []any{p.ID, p.ProductID, nullString(p.LookupKey), p.Active && !p.Deleted, p.Deleted, p.Currency,
		p.UnitAmount, nullString(p.Interval), count, at, source}
}

// processCatalogEvent applies a product.* or price.* event: one statement
// that claims the ledger row and writes the snapshot, or finds the event
// already done (Duplicate). Transient failures are retried within the
// lock manager's budget, like a customer's transaction.
func (s *Service) processCatalogEvent(ctx context.Context, ev *stripeapi.Event, act *action) (EventResult, error) {
	q, args := productEventSQL, []any(nil)
	switch {
	case act.product != nil:
		args = productArgs(act.product, ev.Created, ev.ID)
	default:
		q, args = priceEventSQL, priceArgs(act.price, ev.Created, ev.ID)
	}
	args = append([]any{ev.ID, ev.Type, ev.APIVersion, ev.Created, json.RawMessage(ev.Payload)}, args...)
	var claimed, written bool
	err := retryTransient(ctx, func() error {
		return s.db.QueryRow(ctx, q, args...).Scan(&claimed, &written)
	})
	if err != nil {
		return s.fail(ctx, ev, act, fmt.Errorf("apply %s: %w", ev.Type, err))
	}
	if !claimed {
		return EventResult{Outcome: Duplicate}, nil
	}
	if !written {
		return EventResult{Outcome: Processed, Note: "stored snapshot kept: newer, deleted or the same"}, nil
	}
	return EventResult{Outcome: Processed}, nil
}

// retryTransient runs a single statement again while it fails with a
// transient error (lockmgr.Classify), for up to two seconds.
func retryTransient(ctx context.Context, run func() error) error {
	deadline := time.Now().Add(2 * time.Second)
	wait := 20 * time.Millisecond
	for {
		err := run()
		if err == nil || !lockmgr.IsTransient(err) || time.Now().Add(wait).After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// ApplyProduct stores a product read from Stripe, dated by the answer that
// carried it, under the same rules as a product event (no customer lock:
// see above). With o.DryRun it writes nothing and reports what it would
// change.
func (s *Service) ApplyProduct(ctx context.Context, d stripeapi.Dated[*stripeapi.Product], o ApplyOptions) ([]Change, error) {
	p := d.Obj
	q := productApplySQL
	if o.DryRun {
		q = productDryRunSQL
	}
	var (
		existed, written bool
		name             *string
		active, deleted  *bool
	)
	err := retryTransient(ctx, func() error {
		return s.db.QueryRow(ctx, q, productArgs(p, d.At, "api")...).Scan(&existed, &name, &active, &deleted, &written)
	})
	if err != nil {
		return nil, fmt.Errorf("apply product %s: %w", p.ID, err)
	}
	if !written {
		return nil, nil
	}
	if !existed {
		return []Change{{Object: "product", ID: p.ID, Stripe: state(p.Deleted, "deleted", "present")}}, nil
	}
	var out []Change
	add := changeAdder(&out, "product", p.ID)
	if !p.Deleted || p.Name != "" {
		add("name", derefString(name), p.Name)
	}
	add("active", boolString(active), strconv.FormatBool(p.Active && !p.Deleted))
	add("deleted", boolString(deleted), strconv.FormatBool(p.Deleted))
	return out, nil
}

// ApplyPrice stores a price read from Stripe, dated by the answer that
// carried it, under the same rules as a price event. With o.DryRun it
// writes nothing and reports what it would change.
func (s *Service) ApplyPrice(ctx context.Context, d stripeapi.Dated[*stripeapi.Price], o ApplyOptions) ([]Change, error) {
	p := d.Obj
	q := priceApplySQL
	if o.DryRun {
		q = priceDryRunSQL
	}
	var (
		existed, written                       bool
		product, lookupKey, currency, interval *string
		active, deleted                        *bool
		unitAmount                             *int64
	)
	err := retryTransient(ctx, func() error {
		return s.db.QueryRow(ctx, q, priceArgs(p, d.At, "api")...).Scan(&existed, &product, &lookupKey, &active,
			&deleted, &currency, &unitAmount, &interval, &written)
	})
	if err != nil {
		return nil, fmt.Errorf("apply price %s: %w", p.ID, err)
	}
	if !written {
		return nil, nil
	}
	if !existed {
		return []Change{{Object: "price", ID: p.ID, Stripe: state(p.Deleted, "deleted", "present")}}, nil
	}
	var out []Change
	add := changeAdder(&out, "price", p.ID)
	if p.ProductID != "" {
		add("product", derefString(product), p.ProductID)
	}
	add("lookup_key", derefString(lookupKey), p.LookupKey)
	add("active", boolString(active), strconv.FormatBool(p.Active && !p.Deleted))
	add("deleted", boolString(deleted), strconv.FormatBool(p.Deleted))
	if p.Currency != "" {
		add("currency", derefString(currency), p.Currency)
	}
	add("unit_amount", int64String(unitAmount), int64String(p.UnitAmount))
	add("interval", derefString(interval), p.Interval)
	return out, nil
}

func changeAdder(out *[]Change, object, id string) func(field, stored, stripe string) {
	return func(field, stored, stripe string) {
		if stored != stripe {
			*out = append(*out, Change{Object: object, ID: id, Field: field, Stored: stored, Stripe: stripe})
		}
	}
}

func derefString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func boolString(b *bool) string {
	if b == nil {
		return ""
	}
	return strconv.FormatBool(*b)
}

func int64String(n *int64) string {
	if n == nil {
		return ""
	}
	return strconv.FormatInt(*n, 10)
}

// catalogFillTimeout bounds the reads of a missing price and product, so
// that they never hold up the answer to a webhook or a success call for
// long.
const catalogFillTimeout = 3 * time.Second

// fillCatalog reads from Stripe a price a stored subscription names and
// lockstep has not stored yet, and its product, and stores them. It runs
// after the subscription's transaction committed, holding no lock, through
// the Service's client (and so its share of the rate budget). It never
// fails its caller: a failed read is logged, and the sweeper, the next
// subscription event or a sync fills the price later. Every writer of a
// subscription fills: webhooks (the sweeper's and replays' included), the
// success call, and ApplySubscription (sync and verify --repair, which
// find nothing missing after a full sync's catalog phases, but do for one
// customer).
func (s *Service) fillCatalog(ctx context.Context, priceID string) {
	if priceID == "" || !s.fills.try(priceID, time.Now()) {
		return
	}
	// Within the caller's deadline (a request's answer must not wait past
	// it), and at most catalogFillTimeout.
	ctx, cancel := context.WithTimeout(ctx, catalogFillTimeout)
	defer cancel()
	warn := func(what string, err error) {
		s.log.WarnContext(ctx, "could not store the catalog of a subscription's price; a later sync or event fills it",
			slog.String("price", priceID), slog.String("step", what), slog.String("error", err.Error()))
	}
	var productID string
	var priceKnown bool
	err := s.db.QueryRow(ctx, `SELECT stripe_product_id FROM stripe_prices WHERE stripe_price_id = $1`, priceID).Scan(&productID)
	switch {
	case err == nil:
		priceKnown = true
	case !isNoRows(err):
		warn("read price", err)
		return
	}
	if !priceKnown {
		pr, at, err := s.stripe.Price(ctx, priceID)
		if err != nil {
			warn("fetch price", err)
			return
		}
		if _, err := s.ApplyPrice(ctx, stripeapi.Dated[*stripeapi.Price]{Obj: pr, At: at}, ApplyOptions{Writer: "catalog"}); err != nil {
			warn("store price", err)
			return
		}
		productID = pr.ProductID
	}
	if productID == "" {
		return
	}
	var known bool
	if err := s.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM stripe_products WHERE stripe_product_id = $1)`, productID).Scan(&known); err != nil {
		warn("read product", err)
		return
	}
	if known {
		return
	}
	p, at, err := s.stripe.Product(ctx, productID)
	if err != nil {
		warn("fetch product", err)
		return
	}
	if _, err := s.ApplyProduct(ctx, stripeapi.Dated[*stripeapi.Product]{Obj: p, At: at}, ApplyOptions{Writer: "catalog"}); err != nil {
		warn("store product", err)
	}
}

// fillRetryAfter is how long fillCatalog leaves a price alone after trying
// it, so that a storm of events naming a new price reads it once, and a
// price Stripe cannot answer for is not asked for on every event.
const fillRetryAfter = time.Minute

// fillGate remembers the prices fillCatalog tried lately.
type fillGate struct {
	mu    sync.Mutex
	tried map[string]time.Time
}

// try reports whether priceID may be read now, and if so notes it.
func (g *fillGate) try(priceID string, now time.Time) bool {
	if g == nil {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.tried == nil {
		g.tried = map[string]time.Time{}
	}
	if at, ok := g.tried[priceID]; ok && now.Sub(at) < fillRetryAfter {
		return false
	}
	if len(g.tried) >= 10_000 {
		for id, at := range g.tried {
			if now.Sub(at) >= fillRetryAfter {
				delete(g.tried, id)
			}
		}
	}
	g.tried[priceID] = now
	return true
}
