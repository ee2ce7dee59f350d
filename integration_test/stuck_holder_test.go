//go:build faults

package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
)

// otherTraffic sends n subscription updates spread over customers, with
// concurrency workers, and returns their latencies and any non-200.
func otherTraffic(b *bundle, customers []fixture, n, workers int, base time.Time) (*latencies, []string) {
	var lat latencies
	var mu sync.Mutex
	var bad []string
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				fx := customers[i%len(customers)]
				ev := subUpdate(fx, []string{"active", "past_due"}[i%2], base.Add(time.Duration(i)*time.Second))
				start := time.Now()
				r := b.postWebhook(ev)
				lat.add(time.Since(start))
				if r.code != http.StatusOK {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%d %s", r.code, r.body))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return &lat, bad
}

// A stuck holder: another session holds one customer's lock for 10 s. That
// customer's webhooks give up with a 503 within lock_timeout plus the retry
// budget (Stripe redelivers them), while other customers' requests keep
// their latency and the pool is not starved: however many deliveries wait
// for the stuck customer, a process pins at most one pool connection on its
// lock (lockmgr queues the rest in memory).
func TestFaultStuckHolder(t *testing.T) {
	const (
		lockTimeout = 1500 * time.Millisecond // lockmgr.DefaultConfig
		budget      = 4 * time.Second
		hold        = 10 * time.Second
		stuckWaves  = 2  // deliveries for the stuck customer arrive in waves...
		stuckPerWav = 12 // ...of this many at once: more than the pool holds
		others      = 200
		otherCusts  = 20
		workers     = 8
	)
	b := setup(t, withMaxConns(10), withLockTimeout(lockTimeout), withRetryBudget(budget))
	ctx := context.Background()
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	customers := make([]fixture, otherCusts)
	for i := range customers {
		customers[i] = newFixture(fmt.Sprintf("other%d", i), base)
	}
	stuck := newFixture("stuck", base)

	// Normal latency first.
	baseline, bad := otherTraffic(b, customers, others, workers, base)
	for _, s := range bad {
		t.Errorf("baseline: %s", s)
	}
	t.Logf("baseline, no stuck holder: %d requests over %d customers: %s", others, otherCusts, baseline)

	holder, err := pgx.Connect(ctx, b.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, stuck.customer); err != nil {
		t.Fatal(err)
	}
	held := time.Now()
	released := make(chan struct{})
	go func() {
		defer close(released)
		time.Sleep(hold)
		_ = tx.Rollback(ctx)
	}()

	watch := watchPool(b, stuck.customer)
	var stuckLat latencies
	var stuckCodes sync.Map
	var stuckEvents [][]byte
	var stuckWG sync.WaitGroup
	for wave := range stuckWaves {
		for i := range stuckPerWav {
			ev := subUpdate(stuck, "active", base.Add(time.Duration(1000+wave*stuckPerWav+i)*time.Second))
			stuckEvents = append(stuckEvents, ev)
			stuckWG.Add(1)
			go func() {
				defer stuckWG.Done()
				start := time.Now()
				r := b.postWebhook(ev)
				stuckLat.add(time.Since(start))
				n, _ := stuckCodes.LoadOrStore(r.code, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				if r.code != http.StatusServiceUnavailable {
					t.Errorf("stuck customer's webhook: %d %s, want 503", r.code, r.body)
				}
			}()
		}
		if wave == 0 {
			time.Sleep(200 * time.Millisecond) // the first wave is waiting when the others start
		}
	}
	during, bad := otherTraffic(b, customers, others, workers, base.Add(10000*time.Second))
	for _, s := range bad {
		t.Errorf("other customers while one is stuck: %s", s)
	}
	stuckWG.Wait()
	stuckDone := time.Since(held)
	watch.finish()
	<-released

	codes := map[int]int64{}
	stuckCodes.Range(func(k, v any) bool { codes[k.(int)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("stuck customer: %d deliveries answered %v in %s (lock_timeout %s + budget %s = %s); all done %s after the lock was taken",
		stuckLat.n(), codes, &stuckLat, lockTimeout, budget, lockTimeout+budget, stuckDone.Round(time.Millisecond))
	t.Logf("other customers while one is stuck: %d requests: %s", others, during)
	t.Logf("pool (max %d) while one customer is stuck: %s", b.db.Pool.Config().MaxConns, watch)

	if max := stuckLat.pct(100); max > lockTimeout+budget+5*time.Second {
		t.Errorf("a stuck customer's webhook took %s: it should give up after lock_timeout + budget", max)
	}
	if n := watch.maxLockWaits.Load(); n > lockmgr.WritersPerCustomer {
		t.Errorf("%d pool connections waited on advisory locks at once: one stuck customer pins more than lockmgr.WritersPerCustomer", n)
	}

	// Stripe redelivers once the holder is gone: each event is processed.
	for _, ev := range stuckEvents {
		if r := b.postWebhook(ev); r.code != http.StatusOK {
			t.Errorf("redelivery after the holder left: %d %s", r.code, r.body)
		}
	}
	if got := b.count(`SELECT count(*) FROM stripe_events WHERE stripe_customer_id = $1 AND status = 'processed' AND attempts = 2`, stuck.customer); got != len(stuckEvents) {
		t.Errorf("stuck customer's events processed after one failed attempt = %d, want %d", got, len(stuckEvents))
	}
	if got := b.scalar(`SELECT last_error FROM stripe_events WHERE stripe_customer_id = $1 LIMIT 1`, stuck.customer); got != "<null>" {
		t.Errorf("last_error after success = %q, want none", got)
	}
	if n := b.advisoryLocks(); n != 0 {
		t.Errorf("%d advisory locks left", n)
	}
	if n := b.db.Pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d pool connections still acquired", n)
	}
}
