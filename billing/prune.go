package billing

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// PruneBatchSize is how many ledger rows one prune statement deletes at
// most: each batch is one short statement, committed on its own, holding
// row locks on at most this many rows for a few milliseconds.
const PruneBatchSize = 1000

// PruneOptions says which settled events to delete and how.
type PruneOptions struct {
	// Before is the cut: events whose processed_at (the time they were
	// processed or recorded as ignored) is earlier go.
	Before time.Time
	// BatchSize is the number of rows per statement (PruneBatchSize when 0).
	BatchSize int
	// Pace sleeps after each batch as long as the batch took, so the prune
	// keeps at most half of one backend busy, and slows down by itself when
	// the database is busy (its batches take longer).
	Pace bool
	// DryRun counts what would go and deletes nothing.
	DryRun bool
	// OnBatch, when set, is called after each batch with the totals so far.
	OnBatch func(PruneResult)
}

// PruneResult counts what a prune deleted (or, dry, would delete).
type PruneResult struct {
	Processed, Ignored int64
	Batches            int
	// FailedKept is the number of failed events in the ledger: never pruned.
	FailedKept int64
}

// Deleted is the number of events deleted (or that would be).
func (r PruneResult) Deleted() int64 { return r.Processed + r.Ignored }

// pruneBatch deletes the next batch of settled events older than $1, in
// (processed_at, event_id) order after the position ($2, $3) where the last
// batch stopped, so every batch is an index range scan of
// stripe_events_prune_idx that starts past the rows already deleted. Rows
// locked by a live writer (a redelivery of that very event) are skipped, not
// waited for; the next run takes them. Failed events are never selected.
const pruneBatch = `
WITH doomed AS (
    SELECT event_id FROM stripe_events
    WHERE status IN ('processed', 'ignored') AND processed_at < $1
      AND (processed_at, event_id) > ($2, $3)
    ORDER BY processed_at, event_id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM stripe_events e USING doomed d
    WHERE e.event_id = d.event_id AND e.status IN ('processed', 'ignored')
    RETURNING e.status, e.processed_at, e.event_id
), last AS (
    SELECT processed_at, event_id FROM gone ORDER BY processed_at DESC, event_id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM gone WHERE status = 'processed'),
       (SELECT count(*) FROM gone WHERE status = 'ignored'),
       (SELECT count(*) FROM doomed),
       (SELECT processed_at FROM last),
       (SELECT event_id FROM last)`

// PruneEvents deletes processed and ignored events settled before
// opts.Before, in batches of opts.BatchSize rows, each its own statement
// and transaction: db must be a pool (or a connection), not a transaction,
// or the batches would add up to one long one. Failed events are never
// deleted. On error, or when ctx ends, it returns what it deleted so far.
func PruneEvents(ctx context.Context, db DBTX, opts PruneOptions) (PruneResult, error) {
	var res PruneResult
	if opts.Before.IsZero() {
		return res, errors.New("prune events: no cut time")
	}
	if err := db.QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE status = 'failed'`).Scan(&res.FailedKept); err != nil {
		return res, fmt.Errorf("prune events: count failed events: %w", err)
	}
	if opts.DryRun {
		const q = `
SELECT count(*) FILTER (WHERE status = 'processed'), count(*) FILTER (WHERE status = 'ignored')
FROM stripe_events WHERE status IN ('processed', 'ignored') AND processed_at < $1`
		if err := db.QueryRow(ctx, q, opts.Before).Scan(&res.Processed, &res.Ignored); err != nil {
			return res, fmt.Errorf("prune events: count: %w", err)
		}
		return res, nil
	}
	size := opts.BatchSize
	if size <= 0 {
		size = PruneBatchSize
	}
	afterAt, afterID := time.Time{}, ""
	for {
		began := time.Now()
		var processed, ignored, picked int64
		var lastAt *time.Time
		var lastID *string
		if err := db.QueryRow(ctx, pruneBatch, opts.Before, afterAt, afterID, size).
			Scan(&processed, &ignored, &picked, &lastAt, &lastID); err != nil {
			return res, fmt.Errorf("prune events: batch %d: %w", res.Batches+1, err)
		}
		res.Processed += processed
		res.Ignored += ignored
		res.Batches++
		if opts.OnBatch != nil {
			opts.OnBatch(res)
		}
		// Fewer rows than asked: nothing unlocked is left past the position.
		if picked < int64(size) || lastAt == nil {
			return res, nil
		}
		afterAt, afterID = *lastAt, *lastID
		if opts.Pace {
			t := time.NewTimer(time.Since(began))
			select {
			case <-ctx.Done():
				t.Stop()
				return res, fmt.Errorf("prune events: %w", ctx.Err())
			case <-t.C:
			}
		}
	}
}
