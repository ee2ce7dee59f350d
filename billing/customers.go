package billing

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
)

// queueEnsureCustomer queues the insert of the customer row if it is
// missing. It locks no row when the customer exists.
func queueEnsureCustomer(b *pgx.Batch, customerID string) {
	const q = `INSERT INTO stripe_customers (stripe_customer_id) VALUES ($1) ON CONFLICT DO NOTHING`
	queueExec(b, "ensure customer %s", customerID, q, customerID)
}

func queueMarkCustomerDeleted(b *pgx.Batch, customerID string) {
	const q = `UPDATE stripe_customers SET deleted = true, updated_at = now()
WHERE stripe_customer_id = $1 AND NOT deleted`
	queueExec(b, "mark customer %s deleted", customerID, q, customerID)
}

// linkKind says who asks for a mapping.
type linkKind int

const (
	// webhookLink maps a user only when neither the user nor the customer is
	// mapped yet; it never re-points a mapping.
	webhookLink linkKind = iota
	// authoritativeLink is the user's own checkout-success call: it may
	// re-point the user from an older customer to this one.
	authoritativeLink
)

// LinkResult says what a link request did to the mapping.
type LinkResult string

const (
	LinkCreated    LinkResult = "created"    // the user now maps to this customer
	LinkUnchanged  LinkResult = "unchanged"  // it already did
	LinkRepointed  LinkResult = "repointed"  // it mapped to an older customer before
	LinkSuperseded LinkResult = "superseded" // the user keeps a newer customer
	LinkRefused    LinkResult = "refused"    // a webhook does not re-point a mapped user
)

type linkRow struct {
	customerID string
	userID     *string
	linkedAt   *time.Time
}

// newer reports whether the link (at, customerID) outranks other's: the
// newer Stripe object wins, and equal times fall to the greater customer id,
// so two writers always agree whatever order they run in.
func newer(at time.Time, customerID string, other linkRow) bool {
	var otherAt time.Time
	if other.linkedAt != nil {
		otherAt = *other.linkedAt
	}
	if !at.Equal(otherAt) {
		return at.After(otherAt)
	}
	return customerID > other.customerID
}

// queueReadLink queues what deciding a mapping of userID to customerID
// needs: the user's lock, then the rows of the customer and of the user's
// current customer. The caller holds the customer's lock, and the customer
// row exists by the time the read runs. Locks are always taken customer
// first, then user, and no writer holds two customer locks, so two writers
// cannot deadlock; two customers racing for one user serialize on the
// user's lock. The rows are in the result once the batch ran.
func queueReadLink(b *pgx.Batch, customerID, userID string) *[]linkRow {
	const q = `SELECT stripe_customer_id, user_id, linked_at FROM stripe_customers
WHERE stripe_customer_id = $1 OR user_id = $2`
	lockmgr.QueueLockUser(b, userID)
	found := new([]linkRow)
	b.Queue(q, customerID, userID).Fn = func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err == nil {
			*found, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (linkRow, error) {
				var l linkRow
				err := r.Scan(&l.customerID, &l.userID, &l.linkedAt)
				return l, err
			})
		}
		if err != nil {
			return fmt.Errorf("read mapping for %s: %w", customerID, err)
		}
		return nil
	}
	return found
}

// linkWrite sets one customer row's mapping (nil clears it).
type linkWrite struct {
	customerID string
	userID     *string
	linkedAt   *time.Time
}

// decideLink applies the rules of kind to a request to map userID to
// customerID, given the rows queueReadLink read, and returns what to write,
// in order. A customer mapped to another user is never re-pointed:
// ErrCustomerClaimed.
func decideLink(customerID, userID string, linkedAt time.Time, kind linkKind, found []linkRow) (LinkResult, []linkWrite, error) {
	var cust, current *linkRow // this customer's row; the user's current customer
	for i := range found {
		if found[i].customerID == customerID {
			cust = &found[i]
		} else {
			current = &found[i]
		}
	}
	link := linkWrite{customerID: customerID, userID: &userID, linkedAt: &linkedAt}
	switch {
	case cust == nil:
		return "", nil, fmt.Errorf("link %s: customer row missing", customerID)
	case cust.userID != nil && *cust.userID == userID:
		return LinkUnchanged, nil, nil
	case cust.userID != nil:
		return "", nil, ErrCustomerClaimed
	case current == nil:
		return LinkCreated, []linkWrite{link}, nil
	case kind == webhookLink:
		return LinkRefused, nil, nil
	case !newer(linkedAt, customerID, *current):
		return LinkSuperseded, nil, nil
	}
	// Clear the old row first: user_id is unique and checked row by row.
	return LinkRepointed, []linkWrite{{customerID: current.customerID}, link}, nil
}

// queueLinkWrites queues writes, in order.
func queueLinkWrites(b *pgx.Batch, writes []linkWrite) {
	const q = `UPDATE stripe_customers SET user_id = $2, linked_at = $3, updated_at = now()
WHERE stripe_customer_id = $1`
	for _, w := range writes {
		queueExec(b, "set mapping of %s", w.customerID, q, w.customerID, w.userID, w.linkedAt)
	}
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
