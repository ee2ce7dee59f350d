//go:build faults

package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

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
			dbtest.WaitFor(t, "the app's pool to have no connection acquired", 5*time.Second, func() (bool, string) {
				n := pool.Stat().AcquiredConns()
				return n == 0, fmt.Sprintf("%d acquired", n)
			})
			if n := b.db.Pool.Stat().AcquiredConns(); n != 0 {
				t.Errorf("test pool: %d connections acquired", n)
			}
		})
	}
}
