package billing

import (
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/stripeapi"
)

// upsertInvoice stores an invoice snapshot unless the stored one is newer,
// or says the same (the unchanged rule, see upsertSubscription). paid and
// void are final. Snapshots of the same second are ordered by how far along
// the invoice is (draft < open < uncollectible < paid, void), so the result
// does not depend on delivery order. A hosted_invoice_url, once known, is
// kept by a snapshot that carries none.
const upsertInvoice = `
INSERT INTO stripe_invoices AS i (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status,
    amount_due, amount_paid, currency, source_time, source, hosted_invoice_url)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (stripe_invoice_id) DO UPDATE SET
    stripe_subscription_id = coalesce(excluded.stripe_subscription_id, i.stripe_subscription_id),
    status = excluded.status,
    amount_due = excluded.amount_due,
    amount_paid = excluded.amount_paid,
    currency = excluded.currency,
    hosted_invoice_url = coalesce(excluded.hosted_invoice_url, i.hosted_invoice_url),
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
  AND ((i.stripe_subscription_id, i.status, i.amount_due, i.amount_paid, i.currency, i.hosted_invoice_url)
       IS DISTINCT FROM
       (coalesce(excluded.stripe_subscription_id, i.stripe_subscription_id), excluded.status, excluded.amount_due,
        excluded.amount_paid, excluded.currency, coalesce(excluded.hosted_invoice_url, i.hosted_invoice_url))
       OR (excluded.source <> 'api' AND excluded.source_time > i.source_time))
RETURNING true`

// queueApplyInvoice queues the upsert of inv as of at (an event's created
// time, or Stripe's time of the API answer that carried it), from source
// (the event id, or "api"). *applied is whether it was written, once the
// batch ran: false when the stored invoice is newer, final, or the same.
func queueApplyInvoice(b *pgx.Batch, inv *stripeapi.Invoice, at time.Time, source string) *bool {
	applied := new(bool)
	b.Queue(upsertInvoice, inv.ID, inv.CustomerID, nullString(inv.SubscriptionID), inv.Status,
		inv.AmountDue, inv.AmountPaid, inv.Currency, at, source, nullString(inv.HostedInvoiceURL)).Fn = func(br pgx.BatchResults) error {
		err := br.QueryRow().Scan(applied)
		if err != nil && !isNoRows(err) {
			return fmt.Errorf("upsert invoice %s: %w", inv.ID, err)
		}
		return nil
	}
	return applied
}
