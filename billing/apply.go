package billing

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

// Change is one difference between what lockstep stores and what Stripe
// says: what a sync writes (or, in a dry run, would write), and what verify
// reports.
type Change struct {
	Object string // customer, mapping, subscription, invoice
	ID     string
	Field  string // "" when the whole object is missing on one side
	Stored string // "" when lockstep has no such object
	Stripe string // "" when Stripe has no such object
}

// Key is the change's object and field, "subscription.status", the label
// of the drift metrics ("subscription.missing" for a missing object).
func (c Change) Key() string {
	if c.Field == "" {
		return c.Object + ".missing"
	}
	return c.Object + "." + c.Field
}

func (c Change) String() string {
	if c.Object == "entitlement" && c.Field == "feature" { // a feature gained or lost
		switch {
		case c.Stored == "":
			return fmt.Sprintf("entitlement %s feature %s: stored (none), Stripe says granted", c.ID, c.Stripe)
		case c.Stripe == "":
			return fmt.Sprintf("entitlement %s feature %s: stored granted, Stripe says (none)", c.ID, c.Stored)
		}
		return fmt.Sprintf("entitlement %s feature %s: stored as %s, Stripe says %s", c.ID, c.Stripe, c.Stored, c.Stripe)
	}
	if c.Field == "" {
		switch {
		case c.Stored == "":
			return fmt.Sprintf("%s %s: not stored; Stripe has it (%s)", c.Object, c.ID, c.Stripe)
		default:
			return fmt.Sprintf("%s %s: stored (%s); Stripe has no such %s", c.Object, c.ID, c.Stored, c.Object)
		}
	}
	return fmt.Sprintf("%s %s %s: stored %s, Stripe says %s", c.Object, c.ID, c.Field, quote(c.Stored), quote(c.Stripe))
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	return s
}

// ApplyOptions says who applies a snapshot read from Stripe's API, and
// whether to keep what it writes.
type ApplyOptions struct {
	Writer string // for pg_stat_activity and the metrics: "sync", "verify"
	// DryRun runs the same transaction, with the same locks and rules,
	// and rolls it back: the changes are what would be written.
	DryRun bool
}

// errDryRun rolls back a dry run's transaction once its changes are known.
var errDryRun = errors.New("dry run")

// inSnapshotTx runs fn under customerID's lock, as o says.
func (s *Service) inSnapshotTx(ctx context.Context, customerID, ref string, o ApplyOptions, fn func(ctx context.Context, tx *lockmgr.Tx) error) error {
	err := s.locks.InCustomerTx(ctx, customerID, lockmgr.Who{Writer: o.Writer, Ref: ref}, func(ctx context.Context, tx *lockmgr.Tx) error {
		if err := fn(ctx, tx); err != nil {
			return err
		}
		if o.DryRun {
			return errDryRun // rolls back
		}
		return nil
	})
	if errors.Is(err, errDryRun) {
		return nil
	}
	return err
}

// storedRow is the read of the row a snapshot write compares against:
// one row, or none when lockstep has no such object, scanned into dest.
type storedRow struct {
	object, id string // for the error: "read customer cus_..."
	sql        string // one row by $1 = id
	dest       []any
}

// applyStored is the one shape of the Apply* writers: under customerID's
// lock (as o says), one round trip that reads the stored row (first, so
// that it is the row before this write), ensures the customer and carries
// the snapshot's writes (queue's); then done, with the batch's answers and
// whether the row was found, works out the changes and may write more.
func (s *Service) applyStored(ctx context.Context, customerID, ref string, o ApplyOptions, stored storedRow,
	queue func(b *pgx.Batch) (done func(ctx context.Context, tx *lockmgr.Tx, found bool) error)) error {
	return s.inSnapshotTx(ctx, customerID, ref, o, func(ctx context.Context, tx *lockmgr.Tx) error {
		b := &pgx.Batch{}
		found := false
		b.Queue(stored.sql, stored.id).Fn = func(br pgx.BatchResults) error {
			err := br.QueryRow().Scan(stored.dest...)
			switch {
			case isNoRows(err):
			case err != nil:
				return fmt.Errorf("read %s %s: %w", stored.object, stored.id, err)
			default:
				found = true
			}
			return nil
		}
		queueEnsureCustomer(b, customerID)
		done := queue(b)
		if err := tx.SendBatch(ctx, b); err != nil {
			return err
		}
		return done(ctx, tx, found)
	})
}

// ApplyCustomer stores a customer read from Stripe: its row, its deletion,
// and the user its metadata names (metadata.user_id) under the same rules as
// a webhook: only when neither the customer nor the user is mapped yet. A
// refused mapping is a note (the webhook's words), not an error.
func (s *Service) ApplyCustomer(ctx context.Context, c stripeapi.Dated[*stripeapi.Customer], o ApplyOptions) (changes []Change, note string, err error) {
	cust := c.Obj
	user := cust.MetadataUserID // checked by stripeapi.ParseCustomer
	var wasDeleted bool
	stored := storedRow{object: "customer", id: cust.ID, dest: []any{&wasDeleted},
		sql: `SELECT deleted FROM stripe_customers WHERE stripe_customer_id = $1`}
	err = s.applyStored(ctx, cust.ID, cust.ID, o, stored, func(b *pgx.Batch) func(context.Context, *lockmgr.Tx, bool) error {
		changes, note = nil, ""
		var found *[]linkRow
		if user != "" {
			found = queueReadLink(b, cust.ID, user)
		}
		if cust.Deleted {
			queueMarkCustomerDeleted(b, cust.ID)
		}
		return func(ctx context.Context, tx *lockmgr.Tx, existed bool) error {
			if !existed {
				changes = append(changes, Change{Object: "customer", ID: cust.ID, Stripe: state(cust.Deleted, "deleted", "present")})
			} else if cust.Deleted && !wasDeleted {
				changes = append(changes, Change{Object: "customer", ID: cust.ID, Field: "deleted", Stored: "false", Stripe: "true"})
			}
			if found == nil {
				return nil
			}
			var writes []linkWrite
			var err error
			note, writes, err = decideNamedLink(cust.ID, user, cust.Created, *found)
			if err != nil || len(writes) == 0 {
				return err
			}
			b := &pgx.Batch{}
			queueLinkWrites(b, writes)
			if err := tx.SendBatch(ctx, b); err != nil {
				return err
			}
			changes = append(changes, Change{Object: "mapping", ID: cust.ID, Field: "user_id", Stripe: user})
			return nil
		}
	})
	if err != nil {
		return nil, "", fmt.Errorf("apply customer %s: %w", cust.ID, err)
	}
	return changes, note, nil
}

func state(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// ApplySubscription stores a subscription read from Stripe, dated by the
// answer that carried it, under the same ordering rules as a webhook: a
// newer stored snapshot is kept, a terminal one is final, and a snapshot of
// the same second with other content is settled by reading Stripe again.
func (s *Service) ApplySubscription(ctx context.Context, d stripeapi.Dated[*stripeapi.Subscription], o ApplyOptions) ([]Change, error) {
	sub := d.Obj
	if sub.CustomerID == "" {
		return nil, fmt.Errorf("apply subscription %s: it names no customer", sub.ID)
	}
	var changes []Change
	missingPrice := ""
	err := s.settleTies(ctx, func(fresh *snapshot) error {
		snap := snapshot{sub: sub, at: d.At, source: "api"}
		if fresh != nil {
			snap = *fresh
		}
		var v SubscriptionView
		var more storedSubscription
		stored := storedRow{object: "subscription", id: sub.ID,
			sql: `SELECT status, coalesce(price_id, ''), current_period_end, cancel_at_period_end,
    trial_end, current_period_start, coalesce(latest_invoice, '')
FROM stripe_subscriptions WHERE stripe_subscription_id = $1`,
			dest: []any{&v.Status, &v.PriceID, &v.CurrentPeriodEnd, &v.CancelAtPeriodEnd,
				&more.trialEnd, &more.periodStart, &more.latestInvoice}}
		return s.applyStored(ctx, sub.CustomerID, sub.ID, o, stored, func(b *pgx.Batch) func(context.Context, *lockmgr.Tx, bool) error {
			changes = nil
			sw := queueApplySubscription(b, snap)
			return func(ctx context.Context, tx *lockmgr.Tx, existed bool) error {
				if err := sw.settle(ctx, tx); err != nil {
					return err
				}
				if sw.tie != nil {
					return sw.tie
				}
				missingPrice = ""
				if sw.missingCatalog {
					missingPrice = sw.view.PriceID
				}
				if sw.stale {
					return nil
				}
				var old *SubscriptionView
				if existed {
					v.ID = sub.ID
					old = &v
				}
				changes = subscriptionChanges(old, &sw.view)
				if old != nil {
					changes = append(changes, nextStepChanges(more, snap.sub)...)
				}
				return nil
			}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("apply subscription %s: %w", sub.ID, err)
	}
	if !o.DryRun {
		// A full sync has listed the catalog first, so this finds nothing
		// missing; a sync or repair of one customer has not.
		s.fillCatalog(ctx, missingPrice)
	}
	return changes, nil
}

// subscriptionChanges lists the fields the paywall reads that differ
// between stored (nil when missing) and other.
func subscriptionChanges(stored, other *SubscriptionView) []Change {
	if stored == nil {
		return []Change{{Object: "subscription", ID: other.ID, Stripe: other.Status}}
	}
	var out []Change
	add := func(field, a, b string) {
		if a != b {
			out = append(out, Change{Object: "subscription", ID: other.ID, Field: field, Stored: a, Stripe: b})
		}
	}
	add("status", stored.Status, other.Status)
	add("price", stored.PriceID, other.PriceID)
	add("current_period_end", timeString(stored.CurrentPeriodEnd), timeString(other.CurrentPeriodEnd))
	add("cancel_at_period_end", strconv.FormatBool(stored.CancelAtPeriodEnd), strconv.FormatBool(other.CancelAtPeriodEnd))
	return out
}

// nextStepChanges lists the fields the paywall's next step reads that a
// written snapshot changed: trial_end, current_period_start,
// latest_invoice (a field the snapshot leaves empty keeps the stored one,
// as upsertSubscription does).
func nextStepChanges(stored storedSubscription, s *stripeapi.Subscription) []Change {
	var out []Change
	add := changeAdder(&out, "subscription", s.ID)
	add("trial_end", timeString(stored.trialEnd), timeString(nullTime(s.TrialEnd)))
	if !s.CurrentPeriodStart.IsZero() {
		add("current_period_start", timeString(stored.periodStart), timeString(&s.CurrentPeriodStart))
	}
	if s.LatestInvoiceID != "" {
		add("latest_invoice", stored.latestInvoice, s.LatestInvoiceID)
	}
	return out
}

func timeString(t *time.Time) string {
	if t == nil || t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// ApplyInvoice stores an invoice read from Stripe, dated by the answer
// that carried it, under the same rules as an invoice event.
func (s *Service) ApplyInvoice(ctx context.Context, d stripeapi.Dated[*stripeapi.Invoice], o ApplyOptions) ([]Change, error) {
	inv := d.Obj
	if inv.CustomerID == "" {
		return nil, fmt.Errorf("apply invoice %s: it names no customer", inv.ID)
	}
	var changes []Change
	var oldStatus string
	stored := storedRow{object: "invoice", id: inv.ID, dest: []any{&oldStatus},
		sql: `SELECT status FROM stripe_invoices WHERE stripe_invoice_id = $1`}
	err := s.applyStored(ctx, inv.CustomerID, inv.ID, o, stored, func(b *pgx.Batch) func(context.Context, *lockmgr.Tx, bool) error {
		changes = nil
		applied := queueApplyInvoice(b, inv, d.At, "api")
		return func(_ context.Context, _ *lockmgr.Tx, existed bool) error {
			switch {
			case !*applied:
			case !existed:
				changes = []Change{{Object: "invoice", ID: inv.ID, Stripe: inv.Status}}
			case oldStatus != inv.Status:
				changes = []Change{{Object: "invoice", ID: inv.ID, Field: "status", Stored: oldStatus, Stripe: inv.Status}}
			}
			return nil
		}
	})
	if err != nil {
		return nil, fmt.Errorf("apply invoice %s: %w", inv.ID, err)
	}
	return changes, nil
}
