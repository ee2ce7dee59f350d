package billing

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/stripeapi"
)

// Ledger statuses of stripe_events.
const (
	StatusProcessed = "processed"
	StatusFailed    = "failed"
	StatusIgnored   = "ignored"
)

// maxErrorLen bounds last_error.
const maxErrorLen = 1000

const selectEventStatus = `SELECT status FROM stripe_events WHERE event_id = $1`

// eventStatus returns the event's ledger status, or "" if it has none.
func eventStatus(ctx context.Context, db DBTX, eventID string) (string, error) {
	var st string
	err := db.QueryRow(ctx, selectEventStatus, eventID).Scan(&st)
	if isNoRows(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read event %s: %w", eventID, err)
	}
	return st, nil
}

// queueEventStatus queues the ledger read of eventID: *status is its
// status once the batch ran, "" when it has none.
func queueEventStatus(b *pgx.Batch, eventID string, status *string) {
	b.Queue(selectEventStatus, eventID).Fn = func(br pgx.BatchResults) error {
		err := br.QueryRow().Scan(status)
		if isNoRows(err) {
			*status = ""
			return nil
		}
		if err != nil {
			return fmt.Errorf("read event %s: %w", eventID, err)
		}
		return nil
	}
}

// queueMarkProcessed queues the event's processed mark, for the
// transaction that applies it, so the mutation and the mark commit together.
func queueMarkProcessed(b *pgx.Batch, ev *stripeapi.Event, customerID, note string) {
	const q = `
INSERT INTO stripe_events (event_id, type, api_version, stripe_customer_id, stripe_created, status,
    attempts, last_error, payload, processed_at)
VALUES ($1, $2, $3, $4, $5, 'processed', 1, $6, $7, now())
ON CONFLICT (event_id) DO UPDATE SET
    status = 'processed', attempts = stripe_events.attempts + 1, last_error = excluded.last_error,
    processed_at = now(), updated_at = now()`
	queueExec(b, "mark event %s processed", ev.ID, q, ev.ID, ev.Type, ev.APIVersion, nullString(customerID), ev.Created,
		nullString(note), json.RawMessage(ev.Payload))
}

// recordIgnored records an event lockstep does not act on. It reports false
// when the event was already in the ledger.
func recordIgnored(ctx context.Context, db DBTX, ev *stripeapi.Event, customerID, reason string) (bool, error) {
	const q = `
INSERT INTO stripe_events (event_id, type, api_version, stripe_customer_id, stripe_created, status,
    attempts, last_error, payload, processed_at)
VALUES ($1, $2, $3, $4, $5, 'ignored', 1, $6, $7, now())
ON CONFLICT (event_id) DO NOTHING`
	tag, err := db.Exec(ctx, q, ev.ID, ev.Type, ev.APIVersion, nullString(customerID), ev.Created, reason, json.RawMessage(ev.Payload))
	if err != nil {
		return false, fmt.Errorf("record event %s ignored: %w", ev.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// recordFailed records a failure after the event's transaction rolled back.
// It never downgrades an event another delivery has processed meanwhile.
// It runs even when the request's context is done.
func recordFailed(ctx context.Context, db DBTX, ev *stripeapi.Event, customerID string, cause error) error {
	const q = `
INSERT INTO stripe_events (event_id, type, api_version, stripe_customer_id, stripe_created, status,
    attempts, last_error, payload)
VALUES ($1, $2, $3, $4, $5, 'failed', 1, $6, $7)
ON CONFLICT (event_id) DO UPDATE SET
    status = 'failed', attempts = stripe_events.attempts + 1, last_error = excluded.last_error, updated_at = now()
WHERE stripe_events.status = 'failed'`
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := db.Exec(ctx, q, ev.ID, ev.Type, ev.APIVersion, nullString(customerID), ev.Created,
		truncate(cause.Error(), maxErrorLen), json.RawMessage(ev.Payload)); err != nil {
		return fmt.Errorf("record event %s failed: %w", ev.ID, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// EventRecord is a ledger row as operators see it.
type EventRecord struct {
	EventID       string     `json:"event_id"`
	Type          string     `json:"type"`
	CustomerID    string     `json:"stripe_customer_id,omitempty"`
	Status        string     `json:"status"`
	Attempts      int        `json:"attempts"`
	LastError     string     `json:"last_error,omitempty"`
	StripeCreated time.Time  `json:"stripe_created"`
	ReceivedAt    time.Time  `json:"received_at"`
	ProcessedAt   *time.Time `json:"processed_at,omitempty"`
}

// ListEvents returns ledger rows with the given status ("" for all), oldest
// Stripe time first, at most limit.
func (s *Service) ListEvents(ctx context.Context, status string, limit int) ([]EventRecord, error) {
	const q = `
SELECT event_id, type, coalesce(stripe_customer_id, ''), status, attempts, coalesce(last_error, ''),
       stripe_created, received_at, processed_at
FROM stripe_events WHERE $1 = '' OR status = $1
ORDER BY stripe_created, event_id LIMIT $2`
	rows, err := s.db.Query(ctx, q, status, limit)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (EventRecord, error) {
		var e EventRecord
		err := r.Scan(&e.EventID, &e.Type, &e.CustomerID, &e.Status, &e.Attempts, &e.LastError,
			&e.StripeCreated, &e.ReceivedAt, &e.ProcessedAt)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return out, nil
}

// LedgerSummary is what an operator checks of the ledger: the failed
// events waiting for a replay, and when the oldest settled event was
// settled (nil when none is), which says whether retention prunes. Both
// are read over partial indexes, so it is cheap on a large ledger.
func LedgerSummary(ctx context.Context, db DBTX) (failed int64, oldestSettled *time.Time, err error) {
	err = db.QueryRow(ctx, `
SELECT (SELECT count(*) FROM stripe_events WHERE status = 'failed'),
       (SELECT min(processed_at) FROM stripe_events WHERE status IN ('processed', 'ignored'))`).Scan(&failed, &oldestSettled)
	if err != nil {
		return 0, nil, fmt.Errorf("read the ledger: %w", err)
	}
	return failed, oldestSettled, nil
}

// LedgerCounts returns the number of ledger rows by status.
func (s *Service) LedgerCounts(ctx context.Context) (map[string]int64, error) {
	rows, err := s.db.Query(ctx, `SELECT status, count(*) FROM stripe_events GROUP BY status`)
	if err != nil {
		return nil, fmt.Errorf("count events: %w", err)
	}
	out := map[string]int64{StatusProcessed: 0, StatusFailed: 0, StatusIgnored: 0}
	var st string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&st, &n}, func() error { out[st] = n; return nil }); err != nil {
		return nil, fmt.Errorf("count events: %w", err)
	}
	return out, nil
}
