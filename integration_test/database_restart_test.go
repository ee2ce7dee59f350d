//go:build faults

package integration_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
)

// A database restart in the middle of a load, against a private cluster:
// pg_ctl restart -m fast, then a stop -m fast with the database down for 3 s,
// then a crash (stop -m immediate) down for 3 s. Requests fail cleanly (503,
// never a hang: none takes longer than the retry budget plus 5 s), /readyz
// answers 503 while the database is down and 200 once it is back, the
// service recovers by itself, and after Stripe's redelivery (and the web
// app's retry of its success calls) nothing is lost.
func TestFaultDatabaseRestart(t *testing.T) {
	const down = 3 * time.Second
	c := dbtest.StartCluster(t)
	b := setupOnCluster(t, c, 10)
	lc := lockmgr.DefaultConfig()
	b.client.Timeout = lc.RetryBudget + lc.LockTimeout + 15*time.Second // far past any answer lockstep should give

	load := startRestartLoad(t, b, 6, lc.RetryBudget+5*time.Second)
	ready := watchReady(b)
	awaitReady := func(want int, within time.Duration) {
		t.Helper()
		dbtest.WaitFor(t, fmt.Sprintf("/readyz to answer %d", want), within, func() (bool, string) {
			code := ready.current()
			return code == want, fmt.Sprint(code)
		})
	}
	awaitReady(http.StatusOK, 10*time.Second)
	time.Sleep(1500 * time.Millisecond)
	load.phase("load running")

	// pg_ctl restart -m fast.
	began := time.Now()
	if err := c.Restart("fast"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	load.phase(fmt.Sprintf("pg_ctl restart -m fast (%s)", took.Round(time.Millisecond)))
	awaitReady(http.StatusOK, 30*time.Second)
	t.Logf("restart -m fast: pg_ctl took %s; /readyz 200 again %s after it began", took.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	time.Sleep(2 * time.Second)

	// The database away for a while: a clean stop, then a crash.
	for _, mode := range []string{"fast", "immediate"} {
		before := load.phase("before stop -m " + mode)
		began := time.Now()
		if err := c.Stop(mode); err != nil {
			t.Fatal(err)
		}
		awaitReady(http.StatusServiceUnavailable, 10*time.Second)
		t.Logf("stop -m %s: /readyz 503 %s after the stop began", mode, time.Since(began).Round(time.Millisecond))
		time.Sleep(down)

		began = time.Now()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		took := time.Since(began)
		during := load.phase("database back after stop -m " + mode)
		if during[http.StatusServiceUnavailable] == before[http.StatusServiceUnavailable] {
			t.Errorf("no request failed while the database was down (stop -m %s): the load did not reach it", mode)
		}
		awaitReady(http.StatusOK, 30*time.Second)
		readyAt := time.Now()
		t.Logf("after stop -m %s: pg_ctl start took %s; /readyz 200 again %s after it began", mode, took.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
		time.Sleep(2 * time.Second)
		t.Logf("after stop -m %s: requests begun after /readyz said 200 that still failed: %d (stale pooled connections, at most one each; pool max %d)",
			mode, load.failedSince(readyAt), b.db.Pool.Config().MaxConns)
	}
	load.stop()
	ready.finish()
	load.phase("load stopped")
	t.Logf("readyz transitions (time since start:status): %v", ready.changes)
	t.Logf("load: %s, slowest %s (hang limit %s)", &load.lat, load.slowest.Round(time.Millisecond), load.hang)

	// Stripe redelivers what failed; the web app retries its success call.
	rounds := load.redeliver(10)
	redelivered := 0
	for _, n := range load.eventFails {
		redelivered += n
	}
	t.Logf("%d events and %d success calls sent; %d failed deliveries redelivered in %d rounds", len(load.events), len(load.checkoutOK), redelivered, rounds)
	for id, ok := range load.eventOK {
		if !ok {
			t.Errorf("event %s still failing after %d redelivery rounds", id, rounds)
		}
	}

	// Nothing lost: every event processed once; each customer ends at its newest event.
	if got := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'processed'`); got != len(load.events) {
		t.Errorf("processed events = %d, want %d", got, len(load.events))
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
		if attempts < 1 || attempts > 1+load.eventFails[id] {
			t.Errorf("event %s: %d attempts, failed deliveries %d", id, attempts, load.eventFails[id])
		}
	}
	rows.Close()
	t.Logf("ledger attempts histogram %v", hist)
	newest := map[string]sentEvent{}
	for _, s := range load.events {
		if s.created.After(newest[s.customer].created) {
			newest[s.customer] = s
		}
	}
	for cus, s := range newest {
		if got := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_customer_id = $1`, cus); got != s.status {
			t.Errorf("customer %s: subscription %s, want %s (its newest event)", cus, got, s.status)
		}
	}
	for i, ok := range load.checkoutOK {
		fx := load.checkouts[i]
		if got := b.customerOf(fx.user); !ok || got != fx.customer {
			t.Errorf("success call for %s: ok %v, mapped to %s, want %s", fx.user, ok, got, fx.customer)
		}
	}
	if n := b.advisoryLocks(); n != 0 {
		t.Errorf("%d advisory locks left", n)
	}
	dbtest.WaitFor(t, "the pool to have no connection acquired", 5*time.Second, func() (bool, string) {
		n := b.db.Pool.Stat().AcquiredConns()
		return n == 0, fmt.Sprintf("%d acquired", n)
	})
}

// restartLoad is TestFaultDatabaseRestart's traffic: workers sending
// subscription updates for 30 customers and, every fifth request while they
// last, one of 60 success-page calls. It records every answer.
type restartLoad struct {
	t         *testing.T
	b         *bundle
	t0        time.Time // Stripe time of the first event
	customers []fixture
	checkouts []fixture
	hang      time.Duration // longer than any answer may take
	start     time.Time
	seq       atomic.Int64 // requests begun
	halt      chan struct{}
	wg        sync.WaitGroup
	lat       latencies

	mu         sync.Mutex
	events     map[string]sentEvent // every event sent, by id
	eventOK    map[string]bool      // the event's last delivery answered 200
	eventFails map[string]int       // the event's deliveries that did not
	checkoutOK map[int]bool         // the last success call for checkouts[i] answered 200
	codes      map[int]int          // answers during the load, by status
	failedAt   []time.Time          // when each failed request of the load began
	slowest    time.Duration
}

// sentEvent is a subscription update the load sent.
type sentEvent struct {
	body     []byte
	customer string
	status   string
	created  time.Time
}

var restartStatuses = []string{"active", "past_due", "unpaid", "active", "trialing"}

func startRestartLoad(t *testing.T, b *bundle, workers int, hang time.Duration) *restartLoad {
	t0 := time.Now().Add(-2 * time.Hour).Truncate(time.Second)
	l := &restartLoad{t: t, b: b, t0: t0, hang: hang, start: time.Now(), halt: make(chan struct{}),
		events: map[string]sentEvent{}, eventOK: map[string]bool{}, eventFails: map[string]int{},
		checkoutOK: map[int]bool{}, codes: map[int]int{}}
	for i := range 30 {
		l.customers = append(l.customers, newFixture(fmt.Sprintf("restart%d", i), t0))
	}
	for i := range 60 {
		l.checkouts = append(l.checkouts, b.paidCheckout(uniqueUser(fmt.Sprintf("rcheckout%d", i)), t0))
	}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.halt:
					return
				default:
				}
				n := int(l.seq.Add(1) - 1)
				if n >= 20000 {
					return
				}
				l.send(n)
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	return l
}

func (l *restartLoad) stop() {
	close(l.halt)
	l.wg.Wait()
}

// send makes request n, a success-page call or a webhook, and records its answer.
func (l *restartLoad) send(n int) {
	start := time.Now()
	var r response
	if n%5 == 4 && n/5 < len(l.checkouts) {
		r = l.checkout(n / 5)
	} else {
		r = l.deliver(l.newEvent(n))
	}
	d := time.Since(start)
	l.lat.add(d)
	l.mu.Lock()
	l.codes[r.code]++
	l.slowest = max(l.slowest, d)
	if r.code != http.StatusOK {
		l.failedAt = append(l.failedAt, start)
	}
	l.mu.Unlock()
	if r.code != http.StatusOK && r.code != http.StatusServiceUnavailable {
		l.t.Errorf("request %d: %d %s (want 200, or 503 while the database is away)", n, r.code, r.body)
	}
	if d > l.hang {
		l.t.Errorf("request %d took %s: more than the retry budget + 5s", n, d.Round(time.Millisecond))
	}
}

// newEvent makes request n's subscription update and returns its id.
func (l *restartLoad) newEvent(n int) string {
	fx := l.customers[n%len(l.customers)]
	s := sentEvent{customer: fx.customer, status: restartStatuses[(n/len(l.customers))%len(restartStatuses)],
		created: l.t0.Add(time.Duration(n) * time.Second)}
	s.body = subUpdate(fx, s.status, s.created)
	id := eventID(l.t, s.body)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events[id] = s
	return id
}

// deliver posts event id, as Stripe does, and records whether it was accepted.
func (l *restartLoad) deliver(id string) response {
	l.mu.Lock()
	body := l.events[id].body
	l.mu.Unlock()
	r := l.b.postWebhook(body)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.eventOK[id] = r.code == http.StatusOK
	if r.code != http.StatusOK {
		l.eventFails[id]++
	}
	return r
}

// checkout makes success-page call i, as the web app does, and records
// whether it was accepted.
func (l *restartLoad) checkout(i int) response {
	fx := l.checkouts[i]
	r := l.b.checkout(fx.session, fx.user)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checkoutOK[i] = r.code == http.StatusOK
	return r
}

// phase logs the requests so far by status, and returns those counts.
func (l *restartLoad) phase(name string) map[int]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Logf("%-32s at %s: %d requests so far, by status %v", name, time.Since(l.start).Round(10*time.Millisecond), int(l.seq.Load()), l.codes)
	return maps.Clone(l.codes)
}

// failedSince counts the failed requests begun after at.
func (l *restartLoad) failedSince(at time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, began := range l.failedAt {
		if began.After(at) {
			n++
		}
	}
	return n
}

// redeliver sends again, once the load has stopped, every event and success
// call whose last attempt failed, as Stripe and the web app do, for at most
// maxRounds rounds. It returns the rounds it took.
func (l *restartLoad) redeliver(maxRounds int) int {
	rounds := 0
	for ; rounds < maxRounds; rounds++ {
		var events []string
		for id, ok := range l.eventOK {
			if !ok {
				events = append(events, id)
			}
		}
		var checkouts []int
		for i, ok := range l.checkoutOK {
			if !ok {
				checkouts = append(checkouts, i)
			}
		}
		if len(events)+len(checkouts) == 0 {
			break
		}
		for _, id := range events {
			l.deliver(id)
		}
		for _, i := range checkouts {
			l.checkout(i)
		}
	}
	return rounds
}
