package billing

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
)

// ensureCustomer inserts the customer row if it is missing. It locks no row
// when the customer exists.
func ensureCustomer(ctx context.Context, db DBTX, customerID string) error {
	const q = `INSERT INTO stripe_customers (stripe_customer_id) VALUES ($1) ON CONFLICT DO NOTHING`
	if _, err := db.Exec(ctx, q, customerID); err != nil {
		return fmt.Errorf("ensure customer %s: %w", customerID, err)
	}
	return nil
}

func markCustomerDeleted(ctx context.Context, db DBTX, customerID string) error {
	const q = `UPDATE stripe_customers SET deleted = true, updated_at = now()
WHERE stripe_customer_id = $1 AND NOT deleted`
	if _, err := db.Exec(ctx, q, customerID); err != nil {
		return fmt.Errorf("mark customer %s deleted: %w", customerID, err)
	}
	return nil
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

// linkUser maps userID to customerID under the rules of kind. The caller
// holds the customer's lock; linkUser adds the user's, so two customers
// racing for one user serialize too. Locks are always taken customer first,
// then user, and no writer holds two customer locks, so they cannot
// deadlock. A customer mapped to another user is never re-pointed:
// ErrCustomerClaimed.
func linkUser(ctx context.Context, tx pgx.Tx, customerID, userID string, linkedAt time.Time, kind linkKind) (LinkResult, error) {
	if err := lockmgr.LockUser(ctx, tx, userID); err != nil {
		return "", err
	}
	const q = `SELECT stripe_customer_id, user_id, linked_at FROM stripe_customers
WHERE stripe_customer_id = $1 OR user_id = $2`
	rows, err := tx.Query(ctx, q, customerID, userID)
	if err != nil {
		return "", fmt.Errorf("read mapping for %s: %w", customerID, err)
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (linkRow, error) {
		var l linkRow
		err := r.Scan(&l.customerID, &l.userID, &l.linkedAt)
		return l, err
	})
	if err != nil {
		return "", fmt.Errorf("read mapping for %s: %w", customerID, err)
	}
	var cust, current *linkRow // this customer's row; the user's current customer
	for i := range found {
		if found[i].customerID == customerID {
			cust = &found[i]
		} else {
			current = &found[i]
		}
	}
	if cust == nil {
		return "", fmt.Errorf("link %s: customer row missing", customerID)
	}
	switch {
	case cust.userID != nil && *cust.userID == userID:
		return LinkUnchanged, nil
	case cust.userID != nil:
		return "", ErrCustomerClaimed
	case current == nil:
		return LinkCreated, setLink(ctx, tx, customerID, &userID, &linkedAt)
	case kind == webhookLink:
		return LinkRefused, nil
	case !newer(linkedAt, customerID, *current):
		return LinkSuperseded, nil
	}
	// Clear the old row first: user_id is unique and checked row by row.
	if err := setLink(ctx, tx, current.customerID, nil, nil); err != nil {
		return "", err
	}
	return LinkRepointed, setLink(ctx, tx, customerID, &userID, &linkedAt)
}

func setLink(ctx context.Context, tx pgx.Tx, customerID string, userID *string, linkedAt *time.Time) error {
	const q = `UPDATE stripe_customers SET user_id = $2, linked_at = $3, updated_at = now()
WHERE stripe_customer_id = $1`
	if _, err := tx.Exec(ctx, q, customerID, userID, linkedAt); err != nil {
		return fmt.Errorf("set mapping of %s: %w", customerID, err)
	}
	return nil
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }
