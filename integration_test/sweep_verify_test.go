package integration_test

// The sweeper finds the events whose webhooks never arrived; verify finds
// stored state that drifted from Stripe's and mends it; both race the live
// writers through the same customer locks.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// checkoutEvents emits, in the fake Stripe, the events of fx's checkout:
// the session completed, the subscription created incomplete, then active.
// It returns their payloads, oldest first; none is delivered.
func (b *bundle) checkoutEvents(fx fixture) [][]byte {
	b.t.Helper()
	v := stripefake.DefaultAPIVersion
	var out [][]byte
	b.stripe.PutSubscription(fx.subObj("incomplete"))
	_, p := b.stripe.Emit("customer.subscription.created", stripefake.SubscriptionJSON(fx.subObj("incomplete"), v))
	out = append(out, p)
	_, p = b.stripe.Emit("checkout.session.completed", stripefake.SessionJSON(fx.sessionObj(), nil, v))
	out = append(out, p)
	b.stripe.PutSubscription(fx.subObj("active"))
	_, p = b.stripe.Emit("customer.subscription.updated", stripefake.SubscriptionJSON(fx.subObj("active"), v))
	out = append(out, p)
	return out
}

// Webhooks that never arrived are found by the sweeper and applied oldest
// first; events already in the ledger are not applied again; a second pass
// finds nothing.
func TestSweeperRecoversMissedEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var fixtures []fixture
	delivered := 0
	for i := range 6 {
		fx := b.paidCheckout(uniqueUser("sweep"), b.stripe.Now().Add(-time.Hour).Truncate(time.Second))
		fixtures = append(fixtures, fx)
		events := b.checkoutEvents(fx)
		if i%2 == 0 { // every other customer's first event did arrive
			must200(t, "webhook", b.postWebhook(events[0]))
			delivered++
		}
	}
	out, code := b.cli(context.Background(), nil, "sweep")
	if code != 0 || !strings.Contains(out, "18 events of handled types") || !strings.Contains(out, "15 missing from the ledger, 15 recovered, 0 failed") {
		t.Fatalf("sweep: exit %d, want 18 listed, 15 missing and recovered:\n%s", code, out)
	}
	for _, fx := range fixtures {
		if st := b.subStatus(fx.subscription); st != "active" {
			t.Fatalf("subscription %s is %s after the sweep, want active (the newest event)", fx.subscription, st)
		}
		if c := b.customerOf(fx.user); c != fx.customer {
			t.Fatalf("user %s maps to %s after the sweep, want %s", fx.user, c, fx.customer)
		}
	}
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'processed'`); n != 18 {
		t.Fatalf("%d events processed in the ledger, want 18", n)
	}
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE attempts > 1`); n != 0 {
		t.Fatalf("%d events applied twice", n)
	}
	out, code = b.cli(context.Background(), nil, "sweep", "--since", "2h")
	if code != 0 || !strings.Contains(out, "0 missing from the ledger") {
		t.Fatalf("second sweep: exit %d, want nothing missing:\n%s", code, out)
	}
	// A pass that fails keeps the cursor where it was and says why.
	cursor := b.scalar(`SELECT cursor::text FROM stripe_sweeper`)
	b.stripe.FailNext(10, 500)
	out, code = b.cli(context.Background(), nil, "sweep")
	b.stripe.FailNext(0, 0)
	if code != 1 || b.scalar(`SELECT cursor::text FROM stripe_sweeper`) != cursor ||
		!strings.Contains(b.scalar(`SELECT last_error FROM stripe_sweeper`), "list events") {
		t.Fatalf("a failed sweep: exit %d, cursor %s (was %s), last_error %s:\n%s", code,
			b.scalar(`SELECT cursor::text FROM stripe_sweeper`), cursor, b.scalar(`SELECT last_error FROM stripe_sweeper`), out)
	}
	// serve exports the sweep's lag once a cursor is stored.
	if lag, ok := scrapeMetrics(t, b).get("lockstep_sweep_lag_seconds", nil); !ok || lag < 0 || lag > 60 {
		t.Fatalf("lockstep_sweep_lag_seconds = %v (exported: %v) after a sweep just now", lag, ok)
	}
}

// One sweeper at a time: a live lease refuses a second; a lease that ran
// out (its replica died) is taken over.
func TestSweeperLease(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO stripe_sweeper (name, lease_owner, lease_until)
VALUES ('events', 'replica-a:1:serve', now() + interval '1 minute')`); err != nil {
		t.Fatal(err)
	}
	_, err := b.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "replica-b:2:serve"})
	if !errors.Is(err, billing.ErrSweepBusy) || !strings.Contains(err.Error(), "replica-a") {
		t.Fatalf("sweep under another's lease: %v, want ErrSweepBusy naming replica-a", err)
	}
	out, code := b.cli(ctx, nil, "sweep")
	if code != 1 || !strings.Contains(out, "another sweeper holds the lease") {
		t.Fatalf("lockstep sweep under another's lease: exit %d:\n%s", code, out)
	}
	if _, err := b.db.Pool.Exec(ctx, `UPDATE stripe_sweeper SET lease_until = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "replica-b:2:serve"}); err != nil {
		t.Fatalf("sweep after the lease ran out: %v", err)
	}
	// Racing sweepers: one at a time.
	var mu sync.Mutex
	busy, ran := 0, 0
	var fns []func()
	for i := range 4 {
		fns = append(fns, func() {
			_, err := b.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "racer-" + string(rune('a'+i))})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, billing.ErrSweepBusy):
				busy++
			case err == nil:
				ran++
			default:
				t.Errorf("sweep: %v", err)
			}
		})
	}
	concurrently(fns...)
	if ran < 1 || ran+busy != 4 {
		t.Fatalf("4 racing sweepers: %d ran, %d refused", ran, busy)
	}
}

// verify names each difference (object, field, stored, Stripe's), exits 3;
// --repair mends what lockstep may mend and exits 0 once all is mended; the
// drift metrics count both.
func TestVerifyFindsAndRepairsDrift(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := seedAccount(b, 20)
	if out, code := b.cli(context.Background(), nil, "sync"); code != 0 {
		t.Fatalf("sync: %d\n%s", code, out)
	}
	if out, code := b.cli(context.Background(), nil, "verify"); code != 0 || !strings.Contains(out, "equals Stripe's") {
		t.Fatalf("verify after sync: exit %d, want 0:\n%s", code, out)
	}
	// Missed webhooks: Stripe changed, nobody told lockstep.
	var changed []stripefake.Subscription
	for _, s := range a.subs {
		if s.Status == "active" && len(changed) < 3 {
			s.Status = "past_due"
			s.PriceID = "price_upgraded"
			b.stripe.PutSubscription(s)
			a.subs[s.ID] = s
			changed = append(changed, s)
		}
	}
	var gone stripefake.Customer
	for _, c := range a.customers {
		gone = c
		break
	}
	gone.Deleted = true
	b.stripe.PutCustomer(gone)
	a.customers[gone.ID] = gone

	out, code := b.cli(context.Background(), nil, "verify")
	if code != 3 {
		t.Fatalf("verify with drift: exit %d, want 3:\n%s", code, out)
	}
	for _, s := range changed {
		for _, want := range []string{"subscription " + s.ID + " status: stored active, Stripe says past_due",
			"subscription " + s.ID + " price: stored "} {
			if !strings.Contains(out, want) {
				t.Fatalf("verify output lacks %q:\n%s", want, out)
			}
		}
	}
	if !strings.Contains(out, "customer "+gone.ID+" deleted: stored false, Stripe says true") {
		t.Fatalf("verify output lacks the deleted customer:\n%s", out)
	}
	if got := strings.Count(out, "drift: "); got != 7 {
		t.Fatalf("%d differences printed, want 7 (3 statuses, 3 prices, 1 deletion):\n%s", got, out)
	}

	out, code = b.cli(context.Background(), nil, "verify", "--repair")
	if code != 0 || strings.Count(out, "mended: ") != 7 {
		t.Fatalf("verify --repair: exit %d, want 0 and 7 mended:\n%s", code, out)
	}
	b.assertStoredEquals(a)
	if out, code := b.cli(context.Background(), nil, "verify"); code != 0 {
		t.Fatalf("verify after repair: exit %d:\n%s", code, out)
	}
	m := scrapeMetrics(t, b)
	found := m.val("lockstep_drift_found_total", "object", "subscription", "field", "status")
	repaired := m.val("lockstep_drift_repaired_total", "object", "subscription", "field", "status")
	if found != 6 || repaired != 3 {
		t.Fatalf("drift metrics: found %v repaired %v, want 6 (two runs found 3 each) and 3", found, repaired)
	}

	// What lockstep may not mend stays, and --repair says so with exit 3:
	// the customer's metadata names another user than the one mapped.
	var claimed stripefake.Customer
	for _, c := range a.customers {
		if !c.Deleted {
			claimed = c
			break
		}
	}
	claimed.Metadata = map[string]string{"user_id": uniqueUser("other")}
	b.stripe.PutCustomer(claimed)
	out, code = b.cli(context.Background(), nil, "verify", "--repair", "--customer", claimed.ID)
	if code != 3 || !strings.Contains(out, "not mended: mapping "+claimed.ID+" user_id") {
		t.Fatalf("verify --repair of a claimed customer: exit %d, want 3 and the mapping not mended:\n%s", code, out)
	}
}

// A sync, a sweeper pass, verify --repair, webhooks (some missed, in any
// order) and success calls race for the same customers; the rows end equal
// to Stripe's.
func TestConvergenceRace(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rng := rand.New(rand.NewPCG(7, 9))
	for round := range 4 {
		var fixtures []fixture
		var live []func()
		for range 8 {
			fx := b.paidCheckout(uniqueUser("race"), b.stripe.Now().Add(-time.Minute).Truncate(time.Second))
			b.stripe.PutCustomer(stripefake.Customer{ID: fx.customer, Created: fx.created,
				Metadata: map[string]string{"user_id": fx.user}})
			fixtures = append(fixtures, fx)
			for _, ev := range b.checkoutEvents(fx) {
				if rng.IntN(3) > 0 { // a third of the webhooks never arrive
					live = append(live, func() { must200(t, "webhook", b.postWebhook(ev)) })
				}
			}
			live = append(live, func() {
				if r := b.checkout(fx.session, fx.user); r.code != 200 {
					t.Errorf("success call: %d %s", r.code, r.body)
				}
			})
		}
		rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
		ctx := context.Background()
		live = append(live,
			func() {
				if out, code := b.cli(ctx, nil, "sync", "--since", "1h"); code != 0 {
					t.Errorf("sync: %d\n%s", code, out)
				}
			},
			func() {
				if _, err := b.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "race", Since: time.Hour}); err != nil {
					t.Errorf("sweep: %v", err)
				}
			})
		concurrently(live...)
		// Whatever the interleaving, one sweep now finds every missed event.
		if _, err := b.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "race", Since: time.Hour}); err != nil {
			t.Fatalf("round %d: sweep: %v", round, err)
		}
		for _, fx := range fixtures {
			if st := b.subStatus(fx.subscription); st != "active" {
				t.Fatalf("round %d: subscription %s ended %s, Stripe says active", round, fx.subscription, st)
			}
			if c := b.customerOf(fx.user); c != fx.customer {
				t.Fatalf("round %d: user maps to %s, want %s", round, c, fx.customer)
			}
		}
		if out, code := b.cli(ctx, nil, "verify"); code != 0 {
			t.Fatalf("round %d: verify after the race: exit %d\n%s", round, code, out)
		}
	}
}

// Every Stripe call of a sync keeps to the client-side budget: at the
// default (20 per second) a Stripe limiting at 25 per second never answers
// 429; with a budget above Stripe's limit, the 429s are retried with
// backoff and the sync still finishes equal to Stripe.
func TestSyncKeepsToStripeRateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.stripe.SetRateLimit(25)
	a := seedAccount(b, 120)
	// Pages of 10 make many calls (the real default is 100).
	if out, code := b.cli(context.Background(), map[string]string{"STRIPE_API_RPS": "20"}, "sync", "--page-size", "10"); code != 0 {
		t.Fatalf("sync at 20/s: exit %d\n%s", code, out)
	}
	if n := b.stripe.Throttled(); n != 0 {
		t.Fatalf("Stripe answered %d 429s to a sync within the default budget", n)
	}
	b.assertStoredEquals(a)

	b2 := setup(t)
	b2.stripe.SetRateLimit(5)
	a2 := seedAccount(b2, 60)
	if out, code := b2.cli(context.Background(), map[string]string{"STRIPE_API_RPS": "200"}, "sync", "--page-size", "10"); code != 0 {
		t.Fatalf("sync over Stripe's limit: exit %d\n%s", code, out)
	}
	if b2.stripe.Throttled() == 0 {
		t.Fatal("a sync at 200/s against a Stripe limiting at 5/s saw no 429: the test proves nothing")
	}
	b2.assertStoredEquals(a2)
}

// serve sweeps by itself every STRIPE_SWEEP_INTERVAL, and exports what the
// sweeper recovered.
func TestServeSweepsOnItsInterval(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(4))
	fx := b.paidCheckout(uniqueUser("serve-sweep"), b.stripe.Now().Add(-time.Hour).Truncate(time.Second))
	b.checkoutEvents(fx) // three events, none delivered
	srv := b.serve()
	// The pass counts what it recovered once it has finished, a moment
	// after the events are in the ledger: wait for the count.
	dbtest.WaitFor(t, "serve's sweeper to recover and count the 3 missed events", 60*time.Second, func() (bool, string) {
		res, err := http.Get("http://" + srv.addr + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return strings.Contains(string(body), "\nlockstep_sweep_events_recovered_total 3\n"),
			grepLines(string(body), "lockstep_sweep_events_recovered_total ")
	})
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'processed'`); n != 3 {
		t.Fatalf("%d events processed in the ledger after serve's sweep, want 3", n)
	}
	if st := b.subStatus(fx.subscription); st != "active" {
		t.Fatalf("after serve's sweep the subscription is %s, want active", st)
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The bulk writers make no Stripe call while lockstep holds a lock or a
// transaction: sync (one worker, so any lock held is its own), verify
// --repair and the sweeper, with same-second snapshots that make them ask
// Stripe again.
func TestBulkWritersMakeNoStripeCallUnderLock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := seedAccount(b, 30)
	var mu sync.Mutex
	var violations []string
	b.stripe.SetOnRequest(func(r *http.Request) {
		var held int
		err := b.db.Pool.QueryRow(context.Background(), `
SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
WHERE a.datname = current_database() AND a.application_name LIKE 'lockstep %'
  AND ((l.locktype = 'advisory' AND l.granted) OR a.xact_start IS NOT NULL)`).Scan(&held)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			violations = append(violations, err.Error())
		case held > 0:
			violations = append(violations, fmt.Sprintf("%s while lockstep held %d locks or transactions", r.URL.Path, held))
		}
	})
	ctx := context.Background()
	// Same-second snapshots with other content: webhooks dated now.
	now := b.stripe.Now().Truncate(time.Second)
	for _, s := range a.subs {
		if s.Status == "active" {
			s.Status = "past_due"
			ev := stripefake.EventJSON(stripefake.NewID("evt_"), "customer.subscription.updated", now, stripefake.DefaultAPIVersion,
				stripefake.SubscriptionJSON(s, stripefake.DefaultAPIVersion))
			must200(t, "webhook", b.postWebhook(ev))
		}
	}
	if _, err := b.app.Bulk.Sync(ctx, billing.SyncOptions{Workers: 1}); err != nil {
		t.Fatalf("sync: %v", err)
	}
	for _, fx := range []fixture{b.paidCheckout(uniqueUser("nolock"), now)} {
		b.checkoutEvents(fx)
	}
	if _, err := b.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "nolock"}); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	for _, s := range a.subs {
		s.CancelAtPeriodEnd = !s.CancelAtPeriodEnd
		b.stripe.PutSubscription(s)
	}
	if _, err := b.app.Bulk.Verify(ctx, billing.VerifyOptions{Repair: true}); err != nil {
		t.Fatalf("verify: %v", err)
	}
	if n := b.stripe.Requests(); n < 10 {
		t.Fatalf("only %d Stripe requests: the test exercised nothing", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Fatalf("%d Stripe calls made while lockstep held a lock or transaction: %v", len(violations), violations)
	}
}
