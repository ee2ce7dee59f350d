package billing

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/stripeapi"
)

// Outcome is what processing an event came to.
type Outcome string

const (
	Processed Outcome = "processed" // applied now
	Duplicate Outcome = "duplicate" // already processed or ignored: nothing changed
	Ignored   Outcome = "ignored"   // recorded, not acted on
	Failed    Outcome = "failed"    // recorded as failed; see the error
)

// EventResult is the outcome of one event, with a note for the ledger (why
// it was ignored, or a mapping change that was refused).
type EventResult struct {
	Outcome Outcome
	Note    string

	// missingPrice is the price of the event's subscription when lockstep
	// has not stored it (or its product) yet: read after the commit.
	missingPrice string
}

// action is an event parsed for the processor: the customer it locks and
// the one object it carries.
type action struct {
	customerID string
	session    *stripeapi.CheckoutSession
	customer   *stripeapi.Customer
	sub        *stripeapi.Subscription
	invoice    *stripeapi.Invoice
	// The catalog is account-wide (no customer) and the entitlement
	// summary a customer's whole set: see catalog.go, entitlements.go.
	product *stripeapi.Product
	price   *stripeapi.Price
	summary *stripeapi.EntitlementSummary
}

// handledTypes are the event types lockstep acts on; others are ignored.
var handledTypes = map[string]func(b []byte) (*action, error){
	"checkout.session.completed":                   parseSessionAction,
	"checkout.session.async_payment_succeeded":     parseSessionAction,
	"checkout.session.async_payment_failed":        parseSessionAction,
	"customer.created":                             parseCustomerAction,
	"customer.updated":                             parseCustomerAction,
	"customer.deleted":                             parseCustomerAction,
	"customer.subscription.created":                parseSubscriptionAction,
	"customer.subscription.updated":                parseSubscriptionAction,
	"customer.subscription.deleted":                parseSubscriptionAction,
	"customer.subscription.paused":                 parseSubscriptionAction,
	"customer.subscription.resumed":                parseSubscriptionAction,
	"customer.subscription.trial_will_end":         parseSubscriptionAction,
	"customer.subscription.pending_update_applied": parseSubscriptionAction,
	"invoice.paid":                                 parseInvoiceAction,
	"invoice.payment_failed":                       parseInvoiceAction,
	"invoice.payment_succeeded":                    parseInvoiceAction,
	"invoice.finalized":                            parseInvoiceAction,
	"invoice.voided":                               parseInvoiceAction,
	"invoice.marked_uncollectible":                 parseInvoiceAction,

	// The paywall's: the catalog, a customer's entitlements, and the invoice
	// whose hosted page confirms a payment.
	"invoice.payment_action_required": parseInvoiceAction,
	"product.created":                 parseProductAction(false),
	"product.updated":                 parseProductAction(false),
	"product.deleted":                 parseProductAction(true),
	"price.created":                   parsePriceAction(false),
	"price.updated":                   parsePriceAction(false),
	"price.deleted":                   parsePriceAction(true),
	"entitlements.active_entitlement_summary.updated": parseEntitlementSummaryAction,
}

// parseProductAction parses a product event's object; deleted marks it
// deleted (product.deleted carries the product's last state).
func parseProductAction(deleted bool) func(b []byte) (*action, error) {
	return func(b []byte) (*action, error) {
		p, err := stripeapi.ParseProduct(b)
		if err != nil {
			return nil, err
		}
		if deleted {
			p.Deleted, p.Active = true, false
		}
		return &action{product: p}, nil
	}
}

func parsePriceAction(deleted bool) func(b []byte) (*action, error) {
	return func(b []byte) (*action, error) {
		p, err := stripeapi.ParsePrice(b)
		if err != nil {
			return nil, err
		}
		if deleted {
			p.Deleted, p.Active = true, false
		}
		return &action{price: p}, nil
	}
}

func parseEntitlementSummaryAction(b []byte) (*action, error) {
	sum, err := stripeapi.ParseEntitlementSummary(b)
	if err != nil {
		return nil, err
	}
	return &action{customerID: sum.CustomerID, summary: sum}, nil
}

func parseSessionAction(b []byte) (*action, error) {
	s, err := stripeapi.ParseCheckoutSession(b)
	if err != nil {
		return nil, err
	}
	return &action{customerID: s.CustomerID, session: s}, nil
}

func parseCustomerAction(b []byte) (*action, error) {
	c, err := stripeapi.ParseCustomer(b)
	if err != nil {
		return nil, err
	}
	return &action{customerID: c.ID, customer: c}, nil
}

func parseSubscriptionAction(b []byte) (*action, error) {
	s, err := stripeapi.ParseSubscription(b)
	if err != nil {
		return nil, err
	}
	return &action{customerID: s.CustomerID, sub: s}, nil
}

func parseInvoiceAction(b []byte) (*action, error) {
	inv, err := stripeapi.ParseInvoice(b)
	if err != nil {
		return nil, err
	}
	return &action{customerID: inv.CustomerID, invoice: inv}, nil
}

// prepare checks that ev's object is what its type promises, before
// anything is written, and parses it. An error wraps stripeapi.ErrMalformed.
func prepare(ev *stripeapi.Event) (*action, error) {
	parse, ok := handledTypes[ev.Type]
	if !ok {
		return nil, nil
	}
	return parse(ev.Object)
}

// ProcessEvent applies a verified webhook event exactly once. The mutation
// and the ledger's processed mark commit together under the customer's
// lock; a failure is recorded after the rollback, and a later delivery (or
// a replay) processes the event again. An error is returned only with
// Failed (or for a malformed event, with nothing written).
func (s *Service) ProcessEvent(ctx context.Context, ev *stripeapi.Event) (EventResult, error) {
	return s.processEvent(ctx, ev, "webhook")
}

func (s *Service) processEvent(ctx context.Context, ev *stripeapi.Event, writer string) (EventResult, error) {
	act, err := prepare(ev)
	if err != nil {
		return EventResult{}, err
	}
	if act != nil && act.customerID != "" {
		ctx = logging.With(ctx, slog.String("customer", act.customerID))
	}
	switch {
	case act == nil:
		return s.ignore(ctx, ev, "", "event type not handled")
	case act.product != nil || act.price != nil:
		return s.processCatalogEvent(ctx, ev, act)
	case act.customerID == "":
		return s.ignore(ctx, ev, "", "event names no customer")
	}
	// A cheap read first: most duplicates stop here without taking the lock.
	switch st, err := eventStatus(ctx, s.db, ev.ID); {
	case err != nil:
		return s.fail(ctx, ev, act, err)
	case st == StatusProcessed || st == StatusIgnored:
		return EventResult{Outcome: Duplicate}, nil
	}
	// A status Stripe added later is stored as Stripe names it, and counted.
	s.noteUnknownStatus(ctx, act.sub)
	if act.session != nil {
		s.noteUnknownStatus(ctx, act.session.Subscription)
	}

	if act.summary != nil {
		return s.processEntitlementsEvent(ctx, ev, act, writer)
	}

	// Two snapshots of the same second settle from the API, outside the lock.
	var res EventResult
	err = s.settleTies(ctx, func(fresh *snapshot) error {
		var err error
		res, err = s.applyEvent(ctx, ev, act, fresh, writer)
		return err
	})
	if err != nil {
		return s.fail(ctx, ev, act, err)
	}
	if res.missingPrice != "" {
		s.fillCatalog(ctx, res.missingPrice)
	}
	return res, nil
}

func (s *Service) ignore(ctx context.Context, ev *stripeapi.Event, customerID, reason string) (EventResult, error) {
	inserted, err := recordIgnored(ctx, s.db, ev, customerID, reason)
	if err != nil {
		return EventResult{Outcome: Failed}, err
	}
	if !inserted {
		return EventResult{Outcome: Duplicate}, nil
	}
	return EventResult{Outcome: Ignored, Note: reason}, nil
}

func (s *Service) fail(ctx context.Context, ev *stripeapi.Event, act *action, cause error) (EventResult, error) {
	if err := recordFailed(ctx, s.db, ev, act.customerID, cause); err != nil {
		s.log.ErrorContext(ctx, "could not record event failure", slog.String("event_id", ev.ID),
			slog.String("error", err.Error()))
	}
	return EventResult{Outcome: Failed}, cause
}

// errDuplicate rolls back a transaction that found, under the lock, its
// event already done by another delivery (one that raced past the read
// before the lock).
var errDuplicate = errors.New("event already processed")

// applyEvent runs the event's transaction. fresh, when set, is the
// subscription as fetched from Stripe to settle a tie, and replaces the
// event's own.
func (s *Service) applyEvent(ctx context.Context, ev *stripeapi.Event, act *action, fresh *snapshot, writer string) (EventResult, error) {
	var res EventResult
	err := s.locks.InCustomerTx(ctx, act.customerID, lockmgr.Who{Writer: writer, Ref: ev.ID}, func(ctx context.Context, tx *lockmgr.Tx) error {
		var err error
		res, err = s.apply(ctx, tx, ev, act, fresh)
		return err
	})
	if errors.Is(err, errDuplicate) {
		return EventResult{Outcome: Duplicate}, nil
	}
	return res, err
}

// apply makes the event's change and its processed mark in one or two
// round trips. The first carries, behind BEGIN and the lock, the ledger
// read, the customer row, the event's writes and, when nothing is left to
// decide, the mark: a subscription or invoice event is one round trip and
// COMMIT (a subscription snapshot that arrives out of order, one more to
// read the stored one). It writes before it knows whether the ledger already has the
// event, and rolls back if so (errDuplicate). An event that names a user
// reads the mapping in that trip too; the second trip carries what the
// mapping rules decide and the mark, with a note when a change was refused.
func (s *Service) apply(ctx context.Context, tx *lockmgr.Tx, ev *stripeapi.Event, act *action, fresh *snapshot) (EventResult, error) {
	b := &pgx.Batch{}
	var status string
	queueEventStatus(b, ev.ID, &status)
	queueEnsureCustomer(b, act.customerID)
	var sw *subscriptionWrite
	switch {
	case act.sub != nil && fresh != nil:
		sw = queueApplySubscription(b, *fresh)
	case act.sub != nil:
		sw = queueApplySubscription(b, snapshot{sub: act.sub, at: ev.Created, source: ev.ID})
	case act.invoice != nil:
		queueApplyInvoice(b, act.invoice, ev.Created, ev.ID)
	}
	users, linkedAt := act.claimedUsers()
	var note string
	var found *[]linkRow
	switch len(users) {
	case 0:
	case 1:
		found = queueReadLink(b, act.customerID, users[0])
	default:
		note = noteTwoUsers
	}
	deleted := act.customer != nil && (ev.Type == "customer.deleted" || act.customer.Deleted)
	if found == nil {
		if deleted {
			queueMarkCustomerDeleted(b, act.customerID)
		}
		queueMarkProcessed(b, ev, act.customerID, note)
	}
	if err := tx.SendBatch(ctx, b); err != nil {
		return EventResult{}, err
	}
	if status == StatusProcessed || status == StatusIgnored {
		return EventResult{}, errDuplicate
	}
	var missing string
	if sw != nil {
		if err := sw.settle(ctx, tx); err != nil {
			return EventResult{}, err
		}
		if sw.missingCatalog {
			missing = sw.view.PriceID
		}
	}
	switch {
	case sw != nil && sw.tie != nil:
		return EventResult{}, sw.tie
	case found == nil:
		return EventResult{Outcome: Processed, Note: note, missingPrice: missing}, nil
	}

	note, writes, err := s.webhookLink(ctx, ev, act.customerID, users[0], linkedAt, *found)
	if err != nil {
		return EventResult{}, err
	}
	b = &pgx.Batch{}
	queueLinkWrites(b, writes)
	if deleted {
		queueMarkCustomerDeleted(b, act.customerID)
	}
	queueMarkProcessed(b, ev, act.customerID, note)
	if err := tx.SendBatch(ctx, b); err != nil {
		return EventResult{}, err
	}
	return EventResult{Outcome: Processed, Note: note, missingPrice: missing}, nil
}

// claimedUsers lists the users the event's object names for its customer,
// with the Stripe time of the object, for the mapping.
func (a *action) claimedUsers() ([]string, time.Time) {
	switch {
	case a.session != nil:
		return a.session.ClaimedUsers(), a.session.Created
	case a.customer != nil && a.customer.MetadataUserID != "":
		return []string{a.customer.MetadataUserID}, a.customer.Created
	}
	return nil, time.Time{}
}

// The notes a refused mapping leaves: in the event's ledger row for a
// webhook, in the output of a sync or verify --repair (ApplyCustomer).
const (
	noteCustomerClaimed = "mapping refused: customer is mapped to another user"
	noteUserMapped      = "mapping refused: user is mapped to another customer (the checkout-success call re-points)"
	noteTwoUsers        = "mapping refused: the object names two different users"
)

// decideNamedLink decides a mapping Stripe's object names (an event's, or
// a customer read by sync): only when nobody is mapped yet. It never
// re-points a mapping: a refusal is a note, not an error, so that nothing
// retries what can never succeed.
func decideNamedLink(customerID, userID string, at time.Time, found []linkRow) (note string, writes []linkWrite, err error) {
	res, writes, err := decideLink(customerID, userID, at, webhookLink, found)
	switch {
	case errors.Is(err, ErrCustomerClaimed):
		return noteCustomerClaimed, nil, nil
	case err != nil:
		return "", nil, err
	case res == LinkRefused:
		return noteUserMapped, nil, nil
	}
	return "", writes, nil
}

// webhookLink is decideNamedLink for an event, warning when the event
// names another user for a mapped customer.
func (s *Service) webhookLink(ctx context.Context, ev *stripeapi.Event, customerID, userID string, at time.Time, found []linkRow) (string, []linkWrite, error) {
	note, writes, err := decideNamedLink(customerID, userID, at, found)
	if note == noteCustomerClaimed {
		s.log.WarnContext(ctx, "webhook names another user for a mapped customer; mapping kept",
			slog.String("event_id", ev.ID), slog.String("customer", customerID))
	}
	return note, writes, err
}
