package billing

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/stripeapi"
)

// upsertInvoice stores an invoice snapshot unless the stored one is newer.
// paid and void are final. Snapshots of the same second are ordered by how
// far along the invoice is (draft < open < uncollectible < paid, void), so
// the result does not depend on delivery order.
const upsertInvoice = `
INSERT INTO stripe_invoices AS i (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status,
    amount_due, amount_paid, currency, source_time, source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (stripe_invoice_id) DO UPDATE SET
    stripe_subscription_id = coalesce(excluded.stripe_subscription_id, i.stripe_subscription_id),
    status = excluded.status,
    amount_due = excluded.amount_due,
    amount_paid = excluded.amount_paid,
    currency = excluded.currency,
    source_time = greatest(i.source_time, excluded.source_time),
    source = excluded.source,
    updated_at = now()
WHERE i.stripe_customer_id = excluded.stripe_customer_id
  AND i.status NOT IN ('paid', 'void')
  AND (excluded.source_time > i.source_time
       OR excluded.status IN ('paid', 'void')
       OR (excluded.source_time = i.source_time
           AND (CASE excluded.status WHEN 'draft' THEN 0 WHEN 'open' THEN 1 WHEN 'uncollectible' THEN 2 ELSE 3 END)
             > (CASE i.status WHEN 'draft' THEN 0 WHEN 'open' THEN 1 WHEN 'uncollectible' THEN 2 ELSE 3 END)))
RETURNING true`

// queueApplyInvoice queues the upsert of inv as of at (an event's created
// time, or Stripe's time of the API answer that carried it), from source
// (the event id, or "api"). *applied is whether it was stored, once the
// batch ran.
func queueApplyInvoice(b *pgx.Batch, inv *stripeapi.Invoice, at time.Time, source string) *bool {
	applied := new(bool)
	b.Queue(upsertInvoice, inv.ID, inv.CustomerID, nullString(inv.SubscriptionID), inv.Status,
		inv.AmountDue, inv.AmountPaid, inv.Currency, at, source).Fn = func(br pgx.BatchResults) error {
		err := br.QueryRow().Scan(applied)
		if err != nil && !isNoRows(err) {
			return fmt.Errorf("upsert invoice %s: %w", inv.ID, err)
		}
		return nil
	}
	return applied
}
