//go:build faults

package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
	schema "github.com/lockstep/lockstep/sql"
)

// PgBouncer in transaction pooling mode (Debian's pgbouncer, started by the
// test on a loopback port, in front of the shared test server). lockstep
// runs through it with default_query_exec_mode=exec in DATABASE_URL; its
// migrations run over a direct connection (MIGRATE_DATABASE_URL).

// execMode is the pgx option PgBouncer's transaction mode needs: no named
// prepared statements.
const execMode = "default_query_exec_mode=exec"

// The racing traffic of the service issue, through PgBouncer, spread over
// three lockstep servers with a pool each: no 4xx or 5xx, one customer row
// and one ledger row per event, each processed once.
func TestPgBouncerRaceTraffic(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(4))
	pgb := startPgBouncer(t, dbtest.ServerURL(t), bouncerOptions{poolSize: 12})
	via := pgb.url(b.db.Name, execMode)
	replicas := []*bundle{
		b.replica(openPool(t, via, 8)), b.replica(openPool(t, via, 8)), b.replica(openPool(t, via, 8)),
	}
	start := time.Now()
	fig := raceTraffic(t, replicas, 200, 4)
	t.Logf("through pgbouncer (transaction mode, 12 server connections) to 3 replicas with 8 client connections each: %d rounds, %d requests (per server %v), %d failures, latency %s, in %s",
		fig.rounds, fig.requests, fig.perTarget, fig.failures, &fig.lat, time.Since(start).Round(time.Millisecond))
	if n := b.advisoryLocks(); n != 0 {
		t.Errorf("%d advisory locks left", n)
	}
}

// Many webhooks for one customer at once through PgBouncer end where
// applying them one at a time ends: pg_advisory_xact_lock serializes them
// in transaction mode. (Not parallel: one customer's writers run one after
// another, so their latency is what the machine gives each transaction.)
func TestPgBouncerManyWebhooksOneCustomer(t *testing.T) {
	direct := setup(t, withMaxConns(4))
	sequential := setup(t, withMaxConns(4))
	pgb := startPgBouncer(t, dbtest.ServerURL(t), bouncerOptions{poolSize: 6})
	b := direct.replica(openPool(t, pgb.url(direct.db.Name, execMode), 10))
	const n = 60
	fx := newFixture("bstorm", time.Now().Add(-time.Hour).Truncate(time.Second))
	events := stormEvents(fx, n, fx.created, rand.New(rand.NewPCG(5, 9)))
	for _, ev := range events {
		must200(t, "sequential webhook", sequential.postWebhook(ev))
	}
	lat, redelivered := stormDeliver(t, []*bundle{b}, events)
	t.Logf("%d webhooks for one customer at once through pgbouncer: %s; 503s redelivered %d", n, lat, redelivered)
	if want, got := sequential.snapshot(fx.customer), direct.snapshot(fx.customer); want != got {
		t.Fatalf("state through pgbouncer differs from sequential:\nsequential:\n%s\npgbouncer:\n%s", want, got)
	}
}

// Transaction-scoped locks and settings behave in transaction mode: a
// pg_advisory_xact_lock excludes other clients until COMMIT, and
// set_config('application_name', ..., true) names the server connection for
// the transaction only, never leaking to the next client of that server
// connection. A session-level lock (what golang-migrate takes) does not
// exclude anything: two clients sharing the server connection both get it.
func TestPgBouncerTransactionScope(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(2))
	pgb := startPgBouncer(t, dbtest.ServerURL(t), bouncerOptions{poolSize: 1}) // every client shares one server connection
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connect := func(appName string) *pgx.Conn {
		conn, err := pgx.Connect(ctx, pgb.url(b.db.Name, execMode, "application_name="+appName))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close(context.Background()) })
		return conn
	}
	a, c := connect("lockstep"), connect("other")
	const key = "cus_bouncer_scope"

	// Transaction-level advisory lock: held until commit, against everyone.
	ta, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ta.Exec(ctx, `SELECT set_config('application_name', 'lockstep webhook evt_scope', true),
pg_advisory_xact_lock(hashtext($1))`, key); err != nil {
		t.Fatal(err)
	}
	// With one server connection, a second client cannot even run while the
	// transaction is open: pgbouncer queues it. Look from a direct connection.
	var holder, name string
	if err := b.db.Pool.QueryRow(ctx, `SELECT a.application_name, a.state FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.objid::int = hashtext($1)`, key).Scan(&name, &holder); err != nil {
		t.Fatalf("the transaction's lock is not in pg_locks: %v", err)
	}
	if name != "lockstep webhook evt_scope" {
		t.Errorf("application_name during the transaction = %q, want the writer's name", name)
	}
	gotLock := make(chan bool, 1)
	go func() {
		var ok bool
		if err := c.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtext($1))`, key).Scan(&ok); err != nil {
			t.Errorf("try lock: %v", err)
		}
		gotLock <- ok
	}()
	select {
	case ok := <-gotLock:
		t.Fatalf("another client ran (try lock = %v) while the locking transaction was open", ok)
	case <-time.After(300 * time.Millisecond):
	}
	if err := ta.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if ok := <-gotLock; !ok {
		t.Errorf("after COMMIT the other client could not take the lock")
	}
	if n := b.advisoryLocks(); n != 0 {
		t.Errorf("%d advisory locks left after COMMIT", n)
	}
	for i := range 3 {
		var na, nc string
		if err := a.QueryRow(ctx, `SELECT current_setting('application_name')`).Scan(&na); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(ctx, `SELECT current_setting('application_name')`).Scan(&nc); err != nil {
			t.Fatal(err)
		}
		if na != "lockstep" || nc != "other" {
			t.Errorf("round %d after COMMIT: application_name %q and %q, want lockstep and other (the local setting leaked)", i, na, nc)
		}
	}
	t.Logf("transaction mode: xact lock held until COMMIT and invisible afterwards; application_name %q during the transaction, restored per client after", name)

	// Session-level lock: both clients "hold" it, because they share the
	// server session. Migrations must not go through pgbouncer.
	var first, second bool
	if err := a.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, key).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, key).Scan(&second); err != nil {
		t.Fatal(err)
	}
	_, _ = a.Exec(ctx, `SELECT pg_advisory_unlock_all()`)
	if !first || !second {
		t.Fatalf("session lock through pgbouncer: first %v second %v; expected both to succeed (shared server session)", first, second)
	}
	t.Logf("session-level pg_try_advisory_lock through pgbouncer: client 1 got it (%v), client 2 got it too (%v): no mutual exclusion", first, second)
}

// Without default_query_exec_mode=exec, pgx names its prepared statements
// after the SQL; through a transaction pooler two clients meet on one server
// connection and PgBouncer 1.18 answers 42P05 (already exists) or 26000
// (does not exist). This is why DATABASE_URL needs the option.
func TestPgBouncerWithoutExecMode(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(2))
	pgb := startPgBouncer(t, dbtest.ServerURL(t), bouncerOptions{poolSize: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Two plain pgx connections: the second prepares the first's statement
	// name on the shared server connection.
	var errs []string
	for i := range 2 {
		conn, err := pgx.Connect(ctx, pgb.url(b.db.Name))
		if err != nil {
			t.Fatal(err)
		}
		var n int
		err = conn.QueryRow(ctx, `SELECT count(*) FROM stripe_events WHERE event_id = $1`, "evt_x").Scan(&n)
		errs = append(errs, fmt.Sprintf("client %d: %s", i+1, errorCode(err)))
		_ = conn.Close(ctx)
	}
	t.Logf("pgx default mode through pgbouncer: %v", errs)
	if !strings.Contains(errs[1], "42P05") && !strings.Contains(errs[1], "26000") {
		t.Errorf("second client without exec mode: %s; expected PgBouncer's prepared-statement failure (42P05/26000)", errs[1])
	}

	// lockstep itself, misconfigured: what the webhooks answer.
	bad := b.replica(openPool(t, pgb.url(b.db.Name), 4))
	codes := map[int]int{}
	var mu sync.Mutex
	var fns []func()
	for i := range 20 {
		fx := newFixture(fmt.Sprintf("noexec%d", i), time.Now().Add(-time.Hour).Truncate(time.Second))
		ev := subUpdate(fx, "active", fx.created)
		fns = append(fns, func() {
			r := bad.postWebhook(ev)
			mu.Lock()
			codes[r.code]++
			mu.Unlock()
		})
	}
	concurrently(fns...)
	states := map[string]int{}
	for _, line := range strings.Split(b.logs.String(), "\n") {
		for _, code := range []string{"42P05", "26000"} {
			if strings.Contains(line, "SQLSTATE "+code) {
				states[code]++
			}
		}
	}
	t.Logf("lockstep through pgbouncer without exec mode: 20 webhooks answered %v; log lines with 42P05/26000: %v", codes, states)
	if codes[http.StatusOK] == 20 {
		t.Errorf("every webhook succeeded without exec mode; the documented requirement would be unfounded")
	}
}

// Migrations through PgBouncer are unsafe: golang-migrate's session lock
// excludes nothing there (TestPgBouncerTransactionScope), and its
// connection prepares statements, so a migration sharing a server
// connection with an earlier client fails. Over a direct connection,
// migrators starting at once serialize on the lock and all succeed. The
// binary takes MIGRATE_DATABASE_URL for that: `migrate up` never touches
// DATABASE_URL, and three `serve` replicas whose DATABASE_URL goes through
// pgbouncer start at once, migrate over the direct URL, and serve.
func TestPgBouncerMigrations(t *testing.T) {
	t.Parallel()
	serverURL := dbtest.ServerURL(t)
	pgb := startPgBouncer(t, serverURL, bouncerOptions{poolSize: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Through pgbouncer: two migrators, one after the other.
	viaDB := emptyDatabase(t, serverURL)
	first := schema.Up(pgb.url(viaDB))
	second := schema.Up(pgb.url(viaDB))
	t.Logf("sql.Up through pgbouncer, twice in a row: first %s; second %s", errorCode(first), errorCode(second))
	if second == nil {
		t.Errorf("a second sql.Up through pgbouncer succeeded; expected it to fail on the shared server connection")
	}

	// Direct: three migrators at once, on a fresh database.
	directDB := emptyDatabase(t, serverURL)
	var wg sync.WaitGroup
	results := make([]error, 3)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = schema.Up(dbtest.URLFor(serverURL, directDB))
		}()
	}
	wg.Wait()
	for i, err := range results {
		if err != nil {
			t.Errorf("direct sql.Up %d of 3 at once: %v", i+1, err)
		}
	}
	if v, dirty, err := schema.Version(dbtest.URLFor(serverURL, directDB)); err != nil || dirty || v != schema.Latest {
		t.Errorf("after three direct migrators: version %d dirty %v err %v, want %d", v, dirty, err, schema.Latest)
	}
	t.Logf("sql.Up over a direct connection, three at once: %v", results)

	// `migrate up` uses MIGRATE_DATABASE_URL and never DATABASE_URL (here a
	// port nobody listens on).
	fake := stripefake.New(t)
	migrateDB := emptyDatabase(t, serverURL)
	dead := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&%s", freePort(t), migrateDB, execMode)
	var out, errOut syncBuffer
	env := func(vars map[string]string) app.Env {
		return app.Env{Getenv: func(k string) string { return vars[k] }, Stdout: &out, Stderr: &errOut}
	}
	err := app.Run(ctx, []string{"migrate", "up"}, env(map[string]string{
		"DATABASE_URL":         dead,
		"MIGRATE_DATABASE_URL": dbtest.URLFor(serverURL, migrateDB),
	}))
	if err != nil || !strings.Contains(out.String(), fmt.Sprintf("schema version %d", schema.Latest)) {
		t.Fatalf("migrate up with MIGRATE_DATABASE_URL: %v\n%s%s", err, out.String(), errOut.String())
	}
	t.Logf("migrate up, DATABASE_URL unreachable, MIGRATE_DATABASE_URL direct: %s", strings.TrimSpace(out.String()))

	// serve, three replicas at once: DATABASE_URL through pgbouncer,
	// MIGRATE_DATABASE_URL direct. An event trigger records who ran DDL.
	serveDB := emptyDatabase(t, serverURL)
	direct := dbtest.URLFor(serverURL, serveDB)
	adminConn, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close(ctx)
	if _, err := adminConn.Exec(ctx, `
CREATE TABLE lockstep_test_ddl (application_name text, command text);
CREATE FUNCTION lockstep_test_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO lockstep_test_ddl VALUES (current_setting('application_name'), tg_tag); END $$;
CREATE EVENT TRIGGER lockstep_test_ddl ON ddl_command_end EXECUTE FUNCTION lockstep_test_ddl()`); err != nil {
		t.Fatal(err)
	}
	directNamed := direct + "&application_name=lockstep-migrate-direct"
	if !strings.Contains(direct, "?") {
		directNamed = direct + "?application_name=lockstep-migrate-direct"
	}
	stop, stopped := context.WithCancel(ctx)
	defer stopped()
	type replica struct {
		addr string
		logs syncBuffer
		done chan error
	}
	reps := make([]*replica, 3)
	for i := range reps {
		r := &replica{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), done: make(chan error, 1)}
		reps[i] = r
		vars := map[string]string{
			"DATABASE_URL":          pgb.url(serveDB, execMode, "application_name=lockstep-via-pgbouncer"),
			"MIGRATE_DATABASE_URL":  directNamed,
			"LISTEN_ADDR":           r.addr,
			"STRIPE_WEBHOOK_SECRET": secretNew,
			"STRIPE_SECRET_KEY":     stripeKey,
			"STRIPE_API_BASE":       fake.URL,
			"APP_API_TOKEN":         appToken,
			"ADMIN_TOKEN":           adminToken,
		}
		go func() {
			r.done <- app.Run(stop, []string{"serve"}, app.Env{Getenv: func(k string) string { return vars[k] }, Stdout: &r.logs, Stderr: &r.logs})
		}()
	}
	client := &http.Client{Timeout: 10 * time.Second}
	for i, r := range reps {
		dbtest.WaitFor(t, fmt.Sprintf("replica %d to be ready", i+1), 60*time.Second, func() (bool, string) {
			select {
			case err := <-r.done:
				t.Fatalf("replica %d stopped: %v\n%s", i+1, err, r.logs.String())
			default:
			}
			res, err := client.Get("http://" + r.addr + "/readyz")
			if err != nil {
				return false, err.Error()
			}
			_ = res.Body.Close()
			return res.StatusCode == http.StatusOK, res.Status
		})
		fx := newFixture(fmt.Sprintf("serve%d", i), time.Now().Add(-time.Minute).Truncate(time.Second))
		body := subUpdate(fx, "active", fx.created)
		req, _ := http.NewRequest(http.MethodPost, "http://"+r.addr+"/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", stripefake.SignatureHeader(body, secretNew, time.Now()))
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("replica %d: webhook through pgbouncer answered %d", i+1, res.StatusCode)
		}
	}
	stopped()
	for i, r := range reps {
		if err := <-r.done; err != nil {
			t.Errorf("replica %d: serve returned %v", i+1, err)
		}
	}
	rows, err := adminConn.Query(ctx, `SELECT application_name, count(*) FROM lockstep_test_ddl GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	ddl := map[string]int{}
	for rows.Next() {
		var name string
		var n int
		if err := rows.Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		ddl[name] = n
	}
	rows.Close()
	t.Logf("three serve replicas at once (DATABASE_URL via pgbouncer, MIGRATE_DATABASE_URL direct): all ready and serving; DDL statements by application_name: %v", ddl)
	if len(ddl) != 1 || ddl["lockstep-migrate-direct"] == 0 {
		t.Errorf("DDL ran as %v; want all of it on MIGRATE_DATABASE_URL (lockstep-migrate-direct)", ddl)
	}
}

// emptyDatabase creates an empty database on the server, dropped when the
// test ends, and returns its name.
func emptyDatabase(t testing.TB, serverURL string) string {
	t.Helper()
	name := strings.ToLower(stripefake.NewID("lockstep_test_empty_"))
	if err := dbtest.CreateDatabase(serverURL, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dbtest.DropDatabase(serverURL, name); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return name
}

// The sweeper's lease holds behind PgBouncer's transaction pooling, where
// every replica's statements share one server connection (a session
// advisory lock would be granted to all of them): while one replica sweeps,
// the others are refused, and every missed event is applied once.
func TestPgBouncerSweeperLease(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(4))
	pgb := startPgBouncer(t, dbtest.ServerURL(t), bouncerOptions{poolSize: 1})
	via := pgb.url(b.db.Name, execMode)
	replicas := []*bundle{b.replica(openPool(t, via, 2)), b.replica(openPool(t, via, 2)), b.replica(openPool(t, via, 2))}
	var fixtures []fixture
	for range 3 {
		fx := b.paidCheckout(uniqueUser("bouncer-sweep"), b.stripe.Now().Add(-time.Hour).Truncate(time.Second))
		b.checkoutEvents(fx)
		fixtures = append(fixtures, fx)
	}
	b.stripe.SetDelay(time.Second) // the first sweep holds its lease a while
	ctx := context.Background()
	first := make(chan error, 1)
	go func() {
		_, err := replicas[0].app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "replica-0"})
		first <- err
	}()
	dbtest.WaitFor(t, "replica-0 to take the lease", 30*time.Second, func() (bool, string) {
		owner := b.scalar(`SELECT max(lease_owner) FROM stripe_sweeper WHERE lease_until > now()`)
		return owner == "replica-0", owner
	})
	for i, r := range replicas[1:] {
		_, err := r.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: fmt.Sprintf("replica-%d", i+1)})
		if !errors.Is(err, billing.ErrSweepBusy) {
			t.Errorf("replica-%d swept while replica-0 held the lease: %v", i+1, err)
		}
	}
	if err := <-first; err != nil {
		t.Fatalf("replica-0's sweep: %v", err)
	}
	for _, fx := range fixtures {
		if st := b.subStatus(fx.subscription); st != "active" {
			t.Errorf("subscription %s is %s after the sweep, want active", fx.subscription, st)
		}
	}
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'processed' AND attempts = 1`); n != 9 {
		t.Errorf("%d events processed once, want all 9", n)
	}
}
