package billing

import (
	"context"
	"net"
	"os"
	"regexp"
	"slices"
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
	"github.com/lockstep/lockstep/stripeapi"
)

const perfSecret = "whsec_bench_primary_0123456789"

// perfEvent is a customer.subscription.updated event as Stripe sends it.
func perfEvent(id, customer, sub string, created time.Time) []byte {
	obj := stripefake.SubscriptionJSON(stripefake.Subscription{ID: sub, Customer: customer, Status: "active",
		PriceID: "price_bench", Created: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}, stripefake.DefaultAPIVersion)
	return stripefake.EventJSON(id, "customer.subscription.updated", created, "", obj)
}

// BenchmarkPrepareEvent measures prepare, which checks an event's object before anything is
// written: for a subscription event, parsing data.object.
func BenchmarkPrepareEvent(b *testing.B) {
	ev, err := stripeapi.ParseEvent(perfEvent("evt_bench1", "cus_bench1", "sub_bench1", time.Now()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := prepareErr(ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWebhookBeforeDatabase is the CPU the webhook handler spends on an
// event before the database: signature check, envelope, object.
func BenchmarkWebhookBeforeDatabase(b *testing.B) {
	payload := perfEvent("evt_bench1", "cus_bench1", "sub_bench1", time.Now())
	v := stripeapi.NewVerifier([]string{perfSecret})
	header := stripefake.SignatureHeader(payload, perfSecret, time.Now())
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(payload, header); err != nil {
			b.Fatal(err)
		}
		ev, err := stripeapi.ParseEvent(payload)
		if err != nil {
			b.Fatal(err)
		}
		if err := prepareErr(ev); err != nil {
			b.Fatal(err)
		}
	}
}

// perfRecorder records what a pool sends to PostgreSQL: every statement's
// SQL (pgx's tracer sees each Exec, Query, QueryRow, BEGIN and COMMIT, and
// each statement of a batch), the prepares of pgx's statement cache, and
// round trips (a read that follows a write on the connection).
type perfRecorder struct {
	mu         sync.Mutex
	sqls       []string
	trips      []int64 // the round trip each statement's answer came in
	prepares   int
	roundTrips atomic.Int64
}

func (r *perfRecorder) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.mu.Lock()
	r.sqls = append(r.sqls, d.SQL)
	r.trips = append(r.trips, 0)
	r.mu.Unlock()
	return ctx
}

// TraceQueryEnd notes the round trip the statement's answer came in (the
// pool has one connection, so statements do not interleave).
func (r *perfRecorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {
	r.mu.Lock()
	r.trips[len(r.trips)-1] = r.roundTrips.Load()
	r.mu.Unlock()
}

func (r *perfRecorder) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

// TraceBatchQuery records each statement of a pipelined batch, as its
// answer is read.
func (r *perfRecorder) TraceBatchQuery(_ context.Context, _ *pgx.Conn, d pgx.TraceBatchQueryData) {
	r.mu.Lock()
	r.sqls = append(r.sqls, d.SQL)
	r.trips = append(r.trips, r.roundTrips.Load())
	r.mu.Unlock()
}

func (r *perfRecorder) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (r *perfRecorder) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	r.mu.Lock()
	r.prepares++
	r.mu.Unlock()
	return ctx
}

func (r *perfRecorder) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// perfWork is what one operation sent.
type perfWork struct {
	sqls       []string
	trips      []int64 // per statement: the round trip it was answered in
	prepares   int
	roundTrips int64
}

// tripSizes says how many statements each round trip carried, in order,
// from the statement at index from on.
func (w perfWork) tripSizes(from int) []int {
	var sizes []int
	for i := from; i < len(w.sqls); i++ {
		if i == from || w.trips[i] != w.trips[i-1] {
			sizes = append(sizes, 0)
		}
		sizes[len(sizes)-1]++
	}
	return sizes
}

func (w perfWork) count(sql string) int {
	n := 0
	for _, s := range w.sqls {
		if strings.EqualFold(strings.TrimSpace(s), sql) {
			n++
		}
	}
	return n
}

// measure runs fn and returns what it sent.
func (r *perfRecorder) measure(fn func()) perfWork {
	r.mu.Lock()
	r.sqls, r.trips, r.prepares = nil, nil, 0
	r.mu.Unlock()
	rt0 := r.roundTrips.Load()
	fn()
	r.mu.Lock()
	defer r.mu.Unlock()
	return perfWork{sqls: append([]string(nil), r.sqls...), trips: append([]int64(nil), r.trips...),
		prepares: r.prepares, roundTrips: r.roundTrips.Load() - rt0}
}

type perfConn struct {
	net.Conn
	r     *perfRecorder
	wrote atomic.Bool
}

func (c *perfConn) Write(b []byte) (int, error) {
	c.wrote.Store(true)
	return c.Conn.Write(b)
}

func (c *perfConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.wrote.Swap(false) {
		c.r.roundTrips.Add(1)
	}
	return n, err
}

type perfBundle struct {
	svc  *Service
	rec  *perfRecorder
	fake *stripefake.Server
}

// perfSetup builds a Service on a fresh database whose pool has one
// connection, recorded.
func perfSetup(t *testing.T) *perfBundle {
	t.Helper()
	db := dbtest.New(t)
	rec := &perfRecorder{}
	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one connection: its statement cache is warm after the first operation
	cfg.ConnConfig.Tracer = rec
	dial := cfg.ConnConfig.DialFunc
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &perfConn{Conn: c, r: rec}, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	fake := stripefake.New(t)
	// The catalog the events name: the first event stores it, so that the
	// operations measured find it known.
	fake.PutProduct(stripefake.Product{ID: "prod_bench", Name: "Bench"})
	fake.PutPrice(stripefake.Price{ID: "price_bench", Product: "prod_bench", UnitAmount: 100, Interval: "month"})
	svc := NewService(lockmgr.New(pool, lockmgr.DefaultConfig(), nil, nil),
		stripeapi.NewClient(fake.URL, "sk_test_bench", stripeapi.Options{Timeout: 5 * time.Second}), nil)
	return &perfBundle{svc: svc, rec: rec, fake: fake}
}

func (p *perfBundle) process(t *testing.T, payload []byte) EventResult {
	t.Helper()
	ev, err := stripeapi.ParseEvent(payload)
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.svc.ProcessEvent(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// checkRoundTrips wants at most one round trip per statement once pgx's
// statement cache is warm (no prepare in the operation): no statement costs a
// second round trip (a describe, a savepoint), and a pipelined batch shares one.
func checkRoundTrips(t *testing.T, w perfWork, what string) {
	t.Helper()
	if w.prepares != 0 {
		t.Fatalf("%s: %d prepares on a warm connection", what, w.prepares)
	}
	if w.roundTrips > int64(len(w.sqls)) {
		t.Errorf("%s: %d round trips for %d statements, want at most one each:\n%s", what, w.roundTrips, len(w.sqls), strings.Join(w.sqls, "\n---\n"))
	}
}

// TestStatementsPerOperation counts what each path sends to PostgreSQL on a
// warm connection: one transaction per new event and per checkout-success
// call, none for a duplicate, at most one round trip per statement, and the
// checkout-success call's statements pipelined (a new event's shape is held
// to the pgbench script by TestPgbenchScriptMirrorsEvent). The statements are
// logged (go test -v -run TestStatementsPerOperation).
func TestStatementsPerOperation(t *testing.T) {
	t.Parallel()
	p := perfSetup(t)
	ctx := context.Background()
	base := time.Now().Add(time.Hour)

	// Warm the connection's statement cache with a first event, and with a
	// first checkout-success call for another customer.
	p.process(t, perfEvent("evt_warm1", "cus_warm", "sub_warm", base))
	p.fake.PutSubscription(stripefake.Subscription{ID: "sub_warm", Customer: "cus_warm", Status: "active", PriceID: "price_bench"})
	p.fake.PutSession(stripefake.Session{ID: "cs_warm", Customer: "cus_warm", Subscription: "sub_warm",
		ClientReferenceID: "user_warm", Status: "complete", PaymentStatus: "paid"})
	if _, err := p.svc.SyncCheckout(ctx, "cs_warm", "user_warm"); err != nil {
		t.Fatal(err)
	}

	var res EventResult
	event := p.rec.measure(func() { res = p.process(t, perfEvent("evt_new1", "cus_a", "sub_a", base)) })
	if res.Outcome != Processed {
		t.Fatalf("new event: %+v", res)
	}
	checkRoundTrips(t, event, "new event")
	if b, c := event.count("begin"), event.count("commit"); b != 1 || c != 1 {
		t.Errorf("new event: %d BEGIN and %d COMMIT, want one transaction", b, c)
	}

	dup := p.rec.measure(func() { res = p.process(t, perfEvent("evt_new1", "cus_a", "sub_a", base)) })
	if res.Outcome != Duplicate {
		t.Fatalf("duplicate: %+v", res)
	}
	checkRoundTrips(t, dup, "duplicate")
	if dup.count("begin") != 0 {
		t.Errorf("duplicate: %d transactions, want none (the read before the lock stops it)", dup.count("begin"))
	}

	p.fake.PutSubscription(stripefake.Subscription{ID: "sub_b", Customer: "cus_b", Status: "active", PriceID: "price_bench"})
	p.fake.PutSession(stripefake.Session{ID: "cs_b", Customer: "cus_b", Subscription: "sub_b",
		ClientReferenceID: "user_b", Status: "complete", PaymentStatus: "paid"})
	var out *CheckoutResult
	success := p.rec.measure(func() {
		var err error
		if out, err = p.svc.SyncCheckout(ctx, "cs_b", "user_b"); err != nil {
			t.Fatal(err)
		}
	})
	if !out.Paid || out.Mapping != LinkCreated {
		t.Fatalf("checkout success: %+v", out)
	}
	checkRoundTrips(t, success, "checkout success")
	if got := success.tripSizes(0); !slices.Equal(got, []int{6, 1, 1}) {
		t.Errorf("checkout success: statements per round trip %v, want [6 1 1]: BEGIN, the lock, the reads and the subscription in one; the mapping; COMMIT", got)
	}
	if b, c := success.count("begin"), success.count("commit"); b != 1 || c != 1 {
		t.Errorf("checkout success: %d BEGIN and %d COMMIT, want one transaction", b, c)
	}

	again := p.rec.measure(func() {
		if _, err := p.svc.SyncCheckout(ctx, "cs_b", "user_b"); err != nil {
			t.Fatal(err)
		}
	})
	checkRoundTrips(t, again, "checkout success, repeated")
	// Stripe dates reads to the second. A read of a later second is newer
	// and stored at once; one of the same second is not, so it reads the
	// stored row to see whether they differ (a tie to settle).
	if got := again.tripSizes(0); !slices.Equal(got, []int{6, 1}) && !slices.Equal(got, []int{6, 1, 1}) {
		t.Errorf("checkout success, repeated: statements per round trip %v, want [6 1] (a later second) or [6 1 1] (the same)", got)
	}
	if again.count("begin") != 1 {
		t.Errorf("checkout success, repeated: %d transactions, want one", again.count("begin"))
	}

	for _, w := range []struct {
		name string
		w    perfWork
	}{{"new event", event}, {"duplicate event", dup}, {"checkout success (new mapping)", success}, {"checkout success (repeated)", again}} {
		t.Logf("%s: %d statements, %d round trips, %d transaction(s)", w.name, len(w.w.sqls), w.w.roundTrips, w.w.count("begin"))
		for i, s := range w.w.sqls {
			t.Logf("  %d. %s", i+1, firstWords(s, 12))
		}
	}
}

func firstWords(s string, n int) string {
	f := strings.Fields(s)
	if len(f) > n {
		return strings.Join(f[:n], " ") + " ..."
	}
	return strings.Join(f, " ")
}

// TestPgbenchScriptMirrorsEvent holds scripts/pgbench/event.sql, the
// reference the load command measures lockstep against, to the transaction
// lockstep runs for a new subscription event: the same statements in the
// same order, with the same text but for the bind parameters, sent in the
// same round trips (a \startpipeline ... \endpipeline block is one).
func TestPgbenchScriptMirrorsEvent(t *testing.T) {
	t.Parallel()
	p := perfSetup(t)
	base := time.Now().Add(time.Hour)
	p.process(t, perfEvent("evt_warm1", "cus_a", "sub_a", base))
	w := p.rec.measure(func() { p.process(t, perfEvent("evt_new1", "cus_a", "sub_a", base.Add(time.Second))) })

	// The transaction: from BEGIN to COMMIT.
	from := -1
	for i, s := range w.sqls {
		if strings.EqualFold(strings.TrimSpace(s), "begin") {
			from = i
			break
		}
	}
	if from < 0 {
		t.Fatalf("no BEGIN among:\n%s", strings.Join(w.sqls, "\n---\n"))
	}
	tx := w.sqls[from:]
	script, err := os.ReadFile("../scripts/pgbench/event.sql")
	if err != nil {
		t.Fatal(err)
	}
	ref, refTrips := pgbenchStatements(string(script))
	if len(ref) != len(tx) {
		t.Fatalf("event.sql has %d statements, lockstep's transaction %d:\n%s", len(ref), len(tx), strings.Join(tx, "\n---\n"))
	}
	param := regexp.MustCompile(`\$\d+`)
	for i, s := range tx {
		s = normalizeSQL(s)
		var re strings.Builder
		re.WriteString("(?i)^")
		last := 0
		for _, loc := range param.FindAllStringIndex(s, -1) {
			re.WriteString(regexp.QuoteMeta(s[last:loc[0]]))
			re.WriteString("(.+?)")
			last = loc[1]
		}
		re.WriteString(regexp.QuoteMeta(s[last:]))
		re.WriteString("$")
		if !regexp.MustCompile(re.String()).MatchString(ref[i]) {
			t.Errorf("statement %d differs:\nlockstep: %s\nevent.sql: %s", i+1, s, ref[i])
		}
	}
	if got := w.tripSizes(from); !slices.Equal(got, refTrips) {
		t.Errorf("statements per round trip: lockstep %v, event.sql %v", got, refTrips)
	}
}

// pgbenchStatements splits a pgbench script into its SQL statements, without
// comments and meta-commands, whitespace normalized, and says how many
// statements each round trip carries: one, or all of a pipeline block.
func pgbenchStatements(script string) (stmts []string, trips []int) {
	var cur strings.Builder
	inPipeline := false
	flush := func() {
		s := normalizeSQL(strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"))
		cur.Reset()
		if s == "" {
			return
		}
		stmts = append(stmts, s)
		if inPipeline {
			trips[len(trips)-1]++
		} else {
			trips = append(trips, 1)
		}
	}
	for _, line := range strings.Split(script, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "--"):
		case trimmed == `\startpipeline`:
			flush()
			inPipeline = true
			trips = append(trips, 0)
		case trimmed == `\endpipeline`:
			flush()
			inPipeline = false
		case strings.HasPrefix(trimmed, `\`):
		default:
			cur.WriteString(line)
			cur.WriteByte('\n')
			if strings.HasSuffix(trimmed, ";") {
				flush()
			}
		}
	}
	flush()
	return stmts, trips
}

func normalizeSQL(s string) string { return strings.Join(strings.Fields(s), " ") }

func prepareErr(ev *stripeapi.Event) error {
	_, err := prepare(ev)
	return err
}
