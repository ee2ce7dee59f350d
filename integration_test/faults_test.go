//go:build faults

package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/lockmgr"
)

// poolWatch samples a pool's statistics until stopped.
type poolWatch struct {
	stop          chan struct{}
	done          chan struct{}
	maxAcquired   atomic.Int32
	maxLockWaits  atomic.Int32
	emptyAcquires int64
	acquireWait   time.Duration
}

// watchPool samples b.db.Pool every 20 ms: the most connections acquired at
// once and the most lockstep backends waiting at once on customer's lock.
func watchPool(b *bundle, customer string) *poolWatch {
	w := &poolWatch{stop: make(chan struct{}), done: make(chan struct{})}
	before := b.db.Pool.Stat()
	conn, err := pgx.Connect(context.Background(), b.db.URL)
	if err != nil {
		b.t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := b.db.Pool.Stat().AcquiredConns(); n > w.maxAcquired.Load() {
				w.maxAcquired.Store(n)
			}
			var waits int32
			// Only waits for this customer's lock: other customers' traffic
			// may briefly wait on their own locks at the same time.
			if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 1
  AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($1)
  AND a.datname = current_database() AND a.application_name LIKE 'lockstep %'`, customer).Scan(&waits); err == nil && waits > w.maxLockWaits.Load() {
				w.maxLockWaits.Store(waits)
			}
			select {
			case <-w.stop:
				after := b.db.Pool.Stat()
				w.emptyAcquires = after.EmptyAcquireCount() - before.EmptyAcquireCount()
				w.acquireWait = after.AcquireDuration() - before.AcquireDuration()
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *poolWatch) finish() *poolWatch {
	close(w.stop)
	<-w.done
	return w
}

func (w *poolWatch) String() string {
	return fmt.Sprintf("max acquired %d, max lockstep connections waiting on the stuck customer's lock %d, acquires that waited for a connection %d (total wait %s)",
		w.maxAcquired.Load(), w.maxLockWaits.Load(), w.emptyAcquires, w.acquireWait.Round(time.Millisecond))
}

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

// killPoint is where in a writer's transaction its connection is dropped.
type killPoint string

const (
	afterLock     killPoint = "after_lock"      // pg_terminate_backend once the customer's lock is granted
	afterWrites   killPoint = "after_writes"    // ... once the mutation and the processed mark are written
	duringCommit  killPoint = "during_commit"   // ... while the backend executes COMMIT (a deferred trigger widens it)
	commitAckLost killPoint = "commit_ack_lost" // COMMIT succeeds on the server; the connection drops before its answer
)

type sqlKey struct{}

// killer is a pgx tracer on the app's pool that drops the writer's
// connection at its kill point: once per event, or on every attempt for
// doomed events, so that their retry budget runs out and Stripe must
// redeliver them.
type killer struct {
	t      testing.TB
	point  killPoint
	admin  *pgxpool.Pool // direct connections for pg_terminate_backend
	proxy  *ackProxy
	doomed map[string]bool
	on     atomic.Bool

	mu      sync.Mutex
	running map[*pgx.Conn]string // the event whose transaction runs on conn
	hits    map[string]int       // kills so far, per event
	pending sync.WaitGroup

	kills, misses atomic.Int64
}

// noteWriter records the event whose transaction starts on conn, from
// lockmgr's lock statement (its third argument is the application_name).
func (k *killer) noteWriter(conn *pgx.Conn, sql string, args []any) {
	if !strings.Contains(sql, "pg_advisory_xact_lock(hashtext(") || len(args) < 3 {
		return
	}
	if name, ok := args[2].(string); ok && strings.HasPrefix(name, "lockstep webhook ") {
		k.mu.Lock()
		k.running[conn] = strings.TrimPrefix(name, "lockstep webhook ")
		k.mu.Unlock()
	}
}

// TraceBatchStart sees a transaction's first batch: BEGIN and the lock
// statement ride in front of its first statements.
func (k *killer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	if k.on.Load() && data.Batch != nil {
		for _, q := range data.Batch.QueuedQueries {
			k.noteWriter(conn, q.SQL, q.Arguments)
		}
	}
	return ctx
}

// TraceBatchQuery runs as each statement's answer of a batch is read: the
// lock granted, or the processed mark written (the statements after it in
// the batch may have run on the server too; COMMIT has not).
func (k *killer) TraceBatchQuery(_ context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	if k.on.Load() && data.Err == nil {
		k.hitAfter(conn, data.SQL)
	}
}

func (k *killer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (k *killer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	ctx = context.WithValue(ctx, sqlKey{}, data.SQL)
	if !k.on.Load() {
		return ctx
	}
	switch {
	case strings.Contains(data.SQL, "pg_advisory_xact_lock(hashtext("): // lockmgr's first statement
		k.noteWriter(conn, data.SQL, data.Args)
	case data.SQL == "commit":
		if !k.take(conn) {
			return ctx
		}
		pid := conn.PgConn().PID()
		switch k.point {
		case duringCommit:
			k.pending.Add(1)
			go func() {
				defer k.pending.Done()
				k.killWhenCommitting(pid)
			}()
		case commitAckLost:
			k.proxy.dropCommitAck(pid)
			k.kills.Add(1)
		}
	}
	return ctx
}

func (k *killer) TraceQueryEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	if !k.on.Load() || data.Err != nil {
		return
	}
	sql, _ := ctx.Value(sqlKey{}).(string)
	k.hitAfter(conn, sql)
}

// hitAfter drops conn's backend once sql, the statement of its kill point,
// has answered.
func (k *killer) hitAfter(conn *pgx.Conn, sql string) {
	switch {
	case k.point == afterLock && strings.Contains(sql, "pg_advisory_xact_lock(hashtext("):
	case k.point == afterWrites && strings.Contains(sql, "INSERT INTO stripe_events") && strings.Contains(sql, "'processed'"):
	default:
		return
	}
	if k.take(conn) {
		k.terminate(conn.PgConn().PID())
	}
}

// take reports whether the transaction on conn is to be hit now, and counts it.
func (k *killer) take(conn *pgx.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	ev, ok := k.running[conn]
	if !ok {
		return false
	}
	delete(k.running, conn)
	if k.hits[ev] >= 1 && !k.doomed[ev] {
		return false
	}
	k.hits[ev]++
	return true
}

// terminate ends backend pid and waits until it is gone.
func (k *killer) terminate(pid uint32) {
	var ok, gone bool
	err := k.admin.QueryRow(context.Background(), `SELECT pg_terminate_backend($1, 5000),
NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)`, int32(pid)).Scan(&ok, &gone)
	switch {
	case err != nil:
		k.t.Errorf("pg_terminate_backend(%d): %v", pid, err)
	case ok:
		k.kills.Add(1)
	case gone: // it had already ended: a COMMIT that finished first
		k.misses.Add(1)
	default:
		k.t.Errorf("pg_terminate_backend(%d): backend still there after 5s", pid)
	}
}

// killWhenCommitting waits until backend pid executes COMMIT, then ends it.
func (k *killer) killWhenCommitting(pid uint32) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var state, query string
		err := k.admin.QueryRow(context.Background(), `SELECT coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity WHERE pid = $1`,
			int32(pid)).Scan(&state, &query)
		switch {
		case err != nil || state == "idle": // gone, or the commit finished first
			k.misses.Add(1)
			return
		case state == "active" && strings.EqualFold(strings.TrimSpace(query), "commit"):
			k.terminate(pid)
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	k.misses.Add(1)
}

// ackProxy forwards PostgreSQL connections and, for a backend it is told
// about, drops the connection instead of forwarding COMMIT's answer: the
// transaction is committed, the client never learns it.
type ackProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	armed   map[uint32]bool
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
	dropped atomic.Int64
}

func startAckProxy(t testing.TB, target string) *ackProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackProxy{ln: ln, target: target, armed: map[uint32]bool{}, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *ackProxy) dropCommitAck(pid uint32) {
	p.mu.Lock()
	p.armed[pid] = true
	p.mu.Unlock()
}

func (p *ackProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns[client], p.conns[server] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(server, client)
			_ = server.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.serverToClient(server, client)
			_ = client.Close()
			_ = server.Close()
			p.mu.Lock()
			delete(p.conns, client)
			delete(p.conns, server)
			p.mu.Unlock()
		}()
	}
}

// serverToClient forwards the server's messages (all typed: sslmode is
// disabled) and drops the connection at an armed backend's COMMIT answer.
func (p *ackProxy) serverToClient(server, client net.Conn) {
	r := bufio.NewReaderSize(server, 64<<10)
	w := bufio.NewWriterSize(client, 64<<10)
	var pid uint32
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			_ = w.Flush()
			return
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n < 4 || n > 1<<30 {
			return
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(r, body); err != nil {
			_ = w.Flush()
			return
		}
		switch hdr[0] {
		case 'K': // BackendKeyData: the backend's pid
			if len(body) >= 4 {
				pid = binary.BigEndian.Uint32(body[:4])
			}
		case 'C': // CommandComplete
			if string(bytes.TrimRight(body, "\x00")) == "COMMIT" {
				p.mu.Lock()
				armed := p.armed[pid]
				delete(p.armed, pid)
				p.mu.Unlock()
				if armed {
					p.dropped.Add(1)
					return // the server committed; the client sees the connection drop
				}
			}
		}
		_, _ = w.Write(hdr)
		_, _ = w.Write(body)
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

// withHostPort returns url with its host and port replaced, and sslmode
// disabled (the proxy reads the protocol in clear).
func withHostPort(t testing.TB, raw, hostPort string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = hostPort
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return u.String()
}

// faultEvents are one customer's events for the dropped-connection test.
func faultEvents(fx fixture, t0 time.Time) [][]byte {
	inv := stripefake.Invoice{ID: stripefake.NewID("in_"), Customer: fx.customer, Subscription: fx.subscription,
		Status: "paid", Currency: "usd", AmountDue: 1900, AmountPaid: 1900, Created: t0}
	upd := fx.subObj("past_due")
	upd.CancelAtPeriodEnd = true
	return [][]byte{
		sessionCompleted(fx, t0),
		subEvent(fx, "customer.subscription.created", "active", t0),
		event(stripefake.NewID("evt_"), "customer.subscription.updated", t0.Add(time.Second),
			stripefake.SubscriptionJSON(upd, stripefake.DefaultAPIVersion)),
		event(stripefake.NewID("evt_"), "invoice.paid", t0.Add(2*time.Second), stripefake.InvoiceJSON(inv, stripefake.DefaultAPIVersion)),
	}
}

// retriesCounted sums lockstep_tx_retries_total of a server.
func retriesCounted(t testing.TB, b *bundle) float64 {
	t.Helper()
	fams, err := b.app.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range fams {
		if f.GetName() == "lockstep_tx_retries_total" {
			for _, m := range f.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// Dropped connections: the writer's connection is terminated right after it
// takes the customer's lock, after its writes, during COMMIT, or loses
// COMMIT's answer, for 120 events (each delivered twice at once, as Stripe
// does) per kill point. Every event is hit once; every tenth on every
// attempt, so its retry budget runs out with a 503. After Stripe-style
// redelivery of every non-2xx, each event is applied exactly once (ledger
// processed, attempts = 1 + failed deliveries, state equal to a fault-free
// run), no advisory lock is left, and no pool connection stays acquired.
func TestFaultDroppedConnections(t *testing.T) {
	const (
		customers = 30
		workers   = 8
	)
	ref := setup(t, withMaxConns(4)) // the same events, one at a time, no faults
	for _, point := range []killPoint{afterLock, afterWrites, duringCommit, commitAckLost} {
		t.Run(string(point), func(t *testing.T) {
			b := setup(t, withMaxConns(4))
			ctx := context.Background()
			if point == duringCommit {
				if _, err := b.db.Pool.Exec(ctx, `
CREATE FUNCTION lockstep_test_slow_commit() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER lockstep_test_slow_commit AFTER INSERT OR UPDATE ON stripe_events
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.status = 'processed')
EXECUTE FUNCTION lockstep_test_slow_commit()`); err != nil {
					t.Fatal(err)
				}
			}
			admin := openPool(t, b.db.URL, 8)
			k := &killer{t: t, point: point, admin: admin, doomed: map[string]bool{},
				running: map[*pgx.Conn]string{}, hits: map[string]int{}}
			appURL := b.db.URL
			if point == commitAckLost {
				u, _ := url.Parse(b.db.URL)
				k.proxy = startAckProxy(t, u.Host)
				appURL = withHostPort(t, b.db.URL, k.proxy.ln.Addr().String())
			}
			pcfg, err := pgxpool.ParseConfig(appURL)
			if err != nil {
				t.Fatal(err)
			}
			pcfg.MaxConns = 10
			pcfg.ConnConfig.RuntimeParams["application_name"] = "lockstep"
			pcfg.ConnConfig.ConnectTimeout = 5 * time.Second
			pcfg.ConnConfig.Tracer = k
			pool, err := pgxpool.NewWithConfig(ctx, pcfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)
			fb := b.replica(pool)

			// 30 customers, 4 events each; every tenth event is doomed.
			t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
			var fixtures []fixture
			var events [][]byte
			for i := range customers {
				fx := b.paidCheckout(uniqueUser(fmt.Sprintf("kill%d", i)), t0)
				fixtures = append(fixtures, fx)
				for _, ev := range faultEvents(fx, t0) {
					must200(t, "reference webhook", ref.postWebhook(ev))
					if len(events)%10 == 0 {
						k.doomed[eventID(t, ev)] = true
					}
					events = append(events, ev)
				}
			}
			ids := make([]string, len(events))
			for i, ev := range events {
				ids[i] = eventID(t, ev)
			}

			var mu sync.Mutex
			codes := map[string]int{}   // responses by code and outcome, for the figures
			failed := map[string]int{}  // non-2xx deliveries per event
			lastOK := map[string]bool{} // the event's last delivery answered 2xx
			var lat latencies
			deliver := func(i int) {
				start := time.Now()
				r := fb.postWebhook(events[i])
				lat.add(time.Since(start))
				mu.Lock()
				defer mu.Unlock()
				key := fmt.Sprint(r.code)
				if r.code == http.StatusOK {
					key += " " + strings.Trim(fmt.Sprint(r.json(t)["status"]), `"`)
				}
				codes[key]++
				switch r.code {
				case http.StatusOK:
					lastOK[ids[i]] = true
				case http.StatusServiceUnavailable:
					failed[ids[i]]++
				default:
					t.Errorf("event %s: %d %s (want 200, or 503 for Stripe to redeliver)", ids[i], r.code, r.body)
					failed[ids[i]]++
				}
			}
			run := func(jobs []int) {
				ch := make(chan int)
				var wg sync.WaitGroup
				for range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range ch {
							deliver(i)
						}
					}()
				}
				for _, i := range jobs {
					ch <- i
				}
				close(ch)
				wg.Wait()
			}

			start := time.Now()
			k.on.Store(true)
			var first []int
			for _, i := range rand.Perm(len(events)) {
				first = append(first, i, i) // each event twice, by different workers at once
			}
			run(first)
			k.on.Store(false)
			k.pending.Wait()
			firstPass := time.Since(start)
			firstCodes := fmt.Sprint(codes)

			// Stripe redelivers what did not get a 2xx, until it does.
			rounds := 0
			for ; rounds < 10; rounds++ {
				var again []int
				for i, id := range ids {
					if !lastOK[id] {
						again = append(again, i)
					}
				}
				if len(again) == 0 {
					break
				}
				run(again)
			}
			t.Logf("%s: %d events (%d doomed) delivered twice at once: %s in %s; hits %d (missed the window %d, commit answers dropped %d), retries %v; p50/p99 %s/%s max %s",
				point, len(events), len(k.doomed), firstCodes, firstPass.Round(time.Millisecond), k.kills.Load(), k.misses.Load(),
				dropped(k.proxy), retriesCounted(t, fb), lat.pct(50).Round(time.Millisecond), lat.pct(99).Round(time.Millisecond), lat.pct(100).Round(time.Millisecond))
			t.Logf("%s: after %d redelivery rounds: all responses %v", point, rounds, codes)

			// Nothing is shown unless the kill point was reached: every
			// event's transaction was hit, and most hits dropped a connection.
			k.mu.Lock()
			for _, id := range ids {
				if k.hits[id] == 0 {
					t.Errorf("event %s: its transaction never reached the kill point %s", id, point)
				}
			}
			k.mu.Unlock()
			if kills := k.kills.Load(); kills < int64(len(events))/2 {
				t.Errorf("%d connections dropped for %d events: the kill point %s is not being reached", kills, len(events), point)
			}

			for _, id := range ids {
				if !lastOK[id] {
					t.Errorf("event %s still not accepted after %d redelivery rounds", id, rounds)
				}
			}
			if got := b.count(`SELECT count(*) FROM stripe_events`); got != len(events) {
				t.Errorf("ledger rows = %d, want %d", got, len(events))
			}
			rows, err := b.db.Pool.Query(ctx, `SELECT event_id, status, attempts FROM stripe_events`)
			if err != nil {
				t.Fatal(err)
			}
			type ledgerRow struct {
				ID, Status string
				Attempts   int
			}
			ledger, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ledgerRow])
			if err != nil {
				t.Fatal(err)
			}
			attemptsHist := map[int]int{}
			for _, l := range ledger {
				attemptsHist[l.Attempts]++
				want := 1 + failed[l.ID] // each failed delivery recorded once, then the success
				if point == commitAckLost {
					want = 1 // committed at the first attempt; later failures never downgrade it
				}
				if l.Status != "processed" || l.Attempts != want {
					t.Errorf("event %s: %s with %d attempts, want processed with %d (failed deliveries %d)", l.ID, l.Status, l.Attempts, want, failed[l.ID])
				}
			}
			t.Logf("%s: ledger attempts histogram %v", point, attemptsHist)
			for _, fx := range fixtures {
				if want, got := ref.snapshot(fx.customer), b.snapshot(fx.customer); want != got {
					t.Errorf("customer %s differs from the fault-free run:\nwant:\n%s\ngot:\n%s", fx.customer, want, got)
				}
			}
			if n := b.advisoryLocks(); n != 0 {
				t.Errorf("%d advisory locks left in pg_locks", n)
			}
			waitFor(t, "the app's pool to have no connection acquired", 5*time.Second, func() (bool, string) {
				n := pool.Stat().AcquiredConns()
				return n == 0, fmt.Sprintf("%d acquired", n)
			})
			if n := b.db.Pool.Stat().AcquiredConns(); n != 0 {
				t.Errorf("test pool: %d connections acquired", n)
			}
		})
	}
}

func dropped(p *ackProxy) int64 {
	if p == nil {
		return 0
	}
	return p.dropped.Load()
}

// readyWatch polls /readyz and records when its answer changes.
type readyWatch struct {
	mu      sync.Mutex
	code    int
	changes []string
	start   time.Time
	stop    chan struct{}
	done    chan struct{}
}

func watchReady(b *bundle) *readyWatch {
	w := &readyWatch{start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(w.done)
		for {
			code := -1
			if res, err := client.Get(b.srv.URL + "/readyz"); err == nil {
				code = res.StatusCode
				_ = res.Body.Close()
			}
			w.mu.Lock()
			if code != w.code {
				w.code = code
				w.changes = append(w.changes, fmt.Sprintf("%s:%d", time.Since(w.start).Round(10*time.Millisecond), code))
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *readyWatch) current() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.code
}

// A database restart in the middle of a load, against a private cluster:
// pg_ctl restart -m fast, then a stop -m fast with the database down for 3 s,
// then a crash (stop -m immediate) down for 3 s. Requests fail cleanly (503,
// never a hang: none takes longer than the retry budget plus 5 s), /readyz
// answers 503 while the database is down and 200 once it is back, the
// service recovers by itself, and after Stripe's redelivery (and the web
// app's retry of its success calls) nothing is lost.
func TestFaultDatabaseRestart(t *testing.T) {
	const (
		workers   = 6
		eventCust = 30
		checkouts = 60
		down      = 3 * time.Second
	)
	c := dbtest.StartCluster(t)
	b := setupOnCluster(t, c, 10)
	lc := lockmgr.DefaultConfig()
	b.client.Timeout = lc.RetryBudget + lc.LockTimeout + 15*time.Second // far past any answer lockstep should give
	hang := lc.RetryBudget + 5*time.Second

	t0 := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	custs := make([]fixture, eventCust)
	for i := range custs {
		custs[i] = newFixture(fmt.Sprintf("restart%d", i), t0)
	}
	var checkoutFx []fixture
	for i := range checkouts {
		checkoutFx = append(checkoutFx, b.paidCheckout(uniqueUser(fmt.Sprintf("rcheckout%d", i)), t0))
	}

	type sent struct {
		body     []byte
		customer string
		status   string
		created  time.Time
	}
	var (
		mu         sync.Mutex
		events     = map[string]sent{}
		eventOK    = map[string]bool{}
		eventFails = map[string]int{}
		checkoutOK = map[int]bool{}
		codes      = map[int]int{}
		lat        latencies
		slowest    time.Duration
		seq        atomic.Int64
		stopLoad   = make(chan struct{})
		failedAt   []time.Time // when each failed request began
	)
	statuses := []string{"active", "past_due", "unpaid", "active", "trialing"}
	send := func(n int) {
		var r response
		start := time.Now()
		if n%5 == 4 && n/5 < checkouts { // a success-page call
			fx := checkoutFx[n/5]
			r = b.checkout(fx.session, fx.user)
			mu.Lock()
			checkoutOK[n/5] = r.code == http.StatusOK
		} else {
			fx := custs[n%eventCust]
			st := statuses[(n/eventCust)%len(statuses)]
			created := t0.Add(time.Duration(n) * time.Second)
			ev := subUpdate(fx, st, created)
			id := eventID(t, ev)
			mu.Lock()
			events[id] = sent{body: ev, customer: fx.customer, status: st, created: created}
			mu.Unlock()
			r = b.postWebhook(ev)
			mu.Lock()
			eventOK[id] = r.code == http.StatusOK
			if r.code != http.StatusOK {
				eventFails[id]++
			}
		}
		d := time.Since(start)
		codes[r.code]++
		slowest = max(slowest, d)
		if r.code != http.StatusOK {
			failedAt = append(failedAt, start)
		}
		mu.Unlock()
		lat.add(d)
		if r.code != http.StatusOK && r.code != http.StatusServiceUnavailable {
			t.Errorf("request %d: %d %s (want 200, or 503 while the database is away)", n, r.code, r.body)
		}
		if d > hang {
			t.Errorf("request %d took %s: more than the retry budget + 5s", n, d.Round(time.Millisecond))
		}
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stopLoad:
					return
				default:
				}
				n := int(seq.Add(1) - 1)
				if n >= 20000 {
					return
				}
				send(n)
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	ready := watchReady(b)
	awaitReady := func(want int, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		waitFor(t, fmt.Sprintf("/readyz to answer %d", want), within, func() (bool, string) {
			code := ready.current()
			return code == want, fmt.Sprint(code)
		})
		return time.Since(start)
	}
	phase := func(name string) (int, map[int]int) {
		mu.Lock()
		defer mu.Unlock()
		cp := map[int]int{}
		for k, v := range codes {
			cp[k] = v
		}
		t.Logf("%-32s at %s: %d requests so far, by status %v", name, time.Since(ready.start).Round(10*time.Millisecond), int(seq.Load()), cp)
		return int(seq.Load()), cp
	}

	awaitReady(http.StatusOK, 10*time.Second)
	time.Sleep(1500 * time.Millisecond)
	phase("load running")

	t1 := time.Now()
	if err := c.Restart("fast"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t1)
	phase(fmt.Sprintf("pg_ctl restart -m fast (%s)", took.Round(time.Millisecond)))
	awaitReady(http.StatusOK, 30*time.Second)
	t.Logf("restart -m fast: pg_ctl took %s; /readyz 200 again %s after it began", took.Round(time.Millisecond), time.Since(t1).Round(time.Millisecond))
	time.Sleep(2 * time.Second)

	for _, mode := range []string{"fast", "immediate"} {
		_, before := phase("before stop -m " + mode)
		t1 := time.Now()
		if err := c.Stop(mode); err != nil {
			t.Fatal(err)
		}
		awaitReady(http.StatusServiceUnavailable, 10*time.Second)
		t.Logf("stop -m %s: /readyz 503 %s after the stop began", mode, time.Since(t1).Round(time.Millisecond))
		time.Sleep(down)
		t2 := time.Now()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t2)
		_, during := phase("database back after stop -m " + mode)
		if during[http.StatusServiceUnavailable] == before[http.StatusServiceUnavailable] {
			t.Errorf("no request failed while the database was down (stop -m %s): the load did not reach it", mode)
		}
		awaitReady(http.StatusOK, 30*time.Second)
		readyAt := time.Now()
		t.Logf("after stop -m %s: pg_ctl start took %s; /readyz 200 again %s after it began", mode, took.Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
		time.Sleep(2 * time.Second)
		mu.Lock()
		late := 0
		for _, at := range failedAt {
			if at.After(readyAt) {
				late++
			}
		}
		mu.Unlock()
		t.Logf("after stop -m %s: requests begun after /readyz said 200 that still failed: %d (stale pooled connections, at most one each; pool max %d)",
			mode, late, b.db.Pool.Config().MaxConns)
	}
	close(stopLoad)
	wg.Wait()
	ready.stop <- struct{}{}
	<-ready.done
	phase("load stopped")
	t.Logf("readyz transitions (time since start:status): %v", ready.changes)
	t.Logf("load: %s, slowest %s (hang limit %s)", &lat, slowest.Round(time.Millisecond), hang)

	// Stripe redelivers what failed; the web app retries its success call.
	rounds := 0
	for ; rounds < 10; rounds++ {
		var pending []string
		for id, ok := range eventOK {
			if !ok {
				pending = append(pending, id)
			}
		}
		var pendingCheckouts []int
		for i, ok := range checkoutOK {
			if !ok {
				pendingCheckouts = append(pendingCheckouts, i)
			}
		}
		if len(pending)+len(pendingCheckouts) == 0 {
			break
		}
		for _, id := range pending {
			r := b.postWebhook(events[id].body)
			eventOK[id] = r.code == http.StatusOK
			if r.code != http.StatusOK {
				eventFails[id]++
			}
		}
		for _, i := range pendingCheckouts {
			r := b.checkout(checkoutFx[i].session, checkoutFx[i].user)
			checkoutOK[i] = r.code == http.StatusOK
		}
	}
	redelivered := 0
	for _, n := range eventFails {
		redelivered += n
	}
	t.Logf("%d events and %d success calls sent; %d failed deliveries redelivered in %d rounds", len(events), len(checkoutOK), redelivered, rounds)
	for id, ok := range eventOK {
		if !ok {
			t.Errorf("event %s still failing after %d redelivery rounds", id, rounds)
		}
	}

	// Nothing lost: every event processed once; each customer ends at its newest event.
	if got := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'processed'`); got != len(events) {
		t.Errorf("processed events = %d, want %d", got, len(events))
	}
	rows, err := b.db.Pool.Query(context.Background(), `SELECT event_id, attempts FROM stripe_events`)
	if err != nil {
		t.Fatal(err)
	}
	hist := map[int]int{}
	for rows.Next() {
		var id string
		var attempts int
		if err := rows.Scan(&id, &attempts); err != nil {
			t.Fatal(err)
		}
		hist[attempts]++
		if attempts < 1 || attempts > 1+eventFails[id] {
			t.Errorf("event %s: %d attempts, failed deliveries %d", id, attempts, eventFails[id])
		}
	}
	rows.Close()
	t.Logf("ledger attempts histogram %v", hist)
	newest := map[string]sent{}
	for _, s := range events {
		if s.created.After(newest[s.customer].created) {
			newest[s.customer] = s
		}
	}
	for cus, s := range newest {
		if got := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_customer_id = $1`, cus); got != s.status {
			t.Errorf("customer %s: subscription %s, want %s (its newest event)", cus, got, s.status)
		}
	}
	for i, ok := range checkoutOK {
		fx := checkoutFx[i]
		if got := b.customerOf(fx.user); !ok || got != fx.customer {
			t.Errorf("success call for %s: ok %v, mapped to %s, want %s", fx.user, ok, got, fx.customer)
		}
	}
	if n := b.advisoryLocks(); n != 0 {
		t.Errorf("%d advisory locks left", n)
	}
	waitFor(t, "the pool to have no connection acquired", 5*time.Second, func() (bool, string) {
		n := b.db.Pool.Stat().AcquiredConns()
		return n == 0, fmt.Sprintf("%d acquired", n)
	})
}
