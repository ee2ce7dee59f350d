package integration_test

// Tests of who holds a customer right now: the stripe_customer_locks view
// and its readers (GET /admin/locks, `lockstep locks`), and the
// application_name each writer sets.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
)

type locksDoc struct {
	Locks []lockmgr.LockInfo `json:"locks"`
}

func findLock(locks []lockmgr.LockInfo, pid int32, key int64) *lockmgr.LockInfo {
	for i, l := range locks {
		if l.PID == pid && l.Key != nil && *l.Key == key {
			return &locks[i]
		}
	}
	return nil
}

// checkLocks asserts what every reader of the view must show: the holder
// of each customer's lock granted, the waiter waiting and blocked by it, and
// the foreign lock 42 with an empty customer.
func checkLocks(t *testing.T, from string, locks []lockmgr.LockInfo, holderPID, waiterPID int32, customers map[string]int64, waitedOn string) {
	t.Helper()
	for customer, key := range customers {
		h := findLock(locks, holderPID, key)
		if h == nil || h.CustomerID != customer || !h.Granted || h.Kind != "customer" {
			t.Errorf("%s: holder of %s (hashtext %d) = %+v", from, customer, key, h)
		}
		if h != nil && h.ApplicationName != "ops-test holder" {
			t.Errorf("%s: holder application_name = %q", from, h.ApplicationName)
		}
	}
	w := findLock(locks, waiterPID, customers[waitedOn])
	if w == nil || w.CustomerID != waitedOn || w.Granted || !slices.Contains(w.BlockedBy, holderPID) {
		t.Errorf("%s: waiter for %s = %+v, want waiting and blocked by %d", from, waitedOn, w, holderPID)
	}
	if o := findLock(locks, holderPID, 42); o == nil || o.CustomerID != "" || !o.Granted {
		t.Errorf("%s: the lock on key 42, which names no customer, = %+v, want shown with an empty customer", from, o)
	}
}

// A second connection holds two customers' locks (one with a negative
// hashtext) and a foreign lock; a third waits. The view, GET /admin/locks
// and `lockstep locks` (table and --json) all name the customers, show the
// holder granted and the waiter blocked by it, and keep the foreign lock.
func TestLocksViewAdminAndCommand(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	side := dbtest.Conn(t, ctx, b.db.URL)
	neg, negKey := dbtest.CustomerWithKeySign(t, ctx, side, true)
	pos, posKey := dbtest.CustomerWithKeySign(t, ctx, side, false)
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO stripe_customers (stripe_customer_id) VALUES ($1), ($2)`, neg, pos); err != nil {
		t.Fatalf("insert customers: %v", err)
	}

	hconn := dbtest.Conn(t, ctx, b.db.URL)
	holderPID := dbtest.BackendPID(t, ctx, hconn)
	htx, err := hconn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := htx.Exec(ctx, `SELECT set_config('application_name', 'ops-test holder', true),
	       pg_advisory_xact_lock(hashtext($1)), pg_advisory_xact_lock(hashtext($2)), pg_advisory_xact_lock(42)`, neg, pos); err != nil {
		t.Fatalf("take locks: %v", err)
	}
	releaseHolder := func() { _ = htx.Rollback(context.Background()) }

	wconn := dbtest.Conn(t, ctx, b.db.URL)
	waiterPID := dbtest.BackendPID(t, ctx, wconn)
	waited := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		_, err := wconn.Exec(wctx, `SELECT pg_advisory_xact_lock(hashtext($1))`, neg)
		waited <- err
	}()
	defer func() { releaseHolder(); <-finished }()

	dbtest.WaitFor(t, "the waiter in stripe_customer_locks", 10*time.Second, func() (bool, string) {
		var n int
		err := b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM stripe_customer_locks
			WHERE pid = $1 AND NOT granted AND stripe_customer_id = $2`, waiterPID, neg).Scan(&n)
		return err == nil && n == 1, fmt.Sprintf("n=%d err=%v", n, err)
	})
	customers := map[string]int64{neg: negKey, pos: posKey}

	// The view itself, as a DBA reads it.
	rows, err := b.db.Pool.Query(ctx, `SELECT stripe_customer_id, lock_key, pid, granted, blocked_by, coalesce(application_name, '')
		FROM stripe_customer_locks`)
	if err != nil {
		t.Fatalf("query view: %v", err)
	}
	viewLocks, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (lockmgr.LockInfo, error) {
		var l lockmgr.LockInfo
		l.Kind = "customer"
		err := r.Scan(&l.CustomerID, &l.Key, &l.PID, &l.Granted, &l.BlockedBy, &l.ApplicationName)
		return l, err
	})
	if err != nil {
		t.Fatalf("read view: %v", err)
	}
	checkLocks(t, "view", viewLocks, holderPID, waiterPID, customers, neg)

	// GET /admin/locks.
	if r := b.api(http.MethodGet, "/admin/locks", "", nil); r.code != http.StatusUnauthorized {
		t.Errorf("/admin/locks without token: %d, want 401", r.code)
	}
	if r := b.api(http.MethodGet, "/admin/locks", appToken, nil); r.code != http.StatusUnauthorized {
		t.Errorf("/admin/locks with the app token: %d, want 401", r.code)
	}
	r := b.api(http.MethodGet, "/admin/locks", adminToken, nil)
	must200(t, "GET /admin/locks", r)
	var fromAPI locksDoc
	if err := json.Unmarshal([]byte(r.body), &fromAPI); err != nil {
		t.Fatalf("/admin/locks body: %v: %s", err, r.body)
	}
	checkLocks(t, "/admin/locks", fromAPI.Locks, holderPID, waiterPID, customers, neg)

	// lockstep locks --json: the same document.
	out, err := b.command(ctx, "locks", "--json")
	if err != nil {
		t.Fatalf("locks --json: %v", err)
	}
	var fromCmd locksDoc
	if err := json.Unmarshal([]byte(out), &fromCmd); err != nil {
		t.Fatalf("locks --json output: %v: %s", err, out)
	}
	checkLocks(t, "locks --json", fromCmd.Locks, holderPID, waiterPID, customers, neg)

	// lockstep locks: the table.
	out, err = b.command(ctx, "locks")
	if err != nil {
		t.Fatalf("locks: %v", err)
	}
	t.Logf("lockstep locks:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	row := func(customer string, pid int32) []string {
		for _, l := range lines {
			f := strings.Fields(l)
			if len(f) > 2 && f[0] == customer && f[1] == fmt.Sprint(pid) {
				return f
			}
		}
		t.Errorf("locks table has no row for %s pid %d:\n%s", customer, pid, out)
		return nil
	}
	if f := row(neg, holderPID); f != nil && f[2] != "granted" {
		t.Errorf("holder row: %q", f)
	}
	if f := row(pos, holderPID); f != nil && f[2] != "granted" {
		t.Errorf("holder row: %q", f)
	}
	if f := row(neg, waiterPID); f != nil && (f[2] != "waiting" || !slices.Contains(strings.Split(f[4], ","), fmt.Sprint(holderPID))) {
		t.Errorf("waiter row %q, want waiting, blocked by %d", f, holderPID)
	}
	if !strings.Contains(out, "(key 42)") || !strings.Contains(out, "4 locks: 3 granted, 1 waiting") {
		t.Errorf("locks table lacks the foreign lock or the summary:\n%s", out)
	}

	releaseHolder()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter still blocked 10s after the holder released")
	}
	out, err = b.command(ctx, "locks")
	if err != nil || !strings.Contains(out, "no advisory locks held or awaited") {
		t.Fatalf("locks after release: %v\n%s", err, out)
	}
}

// The view's customer join is an index lookup on a large customers table.
func TestLocksViewIndexLookup(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO stripe_customers (stripe_customer_id, user_id)
		SELECT 'cus_ops_' || g, CASE WHEN g % 2 = 0 THEN 'user-ops-' || g END FROM generate_series(1, 20000) g`); err != nil {
		t.Fatalf("insert customers: %v", err)
	}
	if _, err := b.db.Pool.Exec(ctx, `ANALYZE stripe_customers`); err != nil {
		t.Fatal(err)
	}
	rows, err := b.db.Pool.Query(ctx, `EXPLAIN SELECT * FROM stripe_customer_locks`)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(plan, "\n")
	if !strings.Contains(text, "Index") || strings.Contains(text, "Seq Scan on stripe_customers") ||
		!strings.Contains(text, "stripe_customers_lock_key_idx") {
		t.Fatalf("the view does not look customers up by index:\n%s", text)
	}
}

// A webhook and a checkout-success call blocked on a held customer lock say
// who they are in application_name, as the view and pg_stat_activity show.
func TestLocksWritersNameThemselves(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("ops-appname"), now)
	must200(t, "session completed", b.postWebhook(sessionCompleted(fx, now))) // the customer exists

	ev := subEvent(fx, "customer.subscription.updated", "active", now.Add(time.Second))
	for _, w := range []struct {
		name string
		send func() response
	}{
		{"lockstep webhook " + eventID(t, ev), func() response { return b.postWebhook(ev) }},
		{"lockstep checkout " + fx.session, func() response { return b.checkout(fx.session, fx.user) }},
	} {
		holderPID, release := b.holdLock(fx.customer)
		done := make(chan response, 1)
		finished := make(chan struct{})
		go func() { defer close(finished); done <- w.send() }()
		// Should the test stop here, the request still ends before it does.
		defer func() { release(); <-finished }()
		dbtest.WaitFor(t, w.name+" waiting in the view", 5*time.Second, func() (bool, string) {
			var blockedBy []int32
			err := b.db.Pool.QueryRow(ctx, `SELECT blocked_by FROM stripe_customer_locks
				WHERE stripe_customer_id = $1 AND NOT granted AND application_name = $2`, fx.customer, w.name).Scan(&blockedBy)
			return err == nil && slices.Contains(blockedBy, holderPID), fmt.Sprintf("blocked_by %v, %v", blockedBy, err)
		})
		// pg_stat_activity tells the same, for a DBA without the view.
		if n := b.count(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND application_name = $1 AND wait_event_type = 'Lock'`, w.name); n != 1 {
			t.Errorf("pg_stat_activity: %d backends named %q waiting on a lock, want 1", n, w.name)
		}
		release()
		select {
		case r := <-done:
			must200(t, w.name+" after release", r)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still blocked 10s after release", w.name)
		}
	}
	// Once done, the pooled connections no longer carry the writers' names.
	if n := b.count(`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'lockstep %'`); n != 0 {
		t.Errorf("%d backends still named after a writer that finished", n)
	}
}
