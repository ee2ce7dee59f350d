package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// Both writers at once, with Stripe's duplicate deliveries sent
// concurrently too, for many fresh customers: nobody sees an error, and each
// customer and event is stored exactly once.
func TestRaceWebhooksAndSuccess(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(12))
	fig := raceTraffic(t, []*bundle{b}, 200, 4)
	t.Logf("%d rounds, %d requests, %d failures, latency %s", fig.rounds, fig.requests, fig.failures, fig.lat.String())
}

// raceTraffic is the racing traffic of TestRaceWebhooksAndSuccess, sent to
// targets round-robin: for each of rounds fresh customers, the three events
// of a checkout twice each (Stripe's duplicate deliveries) and the success
// page twice, all released at once, parallelRounds customers at a time.
// It fails the test unless every request answers 200 and each customer and
// event is stored exactly once. All targets must share one database and one
// fake Stripe (targets[0]'s).
func raceTraffic(t *testing.T, targets []*bundle, rounds, parallelRounds int) *raceFigures {
	t.Helper()
	b := targets[0]
	fig := &raceFigures{rounds: rounds, perTarget: make([]int64, len(targets))}
	var (
		mu       sync.Mutex
		failures []string
		requests atomic.Int64
		next     atomic.Int64
	)
	pick := func() *bundle {
		i := int(next.Add(1)-1) % len(targets)
		atomic.AddInt64(&fig.perTarget[i], 1)
		return targets[i]
	}
	record := func(what string, r response, start time.Time, okStatuses ...string) {
		fig.lat.add(time.Since(start))
		requests.Add(1)
		ok := r.code == http.StatusOK
		if ok && len(okStatuses) > 0 {
			ok = false
			for _, s := range okStatuses {
				ok = ok || strings.Contains(r.body, `"status":"`+s+`"`)
			}
		}
		if !ok || strings.Contains(r.body, "23505") || strings.Contains(r.body, "duplicate key") {
			mu.Lock()
			failures = append(failures, fmt.Sprintf("%s: %d %s", what, r.code, r.body))
			mu.Unlock()
		}
	}

	fixtures := make([]fixture, rounds)
	eventIDs := map[string]bool{}
	sem := make(chan struct{}, parallelRounds)
	var wg sync.WaitGroup
	for i := range rounds {
		created := time.Now().Add(-time.Minute).Truncate(time.Second)
		fx := b.paidCheckout(uniqueUser(fmt.Sprintf("race%d", i)), created)
		fixtures[i] = fx
		completed := sessionCompleted(fx, created)
		subCreated := subEvent(fx, "customer.subscription.created", "active", created)
		inv := stripefake.Invoice{ID: stripefake.NewID("in_"), Customer: fx.customer, Subscription: fx.subscription,
			Status: "paid", Currency: "usd", AmountDue: 1900, AmountPaid: 1900, Created: created}
		paid := event(stripefake.NewID("evt_"), "invoice.paid", created, stripefake.InvoiceJSON(inv, stripefake.DefaultAPIVersion))
		for _, ev := range [][]byte{completed, subCreated, paid} {
			eventIDs[eventID(t, ev)] = true
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			webhook := func(ev []byte) func() {
				return func() {
					start := time.Now()
					record("webhook", pick().postWebhook(ev), start, "processed", "duplicate")
				}
			}
			success := func() {
				start := time.Now()
				r := pick().checkout(fx.session, fx.user)
				record("success", r, start)
				if r.code == http.StatusOK && !strings.Contains(r.body, `"redirect":"/dashboard"`) {
					mu.Lock()
					failures = append(failures, "success redirect: "+r.body)
					mu.Unlock()
				}
			}
			concurrently(webhook(completed), webhook(completed), webhook(subCreated), webhook(subCreated),
				webhook(paid), webhook(paid), success, success)
		}()
	}
	wg.Wait()
	fig.requests, fig.failures = int(requests.Load()), len(failures)

	for i, f := range failures {
		if i == 10 {
			t.Errorf("... and %d more", len(failures)-10)
			break
		}
		t.Error(f)
	}
	if got := b.count(`SELECT count(*) FROM stripe_customers`); got != rounds {
		t.Errorf("customer rows = %d, want %d", got, rounds)
	}
	if got := b.count(`SELECT count(*) FROM stripe_events`); got != len(eventIDs) {
		t.Errorf("ledger rows = %d, want %d (one per distinct event)", got, len(eventIDs))
	}
	if got := b.count(`SELECT count(*) FROM stripe_events WHERE status <> 'processed' OR attempts <> 1`); got != 0 {
		t.Errorf("%d ledger rows not processed exactly once", got)
	}
	for _, fx := range fixtures {
		if got := b.customerOf(fx.user); got != fx.customer {
			t.Fatalf("user %s maps to %s, want %s", fx.user, got, fx.customer)
		}
		if st := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, fx.subscription); st != "active" {
			t.Fatalf("subscription %s status %s, want active", fx.subscription, st)
		}
	}
	if n := b.count(`SELECT count(*) FROM stripe_invoices WHERE status = 'paid'`); n != rounds {
		t.Errorf("paid invoices = %d, want %d", n, rounds)
	}
	return fig
}

// eventID reads an event body's id.
func eventID(t testing.TB, ev []byte) string {
	t.Helper()
	var e struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(ev, &e); err != nil || e.ID == "" {
		t.Fatalf("no event id in %.200s: %v", ev, err)
	}
	return e.ID
}

// stormEvents builds n mixed events for one customer, each created a
// second after the last, in a shuffled order.
func stormEvents(fx fixture, n int, start time.Time, rng *rand.Rand) (ordered [][]byte) {
	statuses := []string{"active", "past_due", "active", "trialing", "unpaid", "active", "paused"}
	invoiceID := stripefake.NewID("in_")
	for i := range n {
		created := start.Add(time.Duration(i) * time.Second)
		var ev []byte
		switch i % 5 {
		case 0, 1, 2:
			sub := fx.subObj(statuses[rng.IntN(len(statuses))])
			sub.PriceID = fmt.Sprintf("price_%d", rng.IntN(4))
			sub.CancelAtPeriodEnd = rng.IntN(2) == 0
			sub.CurrentPeriodEnd = created.Add(time.Duration(rng.IntN(40)) * 24 * time.Hour)
			ev = event(stripefake.NewID("evt_"), "customer.subscription.updated", created,
				stripefake.SubscriptionJSON(sub, stripefake.DefaultAPIVersion))
		case 3:
			inv := stripefake.Invoice{ID: invoiceID, Customer: fx.customer, Subscription: fx.subscription,
				Status: []string{"open", "uncollectible", "open"}[rng.IntN(3)], Currency: "usd",
				AmountDue: int64(1000 + i), Created: start}
			ev = event(stripefake.NewID("evt_"), "invoice.payment_failed", created, stripefake.InvoiceJSON(inv, stripefake.DefaultAPIVersion))
		case 4:
			ev = event(stripefake.NewID("evt_"), "customer.updated", created,
				stripefake.CustomerJSON(stripefake.Customer{ID: fx.customer, Created: start}))
		}
		ordered = append(ordered, ev)
	}
	return ordered
}

// snapshot is a customer's stored billing state, for comparing two runs.
func (b *bundle) snapshot(customer string) string {
	b.t.Helper()
	rows, err := b.db.Pool.Query(context.Background(), `
SELECT 'sub', stripe_subscription_id, status, coalesce(price_id, ''), coalesce(current_period_end::text, ''), cancel_at_period_end::text
FROM stripe_subscriptions WHERE stripe_customer_id = $1
UNION ALL
SELECT 'inv', stripe_invoice_id, status, amount_due::text, currency, ''
FROM stripe_invoices WHERE stripe_customer_id = $1
UNION ALL
SELECT 'cus', stripe_customer_id, coalesce(user_id, ''), deleted::text, '', ''
FROM stripe_customers WHERE stripe_customer_id = $1
ORDER BY 1, 2`, customer)
	if err != nil {
		b.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			b.t.Fatal(err)
		}
		out = append(out, fmt.Sprint(vals...))
	}
	return strings.Join(out, "\n")
}

// Many webhooks for one customer at once end where applying them one at a
// time in created order ends.
func TestManyWebhooksOneCustomer(t *testing.T) {
	t.Parallel()
	concurrent := setup(t, withMaxConns(8))
	sequential := setup(t, withMaxConns(4))
	const n = 60
	rng := rand.New(rand.NewPCG(7, 11))
	for round := range 3 {
		fx := fixture{user: uniqueUser("storm"), customer: stripefake.NewID("cus_"), subscription: stripefake.NewID("sub_"),
			session: stripefake.NewID("cs_test_"), price: "price_0", created: time.Now().Add(-time.Hour).Truncate(time.Second)}
		events := stormEvents(fx, n, fx.created, rng)

		for _, ev := range events { // one at a time, in created order
			must200(t, "sequential webhook", sequential.postWebhook(ev))
		}
		shuffled := append([][]byte(nil), events...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		var fns []func()
		var bad atomic.Int64
		for _, ev := range shuffled {
			fns = append(fns, func() {
				if r := concurrent.postWebhook(ev); r.code != http.StatusOK || !strings.Contains(r.body, `"processed"`) {
					bad.Add(1)
					t.Errorf("concurrent webhook: %d %s", r.code, r.body)
				}
			})
		}
		concurrently(fns...)
		if bad.Load() > 0 {
			t.Fatalf("round %d: %d webhooks not processed", round, bad.Load())
		}
		want, got := sequential.snapshot(fx.customer), concurrent.snapshot(fx.customer)
		if want != got {
			t.Fatalf("round %d: concurrent state differs from sequential:\nsequential:\n%s\nconcurrent:\n%s", round, want, got)
		}
		if got := concurrent.count(`SELECT count(*) FROM stripe_events WHERE stripe_customer_id = $1 AND status = 'processed'`, fx.customer); got != n {
			t.Fatalf("round %d: processed events = %d, want %d", round, got, n)
		}
	}
}
