package billing

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
)

// seedLedger inserts n events with status, settled age ago (processed_at;
// failed events have none and were received age ago), ids prefix_0001...
func seedLedger(t *testing.T, db *dbtest.DB, prefix, status string, n int, age time.Duration) {
	t.Helper()
	const q = `
INSERT INTO stripe_events (event_id, type, stripe_created, status, payload, received_at, processed_at)
SELECT $1 || lpad(i::text, 4, '0'), 'customer.subscription.updated', now() - $4::interval, $2, '{}'::jsonb,
       now() - $4::interval, CASE WHEN $2 = 'failed' THEN NULL ELSE now() - $4::interval + i * interval '1 ms' END
FROM generate_series(1, $3) i`
	if _, err := db.Pool.Exec(context.Background(), q, prefix, status, n, fmt.Sprintf("%d seconds", int(age.Seconds()))); err != nil {
		t.Fatalf("seed %s: %v", prefix, err)
	}
}

func ledgerIDs(t *testing.T, db *dbtest.DB) map[string]string {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT event_id, status FROM stripe_events`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	var id, st string
	if _, err := pgx.ForEachRow(rows, []any{&id, &st}, func() error { out[id] = st; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// Prune deletes settled events older than the cut, batch by batch, and
// keeps failed ones whatever their age and everything newer than the cut.
func TestPruneEvents(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	day := 24 * time.Hour
	seedLedger(t, db, "evt_oldp_", StatusProcessed, 7, 100*day)
	seedLedger(t, db, "evt_oldi_", StatusIgnored, 4, 95*day)
	seedLedger(t, db, "evt_oldf_", StatusFailed, 2, 200*day)
	seedLedger(t, db, "evt_newp_", StatusProcessed, 3, 10*day)
	seedLedger(t, db, "evt_midp_", StatusProcessed, 4, 89*day)
	ctx := context.Background()
	cut := time.Now().Add(-90 * day)

	dry, err := PruneEvents(ctx, db.Pool, PruneOptions{Before: cut, DryRun: true})
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if diff := cmp.Diff(PruneResult{Processed: 7, Ignored: 4, FailedKept: 2}, dry); diff != "" {
		t.Fatalf("dry run (-want +got):\n%s", diff)
	}
	if n := len(ledgerIDs(t, db)); n != 20 {
		t.Fatalf("dry run deleted rows: %d left, want 20", n)
	}

	var seen []int64
	res, err := PruneEvents(ctx, db.Pool, PruneOptions{Before: cut, BatchSize: 3,
		OnBatch: func(r PruneResult) { seen = append(seen, r.Deleted()) }})
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	// 11 rows in batches of 3: 3, 6, 9, 11 (the short batch ends it).
	if diff := cmp.Diff(PruneResult{Processed: 7, Ignored: 4, Batches: 4, FailedKept: 2}, res); diff != "" {
		t.Errorf("prune (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int64{3, 6, 9, 11}, seen); diff != "" {
		t.Errorf("progress (-want +got):\n%s", diff)
	}
	// Then the 89-day-old ones, paced: 4 rows in batches of 3.
	paced, err := PruneEvents(ctx, db.Pool, PruneOptions{Before: time.Now().Add(-88 * day), BatchSize: 3, Pace: true})
	if err != nil || paced != (PruneResult{Processed: 4, Batches: 2, FailedKept: 2}) {
		t.Fatalf("paced prune = %+v, %v; want 4 processed in 2 batches", paced, err)
	}
	left := ledgerIDs(t, db)
	want := map[string]string{"evt_oldf_0001": "failed", "evt_oldf_0002": "failed",
		"evt_newp_0001": "processed", "evt_newp_0002": "processed", "evt_newp_0003": "processed"}
	if diff := cmp.Diff(want, left); diff != "" {
		t.Errorf("ledger after prune (-want +got):\n%s", diff)
	}

	again, err := PruneEvents(ctx, db.Pool, PruneOptions{Before: cut, BatchSize: 3, Pace: true})
	if err != nil || again.Deleted() != 0 || again.Batches != 1 {
		t.Errorf("second prune = %+v, %v; want nothing deleted in one batch", again, err)
	}
}

// A batch never waits for a row a live writer holds (a redelivery of that
// very event): it skips it, finishes, and the row stays for the next run.
func TestPruneSkipsLockedRows(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	seedLedger(t, db, "evt_old_", StatusProcessed, 5, 100*24*time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	holder, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(context.Background()) }()
	if _, err := holder.Exec(ctx, `SELECT 1 FROM stripe_events WHERE event_id = 'evt_old_0002' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	res, err := PruneEvents(ctx, db.Pool, PruneOptions{Before: time.Now().Add(-90 * 24 * time.Hour), BatchSize: 2})
	if err != nil {
		t.Fatalf("prune: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("prune took %s with one row locked: it waited", d)
	}
	if res.Deleted() != 4 {
		t.Errorf("deleted %d, want 4 (all but the locked row)", res.Deleted())
	}
	if diff := cmp.Diff(map[string]string{"evt_old_0002": "processed"}, ledgerIDs(t, db)); diff != "" {
		t.Errorf("ledger (-want +got):\n%s", diff)
	}

	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	res, err = PruneEvents(ctx, db.Pool, PruneOptions{Before: time.Now().Add(-90 * 24 * time.Hour)})
	if err != nil || res.Deleted() != 1 {
		t.Errorf("prune after release = %+v, %v; want the last row deleted", res, err)
	}
}

// Each batch is an index range scan of stripe_events_prune_idx, not a scan
// of the ledger.
func TestPruneBatchUsesIndex(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SET LOCAL enable_seqscan = off`); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, "EXPLAIN "+pruneBatch, time.Now(), time.Time{}, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if !strings.Contains(plan, "stripe_events_prune_idx") {
		t.Errorf("the batch does not use stripe_events_prune_idx:\n%s", plan)
	}
}
