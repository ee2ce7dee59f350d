//go:build faults

package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/billing"
)

// pruneLoad drives signed subscription webhooks for new events at
// concurrency writers until stop closes, and records their latencies.
type pruneLoad struct {
	b       *bundle
	fxs     []fixture
	base    time.Time
	seq     atomic.Int64
	lat     latencies
	non200  atomic.Int64
	started atomic.Int64
}

func (l *pruneLoad) run(writers int, stop <-chan struct{}) {
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i += writers {
				select {
				case <-stop:
					return
				default:
				}
				fx := l.fxs[i%len(l.fxs)]
				n := l.seq.Add(1)
				ev := subEvent(fx, "customer.subscription.updated", []string{"active", "past_due"}[n%2], l.base.Add(time.Duration(n)*time.Second))
				start := time.Now()
				r := l.b.postWebhook(ev)
				l.lat.add(time.Since(start))
				if r.code != http.StatusOK {
					l.non200.Add(1)
				}
			}
		}()
	}
	wg.Wait()
}

// phase runs the load with writers for at least d and until during returns
// (during runs beside the load, from the load's start; nil: nothing), and
// says what it measured.
func (l *pruneLoad) phase(t *testing.T, name string, writers int, d time.Duration, during func()) (p50, p99 time.Duration) {
	t.Helper()
	l.lat = latencies{}
	l.non200.Store(0)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { l.run(writers, stop); close(done) }()
	start := time.Now()
	if during != nil {
		during()
	}
	if rest := d - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	close(stop)
	<-done
	took := time.Since(start)
	p50, p99 = l.lat.pct(50), l.lat.pct(99)
	t.Logf("%s: %d webhooks in %s (%.0f/s) at %d writers: p50 %s, p99 %s, max %s, non-200 %d",
		name, l.lat.n(), took.Round(time.Millisecond), float64(l.lat.n())/took.Seconds(), writers,
		p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond), l.lat.pct(100).Round(time.Millisecond), l.non200.Load())
	if n := l.non200.Load(); n != 0 {
		t.Errorf("%s: %d webhooks answered other than 200", name, n)
	}
	return p50, p99
}

// seedOldLedger inserts n settled events (90% processed, 10% ignored) with
// ~1 KiB payloads, settled 100 days ago, plus failed events as old.
func seedOldLedger(t *testing.T, b *bundle, n, failed int) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	const q = `
INSERT INTO stripe_events (event_id, type, stripe_created, status, attempts, payload, received_at, processed_at)
SELECT 'evt_seed_' || $3 || '_' || i, 'customer.subscription.updated', now() - interval '100 days',
       CASE WHEN $3 = 'failed' THEN 'failed' WHEN i % 10 = 0 THEN 'ignored' ELSE 'processed' END, 1,
       jsonb_build_object('id', 'evt_seed_' || i, 'object', 'event', 'data',
           jsonb_build_object('object', jsonb_build_object('id', 'sub_' || i, 'pad', repeat(md5(i::text), 32)))),
       now() - interval '100 days' + i * interval '10 ms',
       CASE WHEN $3 = 'failed' THEN NULL ELSE now() - interval '100 days' + i * interval '10 ms' END
FROM generate_series($1::int, $2::int) i`
	for lo := 1; lo <= n; lo += 50_000 {
		if _, err := b.db.Pool.Exec(ctx, q, lo, min(lo+49_999, n), "settled"); err != nil {
			t.Fatalf("seed: %v", err)
		}
	}
	if _, err := b.db.Pool.Exec(ctx, q, 1, failed, "failed"); err != nil {
		t.Fatalf("seed failed events: %v", err)
	}
	if _, err := b.db.Pool.Exec(ctx, `VACUUM ANALYZE stripe_events`); err != nil {
		t.Fatal(err)
	}
	var size string
	_ = b.db.Pool.QueryRow(ctx, `SELECT pg_size_pretty(pg_total_relation_size('stripe_events'))`).Scan(&size)
	t.Logf("seeded %d settled and %d failed events 100 days old in %s (stripe_events %s)", n, failed, time.Since(start).Round(time.Millisecond), size)
}

// lockstep prune on a large ledger while webhooks for new events run: no
// webhook fails or waits on the prune (it locks only the old rows it
// deletes, 1000 at a time, and skips any a writer holds), failed events are
// kept, and the webhooks' latency during it is set beside the latency just
// before and just after (the machine's own noise), for lockstep prune, for
// the daily pass's paced prune, and for the whole cut deleted by one
// statement. Each runs on a fresh database. PRUNE_LOAD_ROWS sets the ledger
// size (default 200,000).
func TestFaultPruneUnderLoad(t *testing.T) {
	rows := 200_000
	if v := os.Getenv("PRUNE_LOAD_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("PRUNE_LOAD_ROWS=%q: want a number of at least 1000", v)
		}
		rows = n
	}
	const writers, failed = 8, 500
	variants := []struct {
		name  string
		prune func(t *testing.T, b *bundle) string
	}{
		{"lockstep prune", func(t *testing.T, b *bundle) string {
			var out bytes.Buffer
			env := app.Env{Getenv: func(k string) string { return map[string]string{"DATABASE_URL": prunerURL(t, b)}[k] },
				Stdout: &out, Stderr: io.Discard}
			if err := app.Run(context.Background(), []string{"prune", "--older-than", "90d"}, env); err != nil {
				t.Errorf("prune: %v", err)
			}
			return string(bytes.TrimSpace(out.Bytes()))
		}},
		{"daily pass (paced)", func(t *testing.T, b *bundle) string {
			res, err := billing.PruneEvents(context.Background(), prunerPool(t, b), billing.PruneOptions{
				Before: time.Now().Add(-90 * 24 * time.Hour), Pace: true})
			if err != nil {
				t.Errorf("paced prune: %v", err)
			}
			return fmt.Sprintf("%d events in %d batches", res.Deleted(), res.Batches)
		}},
		{"one DELETE statement", func(t *testing.T, b *bundle) string {
			tag, err := prunerPool(t, b).Exec(context.Background(), `DELETE FROM stripe_events
WHERE status IN ('processed', 'ignored') AND processed_at < now() - interval '90 days'`)
			if err != nil {
				t.Errorf("one DELETE: %v", err)
			}
			return fmt.Sprintf("%d events in one statement", tag.RowsAffected())
		}},
	}
	var summary []string
	for _, v := range variants {
		b := setup(t, withMaxConns(20))
		l := &pruneLoad{b: b, base: time.Now().Add(-24 * time.Hour).Truncate(time.Second)}
		for i := range 200 {
			l.fxs = append(l.fxs, b.paidCheckout(uniqueUser(fmt.Sprintf("prune%d", i)), l.base))
		}
		seedOldLedger(t, b, rows, failed)
		l.phase(t, v.name+": warm-up", writers, 3*time.Second, nil)
		_, before := l.phase(t, v.name+": before", writers, 8*time.Second, nil)
		var took time.Duration
		var said string
		var blocked, samples int
		_, during := l.phase(t, v.name+": during", writers, 0, func() {
			stop, done := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				blocked, samples = watchBlockedByPruner(b, stop)
			}()
			start := time.Now()
			said = v.prune(t, b)
			took = time.Since(start)
			close(stop)
			<-done
		})
		_, after := l.phase(t, v.name+": after", writers, 8*time.Second, nil)
		t.Logf("%s: %s in %s", v.name, said, took.Round(time.Millisecond))

		if n := b.count(`SELECT count(*) FROM stripe_events WHERE starts_with(event_id, 'evt_seed_settled_')`); n != 0 {
			t.Errorf("%s: %d settled events left", v.name, n)
		}
		if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'failed'`); n != failed {
			t.Errorf("%s: %d failed events left, want all %d", v.name, n, failed)
		}
		if n, want := b.count(`SELECT count(*) FROM stripe_events WHERE NOT starts_with(event_id, 'evt_seed_')`), int(l.seq.Load()); n != want {
			t.Errorf("%s: %d live events in the ledger, want the %d sent", v.name, n, want)
		}
		summary = append(summary, fmt.Sprintf("%s: %d rows in %s (%.0f rows/s); webhook p99 %s before, %s during, %s after; most backends waiting on the pruner at once: %d (%d samples of pg_locks)",
			v.name, rows, took.Round(time.Millisecond), float64(rows)/took.Seconds(),
			before.Round(100*time.Microsecond), during.Round(100*time.Microsecond), after.Round(100*time.Microsecond),
			blocked, samples))
		if v.name != "one DELETE statement" && blocked != 0 {
			t.Errorf("%s: %d backends waited on a lock the pruner held", v.name, blocked)
		}
		// A loose bound: a prune that blocked webhooks on a lock would show
		// as hundreds of milliseconds (the retry budget is seconds).
		if v.name != "one DELETE statement" && during > 250*time.Millisecond {
			t.Errorf("%s: webhook p99 %s during the prune, want under 250ms", v.name, during)
		}
	}
	for _, s := range summary {
		t.Log(s)
	}
}

// prunerApp is the application_name the prune runs under, so that
// watchBlockedByPruner can tell its backend from the writers'.
const prunerApp = "lockstep-prune-under-test"

func prunerURL(t *testing.T, b *bundle) string {
	t.Helper()
	u, err := url.Parse(b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", prunerApp)
	u.RawQuery = q.Encode()
	return u.String()
}

func prunerPool(t *testing.T, b *bundle) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), prunerURL(t, b))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// watchBlockedByPruner samples pg_locks every 10 ms until stop closes: the
// most backends waiting at once on a lock the pruner's backend holds
// (pg_blocking_pids names it).
func watchBlockedByPruner(b *bundle, stop <-chan struct{}) (most, samples int) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return most, samples
		case <-tick.C:
		}
		var n int
		err := b.db.Pool.QueryRow(context.Background(), `
SELECT count(DISTINCT w.pid) FROM pg_locks w
CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
JOIN pg_stat_activity a ON a.pid = blocker.pid
WHERE NOT w.granted AND a.application_name = $1`, prunerApp).Scan(&n)
		if err == nil {
			samples++
			most = max(most, n)
		}
	}
}
