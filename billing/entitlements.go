package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

// A customer's active Stripe Entitlements are stored as one snapshot: the
// whole set replaces the stored one, under the customer's advisory lock,
// ordered by Stripe's clock (stripe_customers.entitlements_time). An
// entitlements.active_entitlement_summary.updated event carries the set, or
// only its first page (has_more): the whole set is then read from Stripe
// before the transaction, outside the lock, and dated by that answer.

// errEntitlementsTie: a set of the same second as the stored one, and
// different: the order is unknown. Settled like a subscription's tie, by
// reading the whole set from Stripe (outside the lock) and storing it.
var errEntitlementsTie = errors.New("entitlement set ties with the stored one")

// entitlementSet is a customer's set as of a Stripe time, from a source (an
// event id, or "api"). settles is set for a set read to settle a tie: it
// replaces a stored set of the same second.
type entitlementSet struct {
	ents    []stripeapi.Entitlement
	at      time.Time
	source  string
	settles bool
}

// entitlementDecision is what storing a set does.
type entitlementDecision int

const (
	entKeep  entitlementDecision = iota // stale or unchanged: nothing written
	entWrite                            // the set replaces the stored one
	entTie                              // same second, different set
)

// decideEntitlements orders a set against the stored one (storedAt nil:
// none stored yet). An older set never wins; a set equal to the stored one
// writes nothing, unless it is an event's of a later second (the unchanged
// rule, see upsertSubscription); a different set of the same second ties,
// unless it was read to settle a tie.
func decideEntitlements(storedAt *time.Time, stored map[string]stripeapi.Entitlement, set entitlementSet) entitlementDecision {
	if storedAt == nil {
		return entWrite
	}
	same := sameEntitlements(stored, set.ents)
	switch {
	case set.at.Before(*storedAt):
		return entKeep
	case set.at.Equal(*storedAt):
		switch {
		case same:
			return entKeep
		case set.settles:
			return entWrite
		}
		return entTie
	case same && set.source == "api":
		return entKeep
	}
	return entWrite
}

func sameEntitlements(stored map[string]stripeapi.Entitlement, ents []stripeapi.Entitlement) bool {
	if len(stored) != len(ents) {
		return false
	}
	for _, e := range ents {
		if s, ok := stored[e.FeatureID]; !ok || s != e {
			return false
		}
	}
	return true
}

// uniqueFeatures keeps the first entitlement of each feature.
func uniqueFeatures(ents []stripeapi.Entitlement) []stripeapi.Entitlement {
	out := make([]stripeapi.Entitlement, 0, len(ents))
	for _, e := range ents {
		if !slices.ContainsFunc(out, func(o stripeapi.Entitlement) bool { return o.FeatureID == e.FeatureID }) {
			out = append(out, e)
		}
	}
	return out
}

// writeEntitlements stores set for customerID in tx, which holds the
// customer's lock: two round trips, the reads (and, for an event, its
// ledger status), then the writes the decision asks for (and the event's
// processed mark). It returns the changes made, or errDuplicate for an
// event already done, or an errEntitlementsTie.
func writeEntitlements(ctx context.Context, tx *lockmgr.Tx, customerID string, set entitlementSet, ev *stripeapi.Event) ([]Change, error) {
	b := &pgx.Batch{}
	var status string
	if ev != nil {
		queueEventStatus(b, ev.ID, &status)
	}
	queueEnsureCustomer(b, customerID)
	var storedAt *time.Time
	b.Queue(`SELECT entitlements_time FROM stripe_customers WHERE stripe_customer_id = $1`, customerID).Fn = func(br pgx.BatchResults) error {
		if err := br.QueryRow().Scan(&storedAt); err != nil {
			return fmt.Errorf("read entitlements time of %s: %w", customerID, err)
		}
		return nil
	}
	stored := map[string]stripeapi.Entitlement{}
	b.Queue(`SELECT stripe_feature_id, lookup_key, coalesce(stripe_entitlement_id, '')
FROM stripe_entitlements WHERE stripe_customer_id = $1`, customerID).Fn = func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err == nil {
			var e stripeapi.Entitlement
			_, err = pgx.ForEachRow(rows, []any{&e.FeatureID, &e.LookupKey, &e.ID}, func() error {
				stored[e.FeatureID] = e
				return nil
			})
		}
		if err != nil {
			return fmt.Errorf("read entitlements of %s: %w", customerID, err)
		}
		return nil
	}
	if err := tx.SendBatch(ctx, b); err != nil {
		return nil, err
	}
	if status == StatusProcessed || status == StatusIgnored {
		return nil, errDuplicate
	}
	set.ents = uniqueFeatures(set.ents)
	decision := decideEntitlements(storedAt, stored, set)
	if decision == entTie {
		return nil, fmt.Errorf("customer %s: %w", customerID, errEntitlementsTie)
	}
	b = &pgx.Batch{}
	var changes []Change
	if decision == entWrite {
		changes = entitlementChanges(customerID, stored, set.ents)
		queueExec(b, "date entitlements of %s", customerID, `UPDATE stripe_customers
SET entitlements_time = $2, entitlements_source = $3, updated_at = now() WHERE stripe_customer_id = $1`,
			customerID, set.at, set.source)
		features := make([]string, len(set.ents))
		keys := make([]string, len(set.ents))
		ids := make([]*string, len(set.ents))
		for i, e := range set.ents {
			features[i], keys[i], ids[i] = e.FeatureID, e.LookupKey, nullString(e.ID)
		}
		queueExec(b, "remove entitlements of %s", customerID, `DELETE FROM stripe_entitlements
WHERE stripe_customer_id = $1 AND NOT (stripe_feature_id = ANY ($2::text[]))`, customerID, features)
		queueExec(b, "store entitlements of %s", customerID, `INSERT INTO stripe_entitlements AS e
    (stripe_customer_id, stripe_feature_id, lookup_key, stripe_entitlement_id)
SELECT $1, f, k, i FROM unnest($2::text[], $3::text[], $4::text[]) AS t (f, k, i)
ON CONFLICT (stripe_customer_id, stripe_feature_id) DO UPDATE
SET lookup_key = excluded.lookup_key, stripe_entitlement_id = excluded.stripe_entitlement_id
WHERE (e.lookup_key, e.stripe_entitlement_id) IS DISTINCT FROM (excluded.lookup_key, excluded.stripe_entitlement_id)`,
			customerID, features, keys, ids)
	}
	if ev != nil {
		note := ""
		if decision == entKeep {
			note = "stored entitlement set kept: newer or the same"
		}
		queueMarkProcessed(b, ev, customerID, note)
	}
	if b.Len() == 0 {
		return nil, nil
	}
	if err := tx.SendBatch(ctx, b); err != nil {
		return nil, err
	}
	return changes, nil
}

// entitlementChanges names each feature gained, lost, or renamed.
func entitlementChanges(customerID string, stored map[string]stripeapi.Entitlement, ents []stripeapi.Entitlement) []Change {
	var out []Change
	seen := map[string]bool{}
	for _, e := range ents {
		seen[e.FeatureID] = true
		if s, ok := stored[e.FeatureID]; !ok || s.LookupKey != e.LookupKey {
			out = append(out, Change{Object: "entitlement", ID: customerID, Field: "feature", Stored: s.LookupKey, Stripe: e.LookupKey})
		}
	}
	lost := make([]string, 0)
	for f, s := range stored {
		if !seen[f] {
			lost = append(lost, s.LookupKey)
		}
	}
	slices.Sort(lost)
	for _, k := range lost {
		out = append(out, Change{Object: "entitlement", ID: customerID, Field: "feature", Stored: k})
	}
	return out
}

// settleEntitlements runs write, and when it ends in a tie, reads the
// customer's whole set from Stripe (outside any transaction: write has
// returned) and runs write again with it. One read settles: what Stripe
// says after both same-second sets were made is newer than both.
func (s *Service) settleEntitlements(ctx context.Context, customerID string, write func(fresh *entitlementSet) error) error {
	err := write(nil)
	if !errors.Is(err, errEntitlementsTie) {
		return err
	}
	ents, at, ferr := s.stripe.ActiveEntitlements(ctx, customerID)
	if ferr != nil {
		return fmt.Errorf("settle same-second entitlement sets of %s: %w", customerID, ferr)
	}
	s.log.InfoContext(ctx, "same-second entitlement sets settled from the api", slog.String("customer", customerID))
	return write(&entitlementSet{ents: ents, at: at, settles: true})
}

// processEntitlementsEvent applies an entitlement summary event. A summary
// that says has_more is completed first from Stripe's list of the
// customer's active entitlements, outside the lock.
func (s *Service) processEntitlementsEvent(ctx context.Context, ev *stripeapi.Event, act *action, writer string) (EventResult, error) {
	customerID := act.customerID
	set := entitlementSet{ents: act.summary.Entitlements, at: ev.Created, source: ev.ID}
	if act.summary.HasMore {
		ents, at, err := s.stripe.ActiveEntitlements(ctx, customerID)
		if err != nil {
			return s.fail(ctx, ev, act, fmt.Errorf("read the whole entitlement set of %s: %w", customerID, err))
		}
		// Dated by the answer, which is no older than the event; the
		// event's id stays the source, so that it advances the stored
		// time even when the set is unchanged.
		set.ents, set.at = ents, at
		if at.Before(ev.Created) {
			set.at = ev.Created
		}
	}
	var res EventResult
	err := s.settleEntitlements(ctx, customerID, func(fresh *entitlementSet) error {
		snap := set
		if fresh != nil {
			snap.ents, snap.at, snap.settles = fresh.ents, fresh.at, true
		}
		res = EventResult{Outcome: Processed}
		return s.locks.InCustomerTx(ctx, customerID, lockmgr.Who{Writer: writer, Ref: ev.ID}, func(ctx context.Context, tx *lockmgr.Tx) error {
			_, err := writeEntitlements(ctx, tx, customerID, snap, ev)
			return err
		})
	})
	switch {
	case errors.Is(err, errDuplicate):
		return EventResult{Outcome: Duplicate}, nil
	case err != nil:
		return s.fail(ctx, ev, act, err)
	}
	return res, nil
}

// ApplyEntitlements stores a customer's whole set of active entitlements
// read from Stripe (every page of the list), dated by the answer at, under
// the customer's lock and the same ordering rules as the summary event. It
// returns a change per feature gained, lost or renamed; with o.DryRun it
// rolls back and reports what it would change.
func (s *Service) ApplyEntitlements(ctx context.Context, customerID string, ents []stripeapi.Entitlement, at time.Time, o ApplyOptions) ([]Change, error) {
	if !stripeapi.ValidID(customerID, "cus_") {
		return nil, fmt.Errorf("apply entitlements: bad customer id")
	}
	var changes []Change
	err := s.settleEntitlements(ctx, customerID, func(fresh *entitlementSet) error {
		set := entitlementSet{ents: ents, at: at, source: "api"}
		if fresh != nil {
			set = *fresh
			set.source = "api"
		}
		return s.inSnapshotTx(ctx, customerID, customerID, o, func(ctx context.Context, tx *lockmgr.Tx) error {
			var err error
			changes, err = writeEntitlements(ctx, tx, customerID, set, nil)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("apply entitlements of %s: %w", customerID, err)
	}
	return changes, nil
}
