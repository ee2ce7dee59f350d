//go:build faults

package integration_test

import (
	"context"
	"fmt"
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
