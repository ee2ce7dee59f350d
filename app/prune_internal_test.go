package app

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
)

// runEvery runs first after its delay, then every interval, and stop waits
// for a running call to end.
func TestRunEvery(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	running := make(chan struct{}, 10)
	stop := runEvery(context.Background(), 10*time.Millisecond, 20*time.Millisecond, func(ctx context.Context) {
		calls.Add(1)
		running <- struct{}{}
	})
	deadline := time.After(10 * time.Second)
	for range 3 {
		select {
		case <-running:
		case <-deadline:
			t.Fatalf("only %d calls in 10s", calls.Load())
		}
	}
	stop()
	n := calls.Load()
	time.Sleep(60 * time.Millisecond)
	if calls.Load() != n {
		t.Errorf("called after stop")
	}

	// stop during a call waits for it.
	entered, release := make(chan struct{}), make(chan struct{})
	var ended atomic.Bool
	stop = runEvery(context.Background(), 0, time.Hour, func(ctx context.Context) {
		close(entered)
		<-ctx.Done()
		<-release
		ended.Store(true)
	})
	<-entered
	go func() { time.Sleep(20 * time.Millisecond); close(release) }()
	stop()
	if !ended.Load() {
		t.Errorf("stop returned while the call ran")
	}
}

// One daily pass deletes what retention says and logs it.
func TestPruneOnce(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `
INSERT INTO stripe_events (event_id, type, stripe_created, status, payload, processed_at)
VALUES ('evt_old', 'invoice.paid', now() - interval '40 days', 'processed', '{}', now() - interval '40 days'),
       ('evt_new', 'invoice.paid', now(), 'processed', '{}', now())`); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	pruneOnce(ctx, db.Pool, 30*24*time.Hour, slog.New(slog.NewTextHandler(&logs, nil)))
	if !strings.Contains(logs.String(), "ledger pruned") || !strings.Contains(logs.String(), "processed=1") {
		t.Errorf("log: %s", logs.String())
	}
	rows, _ := db.Pool.Query(ctx, `SELECT event_id FROM stripe_events`)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(ids) != 1 || ids[0] != "evt_new" {
		t.Errorf("left %v (%v), want [evt_new]", ids, err)
	}
}
