package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/lockstep/lockstep/stripeapi"
)

// VerifyOptions says what `lockstep verify` compares.
type VerifyOptions struct {
	Customer string // one customer; "" for every customer
	// Repair writes Stripe's state through the same locked path as sync
	// for every difference found.
	Repair bool
	// Found, when set, is called for each difference as it is confirmed,
	// and Mended for each one repaired.
	Found  func(Change)
	Mended func(Change)
	// Unreadable, when set, is told of each object Stripe listed that
	// lockstep cannot read (else it is logged); the run compares the rest
	// and then returns ErrUnreadable.
	Unreadable func(Unreadable)
}

// VerifyResult is what a verify run found and mended.
type VerifyResult struct {
	Found     []Change
	Repaired  []Change
	Remaining []Change // found and not mended (all of Found without Repair)
}

// storedSub is a stored subscription with its snapshot time.
type storedSub struct {
	view       SubscriptionView
	next       storedSubscription // what the paywall's next step reads
	customerID string
	at         time.Time
}

type storedCustomer struct {
	userID  string
	deleted bool
}

// Verify compares the stored products and prices (not with Customer: the
// catalog is the account's), customers, mappings, subscriptions and
// customers' entitlement sets with Stripe's, and with Repair mends what
// differs. A difference is confirmed before it is reported: the object is
// read again from Stripe and from the store, so a webhook landing during
// the run is not drift, and a stored snapshot newer than Stripe's answer is
// not either. Each drifted object is repaired once and read again once,
// however many of its fields differ. The run is recorded in
// stripe_verify_runs, which the drift metrics count.
func (b *Bulk) Verify(ctx context.Context, o VerifyOptions) (VerifyResult, error) {
	started := time.Now()
	if o.Customer != "" && !stripeapi.ValidID(o.Customer, "cus_") {
		return VerifyResult{}, fmt.Errorf("verify: %q is not a Stripe customer id", o.Customer)
	}
	v := &verifier{s: b.Service, api: b.api, o: o}
	steps := []func(context.Context) error{v.catalog, v.customers, v.subscriptions, v.entitlements}
	if o.Customer != "" {
		// The catalog is the account's, not the customer's: left out.
		steps = steps[1:]
	}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return v.res, err
		}
	}
	scope := "all"
	if o.Customer != "" {
		scope = o.Customer
	}
	if err := b.recordVerify(ctx, scope, o.Repair, started, v.res); err != nil {
		return v.res, err
	}
	return v.res, unreadableError(len(v.unreadable))
}

type verifier struct {
	s   *Service
	api Lister
	o   VerifyOptions
	res VerifyResult
	// unreadable holds the ids of listed objects that could not be read:
	// reported, and not compared.
	unreadable map[string]bool
}

// skip reports whether err is an object to report and go on after, and
// reports it.
func (v *verifier) skip(ctx context.Context, object string, err error) bool {
	u, ok := unreadableOf(object, err)
	if !ok {
		return false
	}
	if v.unreadable == nil {
		v.unreadable = map[string]bool{}
	}
	v.unreadable[u.ID] = true
	v.s.reportUnreadable(ctx, v.o.Unreadable, u)
	return true
}

// found records the confirmed differences of one object and, with Repair,
// mends them all with one repair (nil when lockstep cannot: Stripe has no
// such object) and checks the object again with one recheck: a repair and
// a re-read per object, whatever the number of its fields that differ. A
// difference that is not repairable (the mapping rules refuse) or that the
// recheck still finds stays.
func (v *verifier) found(ctx context.Context, diff []Change, repairable func(Change) bool,
	repair func(ctx context.Context) error, recheck func(ctx context.Context) ([]Change, error)) error {
	v.res.Found = append(v.res.Found, diff...)
	if v.o.Found != nil {
		for _, c := range diff {
			v.o.Found(c)
		}
	}
	if !v.o.Repair || repair == nil || !slices.ContainsFunc(diff, repairable) {
		v.res.Remaining = append(v.res.Remaining, diff...)
		return nil
	}
	if err := repair(ctx); err != nil {
		return err
	}
	left, err := recheck(ctx)
	if err != nil {
		return err
	}
	for _, c := range diff {
		if !repairable(c) || slices.ContainsFunc(left, func(l Change) bool { return sameDrift(l, c) }) {
			v.res.Remaining = append(v.res.Remaining, c)
			continue
		}
		v.res.Repaired = append(v.res.Repaired, c)
		if v.o.Mended != nil {
			v.o.Mended(c)
		}
	}
	return nil
}

func (v *verifier) customers(ctx context.Context) error {
	stored, err := v.s.storedCustomerRows(ctx, v.o.Customer)
	if err != nil {
		return err
	}
	// One customer (o.Customer): the list reads it by id, a deleted one
	// too; a customer Stripe does not have yields nothing.
	listed := map[string]stripeapi.Dated[*stripeapi.Customer]{}
	for d, err := range v.api.Customers(ctx, stripeapi.ListParams{Customer: v.o.Customer}) {
		if v.skip(ctx, "customer", err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("verify: list customers: %w", err)
		}
		listed[d.Obj.ID] = d
	}
	return compare(ctx, v, stored, listed, kind[*stripeapi.Customer, *storedCustomer]{
		name:  "customer",
		fetch: v.api.Customer,
		stored: func(ctx context.Context, id string) (map[string]*storedCustomer, error) {
			return v.s.storedCustomerRows(ctx, id)
		},
		diff: customerDiff,
		// A mapping to another user is the owner's to decide, not verify's.
		repairable: func(c Change) bool { return c.Object != "mapping" || c.Stored == "" },
		apply: func(ctx context.Context, _ string, d stripeapi.Dated[*stripeapi.Customer]) error {
			_, _, err := v.s.ApplyCustomer(ctx, d, ApplyOptions{Writer: "verify"})
			return err
		},
	})
}

// kind is how verify compares one kind of object: T as Stripe has it, S as
// stored (nil when missing).
type kind[T, S any] struct {
	name       string
	fetch      func(ctx context.Context, id string) (T, time.Time, error)
	stored     func(ctx context.Context, id string) (map[string]S, error)
	diff       func(id string, stored S, d stripeapi.Dated[T]) []Change
	repairable func(Change) bool
	apply      func(ctx context.Context, id string, d stripeapi.Dated[T]) error
}

// compare goes through every object on either side. Where the first look
// (the list against the stored rows) differs, it reads both sides again
// (the object alone from Stripe, which also finds what lists omit, such as
// a deleted customer), and reports, and with Repair mends, what still
// differs.
func compare[T, S any](ctx context.Context, v *verifier, stored map[string]S, listed map[string]stripeapi.Dated[T], k kind[T, S]) error {
	for _, id := range unionKeys(stored, listed) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if v.unreadable[id] {
			continue // reported when listed
		}
		if len(k.diff(id, stored[id], listed[id])) == 0 {
			continue
		}
		check := func(ctx context.Context) ([]Change, *stripeapi.Dated[T], error) {
			obj, at, err := k.fetch(ctx, id)
			var fresh *stripeapi.Dated[T]
			switch {
			case errors.Is(err, stripeapi.ErrNotFound):
			case err != nil:
				return nil, nil, fmt.Errorf("verify: read %s %s: %w", k.name, id, err)
			default:
				fresh = &stripeapi.Dated[T]{Obj: obj, At: at}
			}
			rows, err := k.stored(ctx, id)
			if err != nil {
				return nil, nil, err
			}
			return k.diff(id, rows[id], deref(fresh)), fresh, nil
		}
		diff, fresh, err := check(ctx)
		if err != nil {
			return err
		}
		if len(diff) == 0 {
			continue
		}
		var repair func(ctx context.Context) error
		if fresh != nil {
			repair = func(ctx context.Context) error { return k.apply(ctx, id, *fresh) }
		}
		recheck := func(ctx context.Context) ([]Change, error) {
			left, _, err := check(ctx)
			return left, err
		}
		if err := v.found(ctx, diff, k.repairable, repair, recheck); err != nil {
			return err
		}
	}
	return nil
}

// customerDiff compares a stored customer (nil: none) with Stripe's (zero:
// none).
func customerDiff(id string, stored *storedCustomer, d stripeapi.Dated[*stripeapi.Customer]) []Change {
	c := d.Obj
	switch {
	case stored == nil && c == nil:
		return nil
	case stored == nil:
		return []Change{{Object: "customer", ID: id, Stripe: state(c.Deleted, "deleted", "present")}}
	case c == nil:
		if stored.deleted {
			return nil
		}
		return []Change{{Object: "customer", ID: id, Stored: "present"}}
	}
	var out []Change
	if c.Deleted != stored.deleted {
		out = append(out, Change{Object: "customer", ID: id, Field: "deleted",
			Stored: fmt.Sprint(stored.deleted), Stripe: fmt.Sprint(c.Deleted)})
	}
	if !c.Deleted && c.MetadataUserID != "" && c.MetadataUserID != stored.userID {
		out = append(out, Change{Object: "mapping", ID: id, Field: "user_id", Stored: stored.userID, Stripe: c.MetadataUserID})
	}
	return out
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func (v *verifier) subscriptions(ctx context.Context) error {
	stored, err := v.s.storedSubscriptions(ctx, v.o.Customer, "")
	if err != nil {
		return err
	}
	listed := map[string]stripeapi.Dated[*stripeapi.Subscription]{}
	for d, err := range v.api.Subscriptions(ctx, stripeapi.ListParams{Customer: v.o.Customer}) {
		if v.skip(ctx, "subscription", err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("verify: list subscriptions: %w", err)
		}
		v.s.noteUnknownStatus(ctx, d.Obj)
		listed[d.Obj.ID] = d
	}
	return compare(ctx, v, stored, listed, kind[*stripeapi.Subscription, *storedSub]{
		name:  "subscription",
		fetch: v.api.Subscription,
		stored: func(ctx context.Context, id string) (map[string]*storedSub, error) {
			return v.s.storedSubscriptions(ctx, "", id)
		},
		diff:       subscriptionDiff,
		repairable: func(Change) bool { return true },
		apply: func(ctx context.Context, _ string, d stripeapi.Dated[*stripeapi.Subscription]) error {
			_, err := v.s.ApplySubscription(ctx, d, ApplyOptions{Writer: "verify"})
			return err
		},
	})
}

// subscriptionDiff compares a stored subscription (nil: none) with Stripe's
// (zero: none). A stored snapshot newer than Stripe's answer is not drift:
// a webhook stored it after the answer was read.
func subscriptionDiff(id string, stored *storedSub, d stripeapi.Dated[*stripeapi.Subscription]) []Change {
	sub := d.Obj
	switch {
	case stored == nil && sub == nil:
		return nil
	case stored == nil:
		return []Change{{Object: "subscription", ID: id, Stripe: sub.Status}}
	case sub == nil:
		return []Change{{Object: "subscription", ID: id, Stored: stored.view.Status}}
	case stored.at.After(d.At):
		return nil
	}
	want := viewOf(sub)
	out := append(subscriptionChanges(&stored.view, &want), nextStepChanges(stored.next, sub)...)
	if stored.customerID != sub.CustomerID {
		out = append(out, Change{Object: "subscription", ID: id, Field: "customer", Stored: stored.customerID, Stripe: sub.CustomerID})
	}
	return out
}

// viewOf is a subscription as the paywall would read it once stored.
func viewOf(sub *stripeapi.Subscription) SubscriptionView {
	v := SubscriptionView{ID: sub.ID, Status: sub.Status, PriceID: sub.PriceID, CancelAtPeriodEnd: sub.CancelAtPeriodEnd}
	if !sub.CurrentPeriodEnd.IsZero() {
		t := sub.CurrentPeriodEnd
		v.CurrentPeriodEnd = &t
	}
	return v
}

func unionKeys[A, B any](a map[string]A, b map[string]B) []string {
	ids := make([]string, 0, len(a)+len(b))
	for id := range a {
		ids = append(ids, id)
	}
	for id := range b {
		if _, ok := a[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// storedCustomerRows reads stored customers: one, or all when id is "".
func (s *Service) storedCustomerRows(ctx context.Context, id string) (map[string]*storedCustomer, error) {
	rows, err := s.db.Query(ctx, `SELECT stripe_customer_id, coalesce(user_id, ''), deleted FROM stripe_customers
WHERE $1 = '' OR stripe_customer_id = $1`, id)
	if err != nil {
		return nil, fmt.Errorf("read stored customers: %w", err)
	}
	defer rows.Close()
	out := map[string]*storedCustomer{}
	for rows.Next() {
		var cid string
		c := &storedCustomer{}
		if err := rows.Scan(&cid, &c.userID, &c.deleted); err != nil {
			return nil, fmt.Errorf("read stored customers: %w", err)
		}
		out[cid] = c
	}
	return out, rows.Err()
}

// storedSubscriptions reads stored subscriptions of one customer, or one
// subscription, or all.
func (s *Service) storedSubscriptions(ctx context.Context, customerID, id string) (map[string]*storedSub, error) {
	rows, err := s.db.Query(ctx, `SELECT stripe_subscription_id, stripe_customer_id, status, coalesce(price_id, ''),
    current_period_end, cancel_at_period_end, source_time, trial_end, current_period_start, coalesce(latest_invoice, '')
FROM stripe_subscriptions
WHERE ($1 = '' OR stripe_customer_id = $1) AND ($2 = '' OR stripe_subscription_id = $2)`, customerID, id)
	if err != nil {
		return nil, fmt.Errorf("read stored subscriptions: %w", err)
	}
	defer rows.Close()
	out := map[string]*storedSub{}
	for rows.Next() {
		r := &storedSub{}
		if err := rows.Scan(&r.view.ID, &r.customerID, &r.view.Status, &r.view.PriceID, &r.view.CurrentPeriodEnd,
			&r.view.CancelAtPeriodEnd, &r.at, &r.next.trialEnd, &r.next.periodStart, &r.next.latestInvoice); err != nil {
			return nil, fmt.Errorf("read stored subscriptions: %w", err)
		}
		out[r.view.ID] = r
	}
	return out, rows.Err()
}

// recordVerify stores a run's counts for the drift metrics.
func (s *Service) recordVerify(ctx context.Context, scope string, repair bool, started time.Time, res VerifyResult) error {
	count := func(cs []Change) []byte {
		m := map[string]int{}
		for _, c := range cs {
			m[c.Key()]++
		}
		b, _ := json.Marshal(m)
		return b
	}
	const q = `INSERT INTO stripe_verify_runs (scope, repair, found, repaired, remaining, started_at)
VALUES ($1, $2, $3, $4, $5, $6)`
	if _, err := s.db.Exec(ctx, q, scope, repair, count(res.Found), count(res.Repaired), len(res.Remaining), started); err != nil {
		return fmt.Errorf("record verify run: %w", err)
	}
	return nil
}

// Convergence reads the sweeper's cursor and the drift counts of every
// verify run, for the metrics.
func (s *Service) Convergence(ctx context.Context) (cursor time.Time, found, repaired map[string]int64, err error) {
	const q = `
SELECT (SELECT cursor FROM stripe_sweeper WHERE name = 'events'),
       coalesce((SELECT jsonb_object_agg(k, n) FROM (SELECT k, sum(v::bigint) AS n
                 FROM stripe_verify_runs, jsonb_each_text(found) AS f(k, v) GROUP BY k) x), '{}'),
       coalesce((SELECT jsonb_object_agg(k, n) FROM (SELECT k, sum(v::bigint) AS n
                 FROM stripe_verify_runs, jsonb_each_text(repaired) AS f(k, v) GROUP BY k) x), '{}')`
	var c *time.Time
	var f, r []byte
	if err = s.db.QueryRow(ctx, q).Scan(&c, &f, &r); err != nil {
		return time.Time{}, nil, nil, fmt.Errorf("read convergence state: %w", err)
	}
	if c != nil {
		cursor = *c
	}
	if err = json.Unmarshal(f, &found); err == nil {
		err = json.Unmarshal(r, &repaired)
	}
	return cursor, found, repaired, err
}
