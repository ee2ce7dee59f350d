package integration_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/logging"
)

// This file also holds the helpers the reliability tests share (replicas,
// the racing traffic, latency figures); it is built with and without the
// faults tag.

// replica is lockstep served a second time from its own pool: another
// process on the same database and the same fake Stripe, as users scale out.
// Its logs go to b.logs too.
func (b *bundle) replica(pool *pgxpool.Pool) *bundle {
	b.t.Helper()
	a := app.NewServer(b.cfg, pool, logging.New(b.logs, slog.LevelDebug))
	srv := httptest.NewServer(a.Handler)
	b.t.Cleanup(srv.Close)
	r := *b
	r.app, r.srv = a, srv
	return &r
}

// openPool opens a pool on url with lockstep's own constructor, closed when
// the test ends.
func openPool(t testing.TB, url string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := lockmgr.OpenPool(ctx, url, maxConns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// subUpdate is a customer.subscription.updated event for fx at created.
func subUpdate(fx fixture, status string, created time.Time) []byte {
	sub := fx.subObj(status)
	return event(stripefake.NewID("evt_"), "customer.subscription.updated", created,
		stripefake.SubscriptionJSON(sub, stripefake.DefaultAPIVersion))
}

// newFixture is a customer with a subscription, known to no fake Stripe
// (the events carry everything the processor needs).
func newFixture(prefix string, created time.Time) fixture {
	return fixture{user: uniqueUser(prefix), customer: stripefake.NewID("cus_"), subscription: stripefake.NewID("sub_"),
		session: stripefake.NewID("cs_test_"), price: "price_pro_monthly", created: created}
}

// freePort returns a loopback port nobody listens on right now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// latencies collects request durations for figures.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// pct returns the p-th percentile (0 < p <= 100), nearest rank.
func (l *latencies) pct(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func (l *latencies) n() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

func (l *latencies) String() string {
	return fmt.Sprintf("n=%d p50=%s p99=%s max=%s", l.n(),
		l.pct(50).Round(100*time.Microsecond), l.pct(99).Round(100*time.Microsecond), l.pct(100).Round(100*time.Microsecond))
}

// raceFigures is what raceTraffic saw.
type raceFigures struct {
	rounds, requests, failures int
	perTarget                  []int64
	lat                        latencies
}

// stormDeliver sends events all at once, spread over targets, then
// redelivers, as Stripe would, any that answered 503 (a customer busier than
// the retry budget) until each is accepted. Any other answer fails the test.
func stormDeliver(t *testing.T, targets []*bundle, events [][]byte) (lat *latencies, redelivered int) {
	t.Helper()
	lat = &latencies{}
	var mu sync.Mutex
	var again [][]byte
	var fns []func()
	for i, ev := range events {
		target := targets[i%len(targets)]
		fns = append(fns, func() {
			start := time.Now()
			r := target.postWebhook(ev)
			lat.add(time.Since(start))
			switch {
			case r.code == http.StatusServiceUnavailable:
				mu.Lock()
				again = append(again, ev)
				mu.Unlock()
			case r.code != http.StatusOK || !strings.Contains(r.body, `"processed"`):
				t.Errorf("concurrent webhook: %d %s", r.code, r.body)
			}
		})
	}
	concurrently(fns...)
	for _, ev := range again {
		r := targets[0].postWebhook(ev)
		for tries := 1; r.code == http.StatusServiceUnavailable && tries < 5; tries++ {
			r = targets[0].postWebhook(ev)
		}
		if r.code != http.StatusOK {
			t.Errorf("redelivered webhook: %d %s", r.code, r.body)
		}
	}
	return lat, len(again)
}

// advisoryLocks counts the advisory locks held or awaited in b's database.
func (b *bundle) advisoryLocks() int {
	b.t.Helper()
	return b.count(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
}

// threeReplicas returns b and two more lockstep servers on b's database,
// each with its own pool of maxConns.
func threeReplicas(t *testing.T, b *bundle, maxConns int32) []*bundle {
	t.Helper()
	return []*bundle{b, b.replica(openPool(t, b.db.URL, maxConns)), b.replica(openPool(t, b.db.URL, maxConns))}
}

// Three lockstep servers, each with its own pool, on one database: the
// racing traffic of the service issue spread across them round-robin keeps
// every guarantee (no 4xx or 5xx, one customer row, one ledger row per
// event, processed once). This is how users scale out.
func TestReplicaRaceAcrossThreeServers(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(8))
	replicas := threeReplicas(t, b, 8)
	start := time.Now()
	fig := raceTraffic(t, replicas, 200, 4)
	t.Logf("3 replicas: %d rounds, %d requests (per server %v), %d failures, latency %s, in %s",
		fig.rounds, fig.requests, fig.perTarget, fig.failures, &fig.lat, time.Since(start).Round(time.Millisecond))
	if n := b.advisoryLocks(); n != 0 {
		t.Errorf("%d advisory locks left", n)
	}
}

// Many webhooks for one customer at once, spread across three servers, end
// where applying them one at a time in created order ends.
func TestReplicaManyWebhooksOneCustomer(t *testing.T) {
	t.Parallel()
	concurrent := setup(t, withMaxConns(6))
	sequential := setup(t, withMaxConns(4))
	replicas := threeReplicas(t, concurrent, 6)
	const n = 60
	rng := rand.New(rand.NewPCG(17, 29))
	for round := range 2 {
		fx := fixture{user: uniqueUser("rstorm"), customer: stripefake.NewID("cus_"), subscription: stripefake.NewID("sub_"),
			session: stripefake.NewID("cs_test_"), price: "price_0", created: time.Now().Add(-time.Hour).Truncate(time.Second)}
		events := stormEvents(fx, n, fx.created, rng)
		for _, ev := range events {
			must200(t, "sequential webhook", sequential.postWebhook(ev))
		}
		shuffled := slices.Clone(events)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		lat, redelivered := stormDeliver(t, replicas, shuffled)
		t.Logf("round %d: %d webhooks for one customer at once across 3 servers: %s; 503s redelivered %d", round, n, lat, redelivered)
		if want, got := sequential.snapshot(fx.customer), concurrent.snapshot(fx.customer); want != got {
			t.Fatalf("round %d: state across replicas differs from sequential:\nsequential:\n%s\nreplicas:\n%s", round, want, got)
		}
		if got := concurrent.count(`SELECT count(*) FROM stripe_events WHERE stripe_customer_id = $1 AND status = 'processed'`, fx.customer); got != n {
			t.Fatalf("round %d: processed events = %d, want %d", round, got, n)
		}
	}
}
