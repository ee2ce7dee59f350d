package lockmgr_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
)

func find(locks []lockmgr.LockInfo, pid int32, key int64) *lockmgr.LockInfo {
	for i, l := range locks {
		if l.PID == pid && l.Key != nil && *l.Key == key {
			return &locks[i]
		}
	}
	return nil
}

// ListLocks names the customer behind each advisory lock, for negative and
// positive hashtext alike, names the user behind a user lock, keeps locks
// of other applications with an empty customer, and shows a waiter blocked
// by its holder.
func TestLocksList(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := dbtest.New(t)
	holder := dbtest.Conn(t, ctx, db.URL)
	waiter := dbtest.Conn(t, ctx, db.URL)

	neg, negKey := dbtest.CustomerWithKeySign(t, ctx, holder, true)
	pos, posKey := dbtest.CustomerWithKeySign(t, ctx, holder, false)
	user := "user-" + t.Name()
	var userKey int64
	if err := holder.QueryRow(ctx, `SELECT hashtext($1)`, user).Scan(&userKey); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO stripe_customers (stripe_customer_id, user_id) VALUES ($1, $3), ($2, NULL)`, neg, pos, user); err != nil {
		t.Fatalf("insert customers: %v", err)
	}
	holderPID, waiterPID := dbtest.BackendPID(t, ctx, holder), dbtest.BackendPID(t, ctx, waiter)

	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `SELECT set_config('application_name', 'ops test holder', true),
	       pg_advisory_xact_lock(hashtext($1)), pg_advisory_xact_lock(hashtext($2)),
	       pg_advisory_xact_lock($3, hashtext($4)), pg_advisory_xact_lock(42)`,
		neg, pos, lockmgr.UserLockClass, user); err != nil {
		t.Fatalf("take locks: %v", err)
	}

	waited := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
		defer wcancel()
		_, err := waiter.Exec(wctx, `SELECT set_config('application_name', 'ops test waiter', false), pg_advisory_xact_lock(hashtext($1))`, neg)
		waited <- err
	}()
	// However the test ends, release the holder and let the waiter finish
	// before its connection is closed.
	defer func() {
		_ = tx.Rollback(context.Background())
		<-finished
	}()

	var locks []lockmgr.LockInfo
	dbtest.WaitFor(t, "the waiter in the view", 10*time.Second, func() (bool, string) {
		locks, err = lockmgr.ListLocks(ctx, db.Pool)
		if err != nil {
			t.Fatalf("ListLocks: %v", err)
		}
		w := find(locks, waiterPID, negKey)
		return w != nil && !w.Granted && w.WaitSeconds != nil, fmt.Sprintf("%+v", locks)
	})

	h := find(locks, holderPID, negKey)
	w := find(locks, waiterPID, negKey)
	switch {
	case h == nil || h.Kind != "customer" || h.CustomerID != neg || !h.Granted:
		t.Fatalf("holder of %s (hashtext %d): %+v", neg, negKey, h)
	case h.ApplicationName != "ops test holder" || h.XactSeconds == nil:
		t.Fatalf("holder lacks its application_name or transaction age: %+v", h)
	case w.CustomerID != neg || w.Granted || !slices.Contains(w.BlockedBy, holderPID):
		t.Fatalf("waiter for %s: %+v, want waiting, blocked by %d", neg, w, holderPID)
	case w.WaitSeconds == nil && w.XactSeconds == nil:
		t.Fatalf("waiter shows no age: %+v", w)
	}
	if p := find(locks, holderPID, posKey); p == nil || p.CustomerID != pos || !p.Granted {
		t.Fatalf("lock on %s (hashtext %d): %+v", pos, posKey, p)
	}
	if u := find(locks, holderPID, userKey); u == nil || u.Kind != "user" || u.UserID != user || u.CustomerID != "" {
		t.Fatalf("user lock on %s: %+v", user, u)
	}
	if o := find(locks, holderPID, 42); o == nil || o.CustomerID != "" || !o.Granted {
		t.Fatalf("foreign lock 42 vanished or was named: %+v", o)
	}
	// The waiter comes right after its holder: locks are grouped.
	hi := slices.IndexFunc(locks, func(l lockmgr.LockInfo) bool { return l.PID == holderPID && l.CustomerID == neg })
	if hi < 0 || hi+1 >= len(locks) || locks[hi+1].PID != waiterPID {
		t.Fatalf("waiter does not follow its holder: %+v", locks)
	}
	if age := w.Age(); age < 0 || age > 15*time.Second {
		t.Fatalf("waiter age %s", age)
	}

	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter still blocked 10s after the holder released")
	}
}

// A customer transaction says who it is in application_name while it waits
// for the lock and while it holds it, and only for that transaction: the
// pooled connection goes back to plain "lockstep".
func TestLocksApplicationName(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := dbtest.New(t, dbtest.WithMaxConns(1))
	pool, err := lockmgr.OpenPool(ctx, db.URL, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m := lockmgr.New(pool, lockmgr.DefaultConfig(), nil, nil)

	customer, key := dbtest.CustomerWithKeySign(t, ctx, dbtest.Conn(t, ctx, db.URL), true)
	if _, err := db.Pool.Exec(ctx, `INSERT INTO stripe_customers (stripe_customer_id) VALUES ($1)`, customer); err != nil {
		t.Fatal(err)
	}
	holder := dbtest.Conn(t, ctx, db.URL)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, customer); err != nil {
		t.Fatal(err)
	}

	const want = "lockstep webhook evt_appname_1"
	inside := make(chan string, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	done := make(chan error, 1)
	// However the test ends, let the transaction finish before the pool
	// closes (Close waits for every connection).
	defer func() {
		_ = tx.Rollback(context.Background())
		releaseOnce.Do(func() { close(release) })
		<-done
	}()
	go func() {
		done <- m.InCustomerTx(ctx, customer, lockmgr.Who{Writer: "webhook", Ref: "evt_appname_1"}, func(ctx context.Context, tx *lockmgr.Tx) error {
			var name string
			if err := tx.QueryRow(ctx, `SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()`).Scan(&name); err != nil {
				return err
			}
			inside <- name
			<-release
			return nil
		})
	}()

	dbtest.WaitFor(t, "the waiting transaction to show its name", 10*time.Second, func() (bool, string) {
		locks, err := lockmgr.ListLocks(ctx, db.Pool)
		if err != nil {
			t.Fatalf("ListLocks: %v", err)
		}
		for _, l := range locks {
			if !l.Granted && l.Key != nil && *l.Key == key {
				return l.ApplicationName == want && l.CustomerID == customer, fmt.Sprintf("%+v", l)
			}
		}
		return false, fmt.Sprintf("%+v", locks)
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case name := <-inside:
		if name != want {
			t.Fatalf("application_name while holding = %q, want %q", name, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("transaction did not get the lock")
	}
	releaseOnce.Do(func() { close(release) })
	if err := <-done; err != nil {
		t.Fatalf("InCustomerTx: %v", err)
	}
	done <- nil // for the deferred wait
	// The pool has one connection: the one that ran the transaction.
	var after string
	if err := pool.QueryRow(ctx, `SELECT current_setting('application_name')`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != "lockstep" {
		t.Fatalf("application_name after commit = %q, want lockstep", after)
	}
}
