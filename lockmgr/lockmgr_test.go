package lockmgr_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
)

// countingObserver records what a Manager reports.
type countingObserver struct {
	mu      sync.Mutex
	retries map[string]int
}

func (o *countingObserver) LockWaited(string, time.Duration) {}
func (o *countingObserver) LockHeld(string, time.Duration)   {}
func (o *countingObserver) Retried(_, sqlstate string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.retries == nil {
		o.retries = map[string]int{}
	}
	o.retries[sqlstate]++
}

// lockWaiters counts the backends of pool's database waiting on an
// advisory lock.
func lockWaiters(t *testing.T, db *dbtest.DB) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// However many writers wait for one customer whose lock another session
// holds, a Manager pins at most WritersPerCustomer pool connections on it;
// the others queue in memory and give up with a transient error within the
// retry budget plus one lock_timeout. Another customer's writer meanwhile
// gets a connection at once.
func TestFaultQueueBoundsConnectionsPerCustomer(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t, dbtest.WithMaxConns(4))
	pool, err := lockmgr.OpenPool(context.Background(), db.URL, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	cfg := lockmgr.DefaultConfig()
	cfg.LockTimeout, cfg.RetryBudget = 300*time.Millisecond, time.Second
	obs := &countingObserver{}
	m := lockmgr.New(pool, cfg, obs, nil)
	const stuck, writers = "cus_queue_stuck", 12
	_, release := dbtest.HoldCustomerLock(t, db.URL, stuck, "lockmgr-test holder")

	var maxWaiters, maxAcquired atomic.Int64
	sampling, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if n := int64(lockWaiters(t, db)); n > maxWaiters.Load() {
				maxWaiters.Store(n)
			}
			if n := int64(pool.Stat().AcquiredConns()); n > maxAcquired.Load() {
				maxAcquired.Store(n)
			}
			select {
			case <-sampling:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()

	type result struct {
		err error
		d   time.Duration
	}
	results := make(chan result, writers)
	for i := range writers {
		go func() {
			start := time.Now()
			err := m.InCustomerTx(context.Background(), stuck, lockmgr.Who{Writer: "webhook", Ref: fmt.Sprintf("evt_q%d", i)},
				func(context.Context, *lockmgr.Tx) error { return nil })
			results <- result{err, time.Since(start)}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := m.InCustomerTx(context.Background(), "cus_queue_other", lockmgr.Who{Writer: "webhook"},
		func(context.Context, *lockmgr.Tx) error { return nil }); err != nil {
		t.Fatalf("another customer's writer: %v", err)
	}
	other := time.Since(start)

	var slowest time.Duration
	busy, timedOut := 0, 0
	for range writers {
		r := <-results
		slowest = max(slowest, r.d)
		switch {
		case errors.Is(r.err, lockmgr.ErrCustomerBusy):
			busy++
		case lockmgr.SQLState(r.err) == "55P03":
			timedOut++
		default:
			t.Errorf("stuck customer's writer: %v, want lock timeout or customer busy", r.err)
		}
		if !lockmgr.IsTransient(r.err) {
			t.Errorf("stuck customer's writer: %v is not transient (it must answer 503)", r.err)
		}
		if limit := cfg.RetryBudget + cfg.LockTimeout + 3*time.Second; r.d > limit {
			t.Errorf("a writer gave up after %s, beyond the budget + lock_timeout (+3s)", r.d)
		}
	}
	close(sampling)
	<-sampled
	release()
	t.Logf("%d writers for a held customer: %d lock timeouts, %d queued out the budget, slowest %s (budget %s + lock_timeout %s); at most %d waiting in PostgreSQL, %d of %d pool connections acquired; another customer's writer took %s; retries by label %v",
		writers, timedOut, busy, slowest.Round(time.Millisecond), cfg.RetryBudget, cfg.LockTimeout, maxWaiters.Load(), maxAcquired.Load(),
		pool.Config().MaxConns, other.Round(time.Millisecond), obs.retries)
	if n := maxWaiters.Load(); n > lockmgr.WritersPerCustomer {
		t.Errorf("%d connections waited on one customer's lock at once, want at most %d", n, lockmgr.WritersPerCustomer)
	}
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired", n)
	}
}

// Writers queued for one customer all run once the lock is free, one at a
// time.
func TestFaultQueueRunsOneAtATime(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t, dbtest.WithMaxConns(2))
	pool, err := lockmgr.OpenPool(context.Background(), db.URL, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m := lockmgr.New(pool, lockmgr.DefaultConfig(), nil, nil)
	const customer, writers = "cus_queue_order", 20
	_, release := dbtest.HoldCustomerLock(t, db.URL, customer, "lockmgr-test holder")
	var inside, maxInside atomic.Int64
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := m.InCustomerTx(context.Background(), customer, lockmgr.Who{Writer: "webhook"}, func(ctx context.Context, tx *lockmgr.Tx) error {
				// The first statement carries BEGIN and the lock: from
				// its answer on, fn holds the customer.
				if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
					return err
				}
				if n := inside.Add(1); n > maxInside.Load() {
					maxInside.Store(n)
				}
				defer inside.Add(-1)
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				_, err := tx.Exec(ctx, `SELECT pg_sleep(0.005)`)
				return err
			})
			if err != nil {
				t.Errorf("writer %d: %v", i, err)
			}
		}()
		time.Sleep(10 * time.Millisecond) // arrive in order
	}
	time.Sleep(100 * time.Millisecond)
	release()
	wg.Wait()
	t.Logf("%d writers ran after the holder left, at most %d at once, in order %v", len(order), maxInside.Load(), order)
	if len(order) != writers || maxInside.Load() != 1 {
		t.Errorf("%d writers ran, at most %d at once; want %d, one at a time", len(order), maxInside.Load(), writers)
	}
	// Turns are given in arrival order, but up to WritersPerCustomer
	// writers race for the lock itself (whoever gets a connection first), so
	// the order is close to arrival order, not equal to it: counted, not
	// asserted (the billing rules do not depend on it).
	inversions := 0
	for i := range order {
		for j := i + 1; j < len(order); j++ {
			if order[j] < order[i] {
				inversions++
			}
		}
	}
	t.Logf("pairs run out of arrival order: %d of %d", inversions, writers*(writers-1)/2)
}

// A writer queued in memory whose request goes away stops waiting at once
// with the context's error (not a transient one) and frees its place.
func TestFaultQueueContextCancel(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t, dbtest.WithMaxConns(2))
	pool, err := lockmgr.OpenPool(context.Background(), db.URL, 6)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m := lockmgr.New(pool, lockmgr.DefaultConfig(), nil, nil)
	const customer = "cus_queue_cancel"
	_, release := dbtest.HoldCustomerLock(t, db.URL, customer, "lockmgr-test holder")
	var wg sync.WaitGroup
	for range lockmgr.WritersPerCustomer { // fill the customer's places
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = m.InCustomerTx(context.Background(), customer, lockmgr.Who{Writer: "webhook"}, func(context.Context, *lockmgr.Tx) error { return nil })
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for lockWaiters(t, db) < lockmgr.WritersPerCustomer {
		if time.Now().After(deadline) {
			t.Fatal("the first writers never waited on the lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = m.InCustomerTx(ctx, customer, lockmgr.Who{Writer: "webhook"}, func(context.Context, *lockmgr.Tx) error { return nil })
	d := time.Since(start)
	release()
	wg.Wait()
	t.Logf("queued writer whose context ended after 150ms returned after %s: %v", d.Round(time.Millisecond), err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want the context's deadline", err)
	}
	if d > 3*time.Second {
		t.Errorf("the queued writer took %s to notice its context ended", d)
	}
}

// A writer whose connection is terminated inside its transaction (57P01)
// runs again on a fresh connection and commits once.
func TestFaultTerminatedConnectionRetried(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t, dbtest.WithMaxConns(2))
	pool, err := lockmgr.OpenPool(context.Background(), db.URL, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	obs := &countingObserver{}
	m := lockmgr.New(pool, lockmgr.DefaultConfig(), obs, nil)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE lockmgr_test_applied (n int)`); err != nil {
		t.Fatal(err)
	}
	calls := 0
	err = m.InCustomerTx(ctx, "cus_terminated", lockmgr.Who{Writer: "webhook", Ref: "evt_term"}, func(ctx context.Context, tx *lockmgr.Tx) error {
		calls++
		if _, err := tx.Exec(ctx, `INSERT INTO lockmgr_test_applied VALUES (1)`); err != nil {
			return err
		}
		if calls == 1 {
			var pid int32
			if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
				return err
			}
			if _, err := db.Pool.Exec(ctx, `SELECT pg_terminate_backend($1, 5000)`, pid); err != nil {
				t.Fatalf("terminate: %v", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("InCustomerTx after a terminated connection: %v", err)
	}
	var rows int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM lockmgr_test_applied`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	t.Logf("fn ran %d times, %d row committed, retries by label %v", calls, rows, obs.retries)
	if calls != 2 || rows != 1 || obs.retries["57P01"]+obs.retries["connection"] != 1 {
		t.Errorf("calls %d rows %d retries %v; want 2 calls, 1 row, 1 retry", calls, rows, obs.retries)
	}
}
