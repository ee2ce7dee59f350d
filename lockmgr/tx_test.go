package lockmgr_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
)

// timingObserver records the lock waits and holds a Manager reports.
type timingObserver struct {
	mu           sync.Mutex
	waits, holds []time.Duration
}

func (o *timingObserver) LockWaited(_ string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.waits = append(o.waits, d)
}

func (o *timingObserver) LockHeld(_ string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.holds = append(o.holds, d)
}

func (o *timingObserver) Retried(string, string) {}

type txBundle struct {
	db   *dbtest.DB
	pool *pgxpool.Pool
	m    *lockmgr.Manager
	obs  *timingObserver
}

// txSetup opens a one-connection pool on a fresh database with a table for
// the writers' rows.
func txSetup(t *testing.T, cfg lockmgr.Config) *txBundle {
	t.Helper()
	db := dbtest.New(t, dbtest.WithMaxConns(4))
	pool, err := lockmgr.OpenPool(context.Background(), db.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := db.Pool.Exec(context.Background(), `CREATE TABLE lockmgr_tx_rows (n int)`); err != nil {
		t.Fatal(err)
	}
	obs := &timingObserver{}
	return &txBundle{db: db, pool: pool, m: lockmgr.New(pool, cfg, obs, nil), obs: obs}
}

func (b *txBundle) rows(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM lockmgr_tx_rows`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// advisoryLocks counts the advisory locks anyone holds or awaits in the
// test's database.
func (b *txBundle) advisoryLocks(t *testing.T) int {
	t.Helper()
	var n int
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkFreed fails t if an advisory lock or a pool connection outlived the
// transaction.
func (b *txBundle) checkFreed(t *testing.T) {
	t.Helper()
	if n := b.advisoryLocks(t); n != 0 {
		t.Errorf("%d advisory locks left after the transaction", n)
	}
	if n := b.pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired", n)
	}
}

// The statements of fn's first batch travel with BEGIN and the lock: they
// run inside the transaction, with the customer's lock held and the
// transaction named, and commit together.
func TestTxFirstBatchRunsUnderTheLock(t *testing.T) {
	t.Parallel()
	b := txSetup(t, lockmgr.DefaultConfig())
	ctx := context.Background()
	const customer = "cus_tx_first_batch"
	var held int
	var name string
	err := b.m.InCustomerTx(ctx, customer, lockmgr.Who{Writer: "webhook", Ref: "evt_tx_1"}, func(ctx context.Context, tx *lockmgr.Tx) error {
		batch := &pgx.Batch{}
		batch.Queue(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
AND ((classid::bigint << 32) | objid::bigint) = hashtext($1)`, customer).QueryRow(func(r pgx.Row) error { return r.Scan(&held) })
		batch.Queue(`SELECT current_setting('application_name')`).QueryRow(func(r pgx.Row) error { return r.Scan(&name) })
		batch.Queue(`INSERT INTO lockmgr_tx_rows VALUES (1)`)
		return tx.SendBatch(ctx, batch)
	})
	if err != nil {
		t.Fatal(err)
	}
	if held != 1 || name != "lockstep webhook evt_tx_1" {
		t.Errorf("in the first batch: %d customer locks held, application_name %q; want 1 and %q", held, name, "lockstep webhook evt_tx_1")
	}
	if n := b.rows(t); n != 1 {
		t.Errorf("%d rows committed, want 1", n)
	}
	b.checkFreed(t)
}

// A writer's first statement waits for a lock another session holds, and
// the wait is reported as a lock wait, the rest of the transaction as the
// hold.
func TestTxFirstStatementWaitsForTheLock(t *testing.T) {
	t.Parallel()
	b := txSetup(t, lockmgr.DefaultConfig())
	const customer = "cus_tx_wait"
	_, release := dbtest.HoldCustomerLock(t, b.db.URL, customer, "lockmgr-test holder")
	done := make(chan error, 1)
	go func() {
		done <- b.m.InCustomerTx(context.Background(), customer, lockmgr.Who{Writer: "webhook"}, func(ctx context.Context, tx *lockmgr.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO lockmgr_tx_rows VALUES (1)`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `SELECT pg_sleep(0.1)`)
			return err
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for lockWaiters(t, b.db) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the writer never waited for the lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Held long enough that the hold (the 100 ms sleep and a few round
	// trips) stays shorter than the wait even on a loaded machine.
	const holdFor = time.Second // under the manager's 1.5 s lock_timeout
	time.Sleep(holdFor)
	if n := b.rows(t); n != 0 {
		t.Fatalf("%d rows visible while the writer waits for the lock", n)
	}
	release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not finish after the lock was released")
	}
	if n := b.rows(t); n != 1 {
		t.Errorf("%d rows committed, want 1", n)
	}
	b.obs.mu.Lock()
	defer b.obs.mu.Unlock()
	t.Logf("lock waits %v, holds %v", b.obs.waits, b.obs.holds)
	if len(b.obs.waits) != 1 || b.obs.waits[0] < holdFor {
		t.Errorf("lock waits %v, want one of at least %s", b.obs.waits, holdFor)
	}
	// The hold starts when the lock is granted: it covers the 100 ms sleep
	// but not the wait before it.
	if len(b.obs.holds) != 1 || b.obs.holds[0] < 100*time.Millisecond || b.obs.holds[0] >= b.obs.waits[0] {
		t.Errorf("lock holds %v, want one covering the 100 ms sleep and shorter than the wait %v", b.obs.holds, b.obs.waits)
	}
}

// A failure in the first batch, after the lock, rolls the transaction back:
// nothing of it stays, the lock and the connection are free, and a
// permanent error is not retried.
func TestTxFailedFirstBatchRollsBack(t *testing.T) {
	t.Parallel()
	b := txSetup(t, lockmgr.DefaultConfig())
	ctx := context.Background()
	calls := 0
	err := b.m.InCustomerTx(ctx, "cus_tx_fail", lockmgr.Who{Writer: "webhook"}, func(ctx context.Context, tx *lockmgr.Tx) error {
		calls++
		batch := &pgx.Batch{}
		batch.Queue(`INSERT INTO lockmgr_tx_rows VALUES (1)`)
		batch.Queue(`SELECT 1 / 0`)
		batch.Queue(`INSERT INTO lockmgr_tx_rows VALUES (2)`)
		return tx.SendBatch(ctx, batch)
	})
	if lockmgr.SQLState(err) != "22012" || calls != 1 {
		t.Fatalf("err = %v after %d calls, want division_by_zero (22012) after one", err, calls)
	}
	if n := b.rows(t); n != 0 {
		t.Errorf("%d rows committed by a failed transaction", n)
	}
	b.checkFreed(t)
	// The pool's one connection is usable again.
	if err := b.m.InCustomerTx(ctx, "cus_tx_fail", lockmgr.Who{Writer: "webhook"}, func(ctx context.Context, tx *lockmgr.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO lockmgr_tx_rows VALUES (3)`)
		return err
	}); err != nil {
		t.Fatalf("next transaction: %v", err)
	}
	if n := b.rows(t); n != 1 {
		t.Errorf("%d rows after the next transaction, want 1", n)
	}
}

// A first statement that finds no row reports pgx.ErrNoRows and leaves the
// transaction usable.
func TestTxFirstQueryRowNoRows(t *testing.T) {
	t.Parallel()
	b := txSetup(t, lockmgr.DefaultConfig())
	err := b.m.InCustomerTx(context.Background(), "cus_tx_norows", lockmgr.Who{Writer: "webhook"}, func(ctx context.Context, tx *lockmgr.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT n FROM lockmgr_tx_rows WHERE n = 42`).Scan(&n); !errors.Is(err, pgx.ErrNoRows) {
			t.Errorf("first QueryRow: %v, want pgx.ErrNoRows", err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO lockmgr_tx_rows VALUES (42)`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := b.rows(t); n != 1 {
		t.Errorf("%d rows committed, want 1", n)
	}
}

// A panic in fn rolls back and frees the lock and the connection before it
// goes on up.
func TestTxPanicRollsBack(t *testing.T) {
	t.Parallel()
	b := txSetup(t, lockmgr.DefaultConfig())
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want the panic to go on up", p)
			}
		}()
		_ = b.m.InCustomerTx(context.Background(), "cus_tx_panic", lockmgr.Who{Writer: "webhook"}, func(ctx context.Context, tx *lockmgr.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO lockmgr_tx_rows VALUES (1)`); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	if n := b.rows(t); n != 0 {
		t.Errorf("%d rows committed by a panicking transaction", n)
	}
	b.checkFreed(t)
}
