package integration_test

// Tests of what the people on call use: the stripe_customer_locks view and
// its readers (GET /admin/locks, `lockstep locks`), application_name,
// /metrics, replay, /healthz and /readyz, the logs, and the SIGTERM drain.
// Helpers here are prefixed ops so they stay apart from other test files.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/lockmgr"
	schema "github.com/lockstep/lockstep/sql"
)

// opsConn opens a side connection, closed when the test ends.
func opsConn(t testing.TB, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func opsPID(t testing.TB, ctx context.Context, conn *pgx.Conn) int32 {
	t.Helper()
	var pid int32
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatalf("backend pid: %v", err)
	}
	return pid
}

// opsCustomer returns a fresh customer id whose hashtext has the wanted sign.
func opsCustomer(t *testing.T, ctx context.Context, conn *pgx.Conn, negative bool) (id string, key int64) {
	t.Helper()
	for range 200 {
		id := stripefake.NewID("cus_")
		if err := conn.QueryRow(ctx, `SELECT hashtext($1)`, id).Scan(&key); err != nil {
			t.Fatalf("hashtext: %v", err)
		}
		if (key < 0) == negative {
			return id, key
		}
	}
	t.Fatal("no customer id with the wanted hashtext sign in 200 tries")
	return "", 0
}

// opsHold takes customer's lock in a transaction on a side connection, as
// a stuck writer would. release commits it; it also runs at cleanup.
func opsHold(t testing.TB, ctx context.Context, url, customer string) (pid int32, release func()) {
	t.Helper()
	conn := opsConn(t, ctx, url)
	pid = opsPID(t, ctx, conn)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('application_name', 'ops-test holder', true), pg_advisory_xact_lock(hashtext($1))`, customer); err != nil {
		t.Fatalf("hold lock of %s: %v", customer, err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Commit(context.Background()) }) }
	t.Cleanup(release)
	return pid, release
}

// opsEnv is the environment a command gets in these tests.
func opsEnv(b *bundle) map[string]string {
	return map[string]string{
		"DATABASE_URL":      b.db.URL,
		"STRIPE_API_BASE":   b.stripe.URL,
		"STRIPE_SECRET_KEY": stripeKey,
	}
}

// opsRun runs a lockstep command and returns what it printed.
func opsRun(t *testing.T, ctx context.Context, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err := app.Run(ctx, args, app.Env{Getenv: func(k string) string { return env[k] }, Stdout: &out, Stderr: io.Discard})
	return out.String(), err
}

type opsLocks struct {
	Locks []lockmgr.LockInfo `json:"locks"`
}

func opsFind(locks []lockmgr.LockInfo, pid int32, key int64) *lockmgr.LockInfo {
	for i, l := range locks {
		if l.PID == pid && l.Key != nil && *l.Key == key {
			return &locks[i]
		}
	}
	return nil
}

// opsCheckLocks asserts what every reader of the view must show: the holder
// of each customer's lock granted, the waiter waiting and blocked by it, and
// the foreign lock 42 with an empty customer.
func opsCheckLocks(t *testing.T, from string, locks []lockmgr.LockInfo, holderPID, waiterPID int32, customers map[string]int64, waitedOn string) {
	t.Helper()
	for customer, key := range customers {
		h := opsFind(locks, holderPID, key)
		if h == nil || h.CustomerID != customer || !h.Granted || h.Kind != "customer" {
			t.Errorf("%s: holder of %s (hashtext %d) = %+v", from, customer, key, h)
		}
		if h != nil && h.ApplicationName != "ops-test holder" {
			t.Errorf("%s: holder application_name = %q", from, h.ApplicationName)
		}
	}
	w := opsFind(locks, waiterPID, customers[waitedOn])
	if w == nil || w.CustomerID != waitedOn || w.Granted || !slices.Contains(w.BlockedBy, holderPID) {
		t.Errorf("%s: waiter for %s = %+v, want waiting and blocked by %d", from, waitedOn, w, holderPID)
	}
	if o := opsFind(locks, holderPID, 42); o == nil || o.CustomerID != "" || !o.Granted {
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
	side := opsConn(t, ctx, b.db.URL)
	neg, negKey := opsCustomer(t, ctx, side, true)
	pos, posKey := opsCustomer(t, ctx, side, false)
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO stripe_customers (stripe_customer_id) VALUES ($1), ($2)`, neg, pos); err != nil {
		t.Fatalf("insert customers: %v", err)
	}

	hconn := opsConn(t, ctx, b.db.URL)
	holderPID := opsPID(t, ctx, hconn)
	htx, err := hconn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := htx.Exec(ctx, `SELECT set_config('application_name', 'ops-test holder', true),
	       pg_advisory_xact_lock(hashtext($1)), pg_advisory_xact_lock(hashtext($2)), pg_advisory_xact_lock(42)`, neg, pos); err != nil {
		t.Fatalf("take locks: %v", err)
	}
	releaseHolder := func() { _ = htx.Rollback(context.Background()) }

	wconn := opsConn(t, ctx, b.db.URL)
	waiterPID := opsPID(t, ctx, wconn)
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

	waitFor(t, "the waiter in stripe_customer_locks", 10*time.Second, func() (bool, string) {
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
	opsCheckLocks(t, "view", viewLocks, holderPID, waiterPID, customers, neg)

	// GET /admin/locks.
	if r := b.api(http.MethodGet, "/admin/locks", "", nil); r.code != http.StatusUnauthorized {
		t.Errorf("/admin/locks without token: %d, want 401", r.code)
	}
	if r := b.api(http.MethodGet, "/admin/locks", appToken, nil); r.code != http.StatusUnauthorized {
		t.Errorf("/admin/locks with the app token: %d, want 401", r.code)
	}
	r := b.api(http.MethodGet, "/admin/locks", adminToken, nil)
	must200(t, "GET /admin/locks", r)
	var fromAPI opsLocks
	if err := json.Unmarshal([]byte(r.body), &fromAPI); err != nil {
		t.Fatalf("/admin/locks body: %v: %s", err, r.body)
	}
	opsCheckLocks(t, "/admin/locks", fromAPI.Locks, holderPID, waiterPID, customers, neg)

	// lockstep locks --json: the same document.
	env := opsEnv(b)
	out, err := opsRun(t, ctx, env, "locks", "--json")
	if err != nil {
		t.Fatalf("locks --json: %v", err)
	}
	var fromCmd opsLocks
	if err := json.Unmarshal([]byte(out), &fromCmd); err != nil {
		t.Fatalf("locks --json output: %v: %s", err, out)
	}
	opsCheckLocks(t, "locks --json", fromCmd.Locks, holderPID, waiterPID, customers, neg)

	// lockstep locks: the table.
	out, err = opsRun(t, ctx, env, "locks")
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
	out, err = opsRun(t, ctx, env, "locks")
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
		holderPID, release := opsHold(t, ctx, b.db.URL, fx.customer)
		done := make(chan response, 1)
		finished := make(chan struct{})
		go func() { defer close(finished); done <- w.send() }()
		// Should the test stop here, the request still ends before it does.
		defer func() { release(); <-finished }()
		waitFor(t, w.name+" waiting in the view", 5*time.Second, func() (bool, string) {
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

// opsMetrics is one scrape of /metrics, parsed.
type opsMetrics map[string]*dto.MetricFamily

func opsScrape(t *testing.T, b *bundle) opsMetrics {
	t.Helper()
	res, err := b.client.Get(b.srv.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", res.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return fams
}

// get sums the series of name whose labels include want: a counter's or
// gauge's value, a histogram's count. ok is false when no series matches.
func (m opsMetrics) get(name string, want map[string]string) (v float64, ok bool) {
	f := m[name]
	if f == nil {
		return 0, false
	}
series:
	for _, s := range f.GetMetric() {
		for k, wv := range want {
			found := false
			for _, lp := range s.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == wv {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		ok = true
		switch {
		case s.Counter != nil:
			v += s.GetCounter().GetValue()
		case s.Gauge != nil:
			v += s.GetGauge().GetValue()
		case s.Histogram != nil:
			v += float64(s.GetHistogram().GetSampleCount())
		case s.Untyped != nil:
			v += s.GetUntyped().GetValue()
		}
	}
	return v, ok
}

func opsHistSum(m opsMetrics, name string) float64 {
	var sum float64
	if f := m[name]; f != nil {
		for _, s := range f.GetMetric() {
			sum += s.GetHistogram().GetSampleSum()
		}
	}
	return sum
}

func (m opsMetrics) val(name string, labels ...string) float64 {
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	v, _ := m.get(name, want)
	return v
}

// opsFailEvent sends ev while fx's customer lock is held elsewhere, on a
// bundle whose lock timeout and retry budget are short: lockstep answers
// 503 and records the event as failed.
func opsFailEvent(t *testing.T, b *bundle, customer string, ev []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, release := opsHold(t, ctx, b.db.URL, customer)
	defer release()
	r := b.postWebhook(ev)
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("webhook under a held lock: %d, want 503: %s", r.code, r.body)
	}
}

// /metrics moves as events are processed, duplicated, ignored and failed;
// the failure rate can be computed from it; which secret matched, retries
// by SQLSTATE, lock times, ledger counts and pool statistics are there.
func TestMetricsMoveWithEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	before := opsScrape(t, b)
	for _, name := range []string{"lockstep_webhook_events_total", "lockstep_tx_retries_total", "lockstep_lock_wait_seconds"} {
		if v, _ := before.get(name, nil); v != 0 {
			t.Fatalf("%s = %v on a fresh server", name, v)
		}
	}
	for _, o := range []string{"paid", "pending", "not_found", "service_unavailable", "other"} {
		if _, ok := before.get("lockstep_checkout_success_total", map[string]string{"outcome": o}); !ok {
			t.Errorf("lockstep_checkout_success_total{outcome=%q} missing before any call (rates need it at 0)", o)
		}
	}

	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("ops-metrics"), now)
	completed := sessionCompleted(fx, now)
	must200(t, "session completed", b.postWebhook(completed))
	if st := b.postWebhook(completed).json(t)["status"]; st != "duplicate" {
		t.Fatalf("second delivery: %v, want duplicate", st)
	}
	ignored := event(stripefake.NewID("evt_"), "product.created", now, map[string]any{"id": "prod_ops", "object": "product"})
	if st := b.postWebhook(ignored).json(t)["status"]; st != "ignored" {
		t.Fatalf("product.created: %v, want ignored", st)
	}
	created := subEvent(fx, "customer.subscription.created", "active", now)
	must200(t, "signed with the second secret", b.postWebhookHeader(created, stripefake.SignatureHeader(created, secretOld, time.Now())))
	if r := b.postWebhookHeader(created, stripefake.SignatureHeader(created, "whsec_not_configured_0000", time.Now())); r.code != http.StatusBadRequest {
		t.Fatalf("unknown secret: %d", r.code)
	}
	must200(t, "checkout success", b.checkout(fx.session, fx.user))
	if r := b.checkout("cs_test_nosuchsession", fx.user); r.code != http.StatusNotFound {
		t.Fatalf("unknown session: %d", r.code)
	}
	mid := opsScrape(t, b)
	opsFailEvent(t, b, fx.customer, subEvent(fx, "customer.subscription.updated", "past_due", now.Add(time.Second)))
	after := opsScrape(t, b)

	delta := func(name string, labels ...string) float64 {
		return after.val(name, labels...) - before.val(name, labels...)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"lockstep_webhook_events_total", []string{"type", "checkout.session.completed", "outcome", "processed"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "checkout.session.completed", "outcome", "duplicate"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "product.created", "outcome", "ignored"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "customer.subscription.created", "outcome", "processed"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "customer.subscription.updated", "outcome", "failed"}, 1},
		{"lockstep_webhook_events_total", []string{"outcome", "failed"}, 1},
		{"lockstep_webhook_secret_matched_total", []string{"secret", "1"}, 4},
		{"lockstep_webhook_secret_matched_total", []string{"secret", "2"}, 1},
		{"lockstep_webhook_rejected_total", []string{"reason", "signature"}, 1},
		{"lockstep_checkout_success_total", []string{"outcome", "paid"}, 1},
		{"lockstep_checkout_success_total", []string{"outcome", "not_found"}, 1},
		{"lockstep_ledger_events", []string{"status", "failed"}, 1},
		{"lockstep_ledger_events", []string{"status", "ignored"}, 1},
		{"lockstep_ledger_events", []string{"status", "processed"}, 2},
	} {
		if got := delta(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Only the failure retried, on lock_timeout.
	if got := mid.val("lockstep_tx_retries_total"); got != 0 {
		t.Errorf("retries before the failure: %v", got)
	}
	if got := delta("lockstep_tx_retries_total", "writer", "webhook", "sqlstate", "55P03"); got < 1 {
		t.Errorf("lockstep_tx_retries_total{sqlstate=55P03} moved by %v, want at least 1", got)
	}
	// Three transactions got a lock: the session and the subscription
	// events and the checkout. The duplicate stopped before the lock, the
	// ignored event needs none, and the failed one never got it: its
	// attempts (the first and each retry) each waited a full lock_timeout,
	// and those waits count too.
	failedAttempts := delta("lockstep_tx_retries_total", "writer", "webhook", "sqlstate", "55P03") + 1
	if got := delta("lockstep_lock_wait_seconds"); got != 3+failedAttempts {
		t.Errorf("lockstep_lock_wait_seconds count moved by %v, want %v (3 granted, %v timed out)", got, 3+failedAttempts, failedAttempts)
	}
	if got := opsHistSum(after, "lockstep_lock_wait_seconds") - opsHistSum(before, "lockstep_lock_wait_seconds"); got < 0.1*failedAttempts {
		t.Errorf("lock wait sum %.3fs, want at least lock_timeout (100ms) per timed-out attempt", got)
	}
	if got := delta("lockstep_lock_hold_seconds"); got != 3 {
		t.Errorf("lockstep_lock_hold_seconds count moved by %v, want 3", got)
	}
	for _, h := range []string{"lockstep_lock_wait_seconds", "lockstep_lock_hold_seconds"} {
		if got := delta(h, "writer", "checkout"); got != 1 {
			t.Errorf("%s{writer=checkout} count moved by %v, want 1", h, got)
		}
	}
	// The failure rate, as the PromQL in the README computes it.
	failed := delta("lockstep_webhook_events_total", "outcome", "failed")
	total := delta("lockstep_webhook_events_total")
	t.Logf("webhook events %v, failed %v; retries on 55P03 %v; lock waits %v (sum %.3fs), holds %v (sum %.3fs)",
		total, failed, delta("lockstep_tx_retries_total", "sqlstate", "55P03"),
		delta("lockstep_lock_wait_seconds"), opsHistSum(after, "lockstep_lock_wait_seconds")-opsHistSum(before, "lockstep_lock_wait_seconds"),
		delta("lockstep_lock_hold_seconds"), opsHistSum(after, "lockstep_lock_hold_seconds")-opsHistSum(before, "lockstep_lock_hold_seconds"))
	if total != 5 || failed/total != 0.2 {
		t.Errorf("webhook failure rate = %v/%v, want 1/5", failed, total)
	}
	// Pool statistics.
	if got := after.val("lockstep_db_pool_max_conns"); got != 10 {
		t.Errorf("lockstep_db_pool_max_conns = %v, want 10", got)
	}
	if got := after.val("lockstep_db_pool_acquires_total"); got <= before.val("lockstep_db_pool_acquires_total") {
		t.Errorf("lockstep_db_pool_acquires_total did not move: %v", got)
	}
	for _, st := range []string{"acquired", "idle", "constructing"} {
		if _, ok := after.get("lockstep_db_pool_conns", map[string]string{"state": st}); !ok {
			t.Errorf("lockstep_db_pool_conns{state=%q} missing", st)
		}
	}
	if _, ok := after.get("lockstep_http_request_duration_seconds", map[string]string{"route": "/webhooks/stripe", "code": "503"}); !ok {
		t.Errorf("no latency recorded for the webhook's 503")
	}
}

// A failed event is replayed through POST /admin/events/{id}/replay and
// processed once; replaying a processed event changes nothing.
func TestReplayAdminEndpoints(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("ops-replay"), now)
	must200(t, "session completed", b.postWebhook(sessionCompleted(fx, now)))
	ev := subEvent(fx, "customer.subscription.created", "active", now)
	id := eventID(t, ev)
	opsFailEvent(t, b, fx.customer, ev)

	// The ledger lists it.
	if r := b.api(http.MethodGet, "/admin/events?status=failed", "", nil); r.code != http.StatusUnauthorized {
		t.Errorf("events without token: %d, want 401", r.code)
	}
	if r := b.api(http.MethodGet, "/admin/events?status=failed", "wrong-admin-token-000", nil); r.code != http.StatusUnauthorized {
		t.Errorf("events with a wrong token: %d, want 401", r.code)
	}
	if r := b.api(http.MethodGet, "/admin/events?status=exploded", adminToken, nil); r.code != http.StatusBadRequest {
		t.Errorf("events?status=exploded: %d, want 400", r.code)
	}
	r := b.api(http.MethodGet, "/admin/events?status=failed", adminToken, nil)
	must200(t, "events?status=failed", r)
	var listed struct {
		Events []struct {
			EventID    string `json:"event_id"`
			Status     string `json:"status"`
			Attempts   int    `json:"attempts"`
			LastError  string `json:"last_error"`
			CustomerID string `json:"stripe_customer_id"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(r.body), &listed); err != nil {
		t.Fatalf("events body: %v: %s", err, r.body)
	}
	if len(listed.Events) != 1 || listed.Events[0].EventID != id || listed.Events[0].Status != "failed" ||
		listed.Events[0].Attempts != 1 || listed.Events[0].LastError == "" || listed.Events[0].CustomerID != fx.customer {
		t.Fatalf("failed events = %+v, want %s failed once with its error", listed.Events, id)
	}
	if code, v := b.userBilling(fx.user); code != http.StatusOK || len(v.Subscriptions) != 0 {
		t.Fatalf("before replay: %d %+v, want no subscription", code, v)
	}

	// Replay it.
	if r := b.api(http.MethodPost, "/admin/events/"+id+"/replay", "", nil); r.code != http.StatusUnauthorized {
		t.Errorf("replay without token: %d, want 401", r.code)
	}
	r = b.api(http.MethodPost, "/admin/events/"+id+"/replay", adminToken, nil)
	must200(t, "replay", r)
	if got := r.json(t); got["outcome"] != "processed" || got["event_id"] != id {
		t.Fatalf("replay = %v, want processed", got)
	}
	if st := b.scalar(`SELECT status || ' ' || attempts FROM stripe_events WHERE event_id = $1`, id); st != "processed 2" {
		t.Fatalf("ledger after replay: %s, want processed 2", st)
	}
	code, v := b.userBilling(fx.user)
	if code != http.StatusOK || len(v.Subscriptions) != 1 || v.Subscriptions[0].ID != fx.subscription || v.Subscriptions[0].Status != "active" {
		t.Fatalf("after replay: %d %+v, want %s active", code, v, fx.subscription)
	}

	// Again: a processed event changes nothing.
	const rowQ = `SELECT row_to_json(e)::text FROM stripe_events e WHERE event_id = $1`
	const subQ = `SELECT row_to_json(s)::text FROM stripe_subscriptions s WHERE stripe_subscription_id = $1`
	evRow, subRow := b.scalar(rowQ, id), b.scalar(subQ, fx.subscription)
	r = b.api(http.MethodPost, "/admin/events/"+id+"/replay", adminToken, nil)
	must200(t, "second replay", r)
	if got := r.json(t)["outcome"]; got != "duplicate" {
		t.Fatalf("second replay: %v, want duplicate", got)
	}
	if b.scalar(rowQ, id) != evRow || b.scalar(subQ, fx.subscription) != subRow {
		t.Fatalf("replaying a processed event changed its rows")
	}
	if r := b.api(http.MethodGet, "/admin/events?status=failed", adminToken, nil); !strings.Contains(r.body, `"events":[]`) {
		t.Fatalf("failed events after replay: %s", r.body)
	}

	// Unknown and malformed ids.
	if r := b.api(http.MethodPost, "/admin/events/evt_nosuchevent123/replay", adminToken, nil); r.code != http.StatusNotFound {
		t.Errorf("replay of an unknown event: %d, want 404: %s", r.code, r.body)
	}
	if r := b.api(http.MethodPost, "/admin/events/not-an-event/replay", adminToken, nil); r.code != http.StatusBadRequest {
		t.Errorf("replay of a malformed id: %d, want 400", r.code)
	}
	m := opsScrape(t, b)
	for outcome, want := range map[string]float64{"processed": 1, "duplicate": 1, "not_found": 1} {
		if got := m.val("lockstep_replay_events_total", "outcome", outcome); got != want {
			t.Errorf("lockstep_replay_events_total{outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
}

// `lockstep replay EVENT_ID` and `lockstep replay --failed` process failed
// events once, oldest first; an unknown id is one clear error line.
func TestReplayCommand(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	now := time.Now().Add(-time.Hour).Truncate(time.Second)
	var ids []string
	var fxs []fixture
	for i := range 3 {
		fx := b.paidCheckout(uniqueUser(fmt.Sprintf("ops-replay-cli-%d", i)), now)
		must200(t, "session completed", b.postWebhook(sessionCompleted(fx, now)))
		// Stripe times: the second event is the oldest.
		ev := subEvent(fx, "customer.subscription.created", "active", now.Add(time.Duration([]int{2, 1, 3}[i])*time.Minute))
		opsFailEvent(t, b, fx.customer, ev)
		ids = append(ids, eventID(t, ev))
		fxs = append(fxs, fx)
	}
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'failed'`); n != 3 {
		t.Fatalf("failed events = %d, want 3", n)
	}
	env := opsEnv(b)

	out, err := opsRun(t, ctx, env, "replay", ids[0])
	if err != nil {
		t.Fatalf("replay %s: %v\n%s", ids[0], err, out)
	}
	if want := ids[0] + "\tprocessed\nreplayed 1 events, 0 failed\n"; out != want {
		t.Fatalf("replay output %q, want %q", out, want)
	}
	if st := b.scalar(`SELECT status || ' ' || attempts FROM stripe_events WHERE event_id = $1`, ids[0]); st != "processed 2" {
		t.Fatalf("ledger after replay: %s", st)
	}

	out, err = opsRun(t, ctx, env, "replay", "--failed")
	if err != nil {
		t.Fatalf("replay --failed: %v\n%s", err, out)
	}
	if want := ids[1] + "\tprocessed\n" + ids[2] + "\tprocessed\nreplayed 2 events, 0 failed\n"; out != want {
		t.Fatalf("replay --failed output %q, want %q (oldest Stripe time first)", out, want)
	}
	for _, fx := range fxs {
		if code, v := b.userBilling(fx.user); code != http.StatusOK || len(v.Subscriptions) != 1 || v.Subscriptions[0].Status != "active" {
			t.Fatalf("%s after replay: %d %+v", fx.user, code, v)
		}
	}
	// Once more: nothing failed is left, and a processed event is a duplicate.
	if out, err := opsRun(t, ctx, env, "replay", "--failed"); err != nil || out != "replayed 0 events, 0 failed\n" {
		t.Fatalf("second replay --failed: %v %q", err, out)
	}
	before := b.scalar(`SELECT string_agg(row_to_json(e)::text, ',' ORDER BY event_id) FROM stripe_events e`)
	if out, err := opsRun(t, ctx, env, "replay", ids[1]); err != nil || out != ids[1]+"\tduplicate\nreplayed 1 events, 0 failed\n" {
		t.Fatalf("replay of a processed event: %v %q", err, out)
	}
	if after := b.scalar(`SELECT string_agg(row_to_json(e)::text, ',' ORDER BY event_id) FROM stripe_events e`); after != before {
		t.Fatalf("replaying a processed event changed the ledger")
	}

	_, err = opsRun(t, ctx, env, "replay", "evt_nosuchevent123")
	if err == nil || err.Error() != "replay evt_nosuchevent123: event not found" {
		t.Fatalf("replay of an unknown event: %v, want one line naming it", err)
	}
}

// /healthz says the process is alive; /readyz says whether the database
// answers, failing promptly while it does not and recovering by itself.
func TestReadyzDatabaseDown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	must200(t, "readyz", b.api(http.MethodGet, "/readyz", "", nil))
	must200(t, "healthz", b.api(http.MethodGet, "/healthz", "", nil))

	// The database goes "down": it refuses connections and loses its sessions.
	admin := opsConn(t, ctx, dbtest.ServerURL(t))
	dbName := pgx.Identifier{b.db.Name}.Sanitize()
	if _, err := admin.Exec(ctx, `ALTER DATABASE `+dbName+` ALLOW_CONNECTIONS false`); err != nil {
		t.Fatalf("refuse connections: %v", err)
	}
	restore := func() { _, _ = admin.Exec(context.Background(), `ALTER DATABASE `+dbName+` ALLOW_CONNECTIONS true`) }
	t.Cleanup(restore)
	var killed int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1`, b.db.Name).Scan(&killed); err != nil {
		t.Fatalf("terminate backends: %v", err)
	}
	t.Logf("terminated %d backends of %s", killed, b.db.Name)

	for i := range 3 { // the first may find a dead pooled connection, the next must connect
		start := time.Now()
		r := b.api(http.MethodGet, "/readyz", "", nil)
		took := time.Since(start)
		if r.code != http.StatusServiceUnavailable || took > 3*time.Second {
			t.Fatalf("readyz #%d while down: %d after %s, want 503 within 3s: %s", i, r.code, took, r.body)
		}
		t.Logf("readyz #%d while down: %d in %s: %s", i, r.code, took.Round(time.Millisecond), strings.TrimSpace(r.body))
		if body := r.json(t); body["status"] != "unavailable" || strings.Contains(r.body, b.db.Name) {
			t.Fatalf("readyz body %s: want status unavailable, without connection details", r.body)
		}
	}
	must200(t, "healthz while the database is down", b.api(http.MethodGet, "/healthz", "", nil))
	start := time.Now()
	if r := b.api(http.MethodGet, "/metrics", "", nil); r.code != http.StatusOK || time.Since(start) > 3*time.Second {
		t.Fatalf("metrics while the database is down: %d after %s", r.code, time.Since(start))
	}
	if !strings.Contains(b.logs.String(), `"msg":"not ready"`) {
		t.Errorf("no \"not ready\" log line")
	}

	restore()
	restored := time.Now()
	waitFor(t, "readyz back to 200", 15*time.Second, func() (bool, string) {
		r := b.api(http.MethodGet, "/readyz", "", nil)
		return r.code == http.StatusOK, fmt.Sprintf("%d %s", r.code, r.body)
	})
	t.Logf("readyz back to 200 %s after connections were allowed again", time.Since(restored).Round(time.Millisecond))
}

// A schema behind the binary's is not ready.
func TestReadyzSchemaBehind(t *testing.T) {
	t.Parallel()
	b := setup(t)
	must200(t, "readyz", b.api(http.MethodGet, "/readyz", "", nil))
	if err := schema.Down(b.db.URL, 1); err != nil {
		t.Fatalf("migrate down: %v", err)
	}
	r := b.api(http.MethodGet, "/readyz", "", nil)
	if want := fmt.Sprintf("schema version %d, want %d", schema.Latest-1, schema.Latest); r.code != http.StatusServiceUnavailable || r.json(t)["error"] != want {
		t.Fatalf("readyz on an old schema: %d %s, want 503 %q", r.code, r.body, want)
	}
	if err := schema.Up(b.db.URL); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	must200(t, "readyz after migrating", b.api(http.MethodGet, "/readyz", "", nil))
}

// opsLogLines parses JSON log lines; every line must be one JSON object
// whose top-level keys are not repeated.
func opsLogLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, l)
		}
		var raw map[string]json.RawMessage
		_ = json.Unmarshal([]byte(l), &raw)
		dec := json.NewDecoder(strings.NewReader(l))
		keys, depth := 0, 0
		for {
			tok, err := dec.Token()
			if err != nil {
				break
			}
			switch tok {
			case json.Delim('{'), json.Delim('['):
				depth++
			case json.Delim('}'), json.Delim(']'):
				depth--
			default:
				// At depth 1 a string token is a key; its value, nested
				// or not, is read whole and skipped.
				if depth == 1 {
					if _, isKey := tok.(string); isKey {
						keys++
						var skip json.RawMessage
						if err := dec.Decode(&skip); err != nil {
							t.Fatalf("log line: %v: %s", err, l)
						}
					}
				}
			}
		}
		if keys != len(raw) {
			t.Errorf("log line repeats a key (%d keys, %d distinct): %s", keys, len(raw), l)
		}
		out = append(out, m)
	}
	return out
}

// Logs are JSON, carry the request id and the event id, and hold no secret,
// token or signature, whatever the requests sent.
func TestLogsCarryIDsNotSecrets(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("ops-logs"), now)
	var sent []string // every secret-ish value a request carried

	post := func(reqID string, payload []byte, sig string) response {
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/webhooks/stripe", bytes.NewReader(payload))
		req.Header.Set("X-Request-Id", reqID)
		if sig != "" {
			req.Header.Set("Stripe-Signature", sig)
			sent = append(sent, sig[strings.Index(sig, "v1=")+3:])
		}
		return b.do(req)
	}
	ev := sessionCompleted(fx, now)
	evID := eventID(t, ev)
	must200(t, "signed webhook", post("ops-logs-good", ev, stripefake.SignatureHeader(ev, secretNew, time.Now())))
	post("ops-logs-badsig", ev, stripefake.SignatureHeader(ev, "whsec_attacker_guess_0000", time.Now()))
	post("ops-logs-garbage", ev, "t=notanumber,v1=deadbeef")
	post("ops-logs-unsigned", ev, "")
	post("ops-logs-old", ev, stripefake.SignatureHeader(ev, secretNew, time.Now().Add(-time.Hour)))
	for _, tok := range []string{"wrong-app-token-zzz", appToken} {
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/api/checkout/success",
			strings.NewReader(fmt.Sprintf(`{"session_id":%q,"user_id":%q}`, fx.session, fx.user)))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("X-Request-Id", "ops-logs-checkout")
		b.do(req)
	}
	b.api(http.MethodGet, "/admin/locks", "wrong-admin-token-zzz", nil)
	b.api(http.MethodGet, "/admin/locks", adminToken, nil)
	b.api(http.MethodGet, "/api/users/"+fx.user+"/billing", appToken, nil)
	failing := subEvent(fx, "customer.subscription.updated", "past_due", now.Add(time.Second))
	opsFailEvent(t, b, fx.customer, failing)
	sent = append(sent, secretNew, secretOld, stripeKey, appToken, adminToken,
		"wrong-app-token-zzz", "wrong-admin-token-zzz", "whsec_", "sk_test", "Bearer", "deadbeef")

	logs := b.logs.String()
	lines := opsLogLines(t, logs)
	for _, s := range sent {
		if strings.Contains(logs, s) {
			t.Errorf("logs contain %q", s)
		}
	}
	// No user id either: it is personal data.
	if strings.Contains(logs, fx.user) {
		t.Errorf("logs contain the user id %q", fx.user)
	}

	find := func(msg string, attrs map[string]any) map[string]any {
		for _, l := range lines {
			if l["msg"] != msg {
				continue
			}
			match := true
			for k, v := range attrs {
				if l[k] != v {
					match = false
				}
			}
			if match {
				return l
			}
		}
		t.Errorf("no %q log line with %v", msg, attrs)
		return nil
	}
	find("http request", map[string]any{"request_id": "ops-logs-good", "event_id": evID,
		"event_type": "checkout.session.completed", "route": "/webhooks/stripe", "status": float64(200)})
	find("http request", map[string]any{"request_id": "ops-logs-badsig", "status": float64(400)})
	find("http request", map[string]any{"request_id": "ops-logs-checkout", "session_id": fx.session, "status": float64(200)})
	find("http request", map[string]any{"request_id": "ops-logs-checkout", "status": float64(401)})
	failedLine := find("webhook event failed", map[string]any{"event_id": eventID(t, failing), "status": float64(503)})
	if failedLine != nil && failedLine["request_id"] == nil {
		t.Errorf("failure line lacks the request id: %v", failedLine)
	}
	find("transient database error, retrying", map[string]any{"customer": fx.customer, "sqlstate": "55P03"})
	// Every request line carries a request id.
	for _, l := range lines {
		if l["msg"] == "http request" && l["request_id"] == nil {
			t.Errorf("request line without request_id: %v", l)
		}
	}
}

// Cancelling serve's context (what SIGTERM does in main) stops accepting,
// lets the request in flight finish with its normal answer, closes the
// pool, and returns nil.
func TestServeDrainsOnShutdown(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	fake := stripefake.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	env := map[string]string{
		"DATABASE_URL":          db.URL,
		"LISTEN_ADDR":           addr,
		"STRIPE_WEBHOOK_SECRET": secretNew,
		"STRIPE_SECRET_KEY":     stripeKey,
		"STRIPE_API_BASE":       fake.URL,
		"APP_API_TOKEN":         appToken,
		"ADMIN_TOKEN":           adminToken,
		"SHUTDOWN_TIMEOUT":      "10s",
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() {
		runErr <- app.Run(ctx, []string{"serve"}, app.Env{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: logs})
	}()
	defer func() {
		cancel()
		select {
		case <-runErr:
		case <-time.After(20 * time.Second):
		}
	}()
	base := "http://" + addr
	client := &http.Client{Timeout: 20 * time.Second}
	waitFor(t, "serve to be ready", 20*time.Second, func() (bool, string) {
		select {
		case err := <-runErr:
			t.Fatalf("serve returned early: %v\n%s", err, logs.String())
		default:
		}
		res, err := client.Get(base + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK, res.Status
	})
	poolConns := func() int {
		var n int
		if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name LIKE 'lockstep%'`).Scan(&n); err != nil {
			t.Fatalf("count lockstep connections: %v", err)
		}
		return n
	}
	if poolConns() == 0 {
		t.Fatal("serve's pool has no connection to count")
	}

	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	user := uniqueUser("ops-drain")
	cus, sub, cs := stripefake.NewID("cus_"), stripefake.NewID("sub_"), stripefake.NewID("cs_test_")
	fake.PutSubscription(stripefake.Subscription{ID: sub, Customer: cus, Status: "active", PriceID: "price_pro", Created: now})
	fake.PutSession(stripefake.Session{ID: cs, Customer: cus, Subscription: sub, ClientReferenceID: user,
		Status: "complete", PaymentStatus: "paid", Mode: "subscription", Created: now})
	const delay = 1500 * time.Millisecond
	fake.SetDelay(delay)
	reached := make(chan struct{})
	var once sync.Once
	fake.SetOnRequest(func(*http.Request) { once.Do(func() { close(reached) }) })

	type result struct {
		code int
		body string
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, base+"/api/checkout/success",
			strings.NewReader(fmt.Sprintf(`{"session_id":%q,"user_id":%q}`, cs, user)))
		req.Header.Set("Authorization", "Bearer "+appToken)
		res, err := client.Do(req)
		if err != nil {
			inflight <- result{err: err}
			return
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		inflight <- result{code: res.StatusCode, body: string(body)}
	}()
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the checkout request never reached Stripe")
	}
	cancel() // SIGTERM
	cancelled := time.Now()
	defer func() {
		t.Logf("in-flight request answered %s after cancel", time.Since(cancelled).Round(time.Millisecond))
	}()

	// It stops accepting while the request is still in flight.
	waitFor(t, "the listener to close", delay/2, func() (bool, string) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return false, "connection accepted"
		}
		return true, ""
	})
	select {
	case r := <-inflight:
		t.Fatalf("the request finished %s after cancel, before the listener closed: %+v", time.Since(cancelled), r)
	default:
	}

	r := <-inflight
	if r.err != nil || r.code != http.StatusOK || !strings.Contains(r.body, `"redirect":"/dashboard"`) {
		t.Fatalf("in-flight request: %v %d %s, want 200 to /dashboard", r.err, r.code, r.body)
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("serve returned %v, want nil", err)
		}
		runErr <- nil // for the deferred wait
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return after draining")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the port still accepts connections after serve returned")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after shutdown: %v, want connection refused", err)
	}
	// The write happened, and the pool is closed.
	var mapped string
	if err := db.Pool.QueryRow(context.Background(), `SELECT stripe_customer_id FROM stripe_customers WHERE user_id = $1`, user).Scan(&mapped); err != nil || mapped != cus {
		t.Fatalf("mapping after the drained request: %q %v, want %s", mapped, err, cus)
	}
	waitFor(t, "serve's connections to close", 5*time.Second, func() (bool, string) {
		n := poolConns()
		return n == 0, fmt.Sprintf("%d open", n)
	})
	out := logs.String()
	for _, want := range []string{"shutting down: draining in-flight requests", `"msg":"stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("serve's logs lack %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{secretNew, stripeKey, appToken, adminToken} {
		if strings.Contains(out, secret) {
			t.Errorf("serve's logs contain the secret %q", secret)
		}
	}
}
