package integration_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// A customer mapped to user A is never re-pointed to user B: the success
// call for B is refused and nothing changes.
func TestMappingCustomerNeverRepointedToAnotherUser(t *testing.T) {
	t.Parallel()
	b := setup(t)
	created := time.Now().Add(-time.Hour).Truncate(time.Second)
	a := b.paidCheckout(uniqueUser("a"), created)
	must200(t, "success A", b.checkout(a.session, a.user))
	before := b.snapshot(a.customer)

	// B completes a checkout Stripe attached to A's customer.
	bSession := stripefake.NewID("cs_test_")
	userB := uniqueUser("b")
	b.stripe.PutSession(stripefake.Session{ID: bSession, Customer: a.customer, Subscription: a.subscription,
		ClientReferenceID: userB, Status: "complete", PaymentStatus: "paid", Created: created.Add(time.Minute)})
	r := b.checkout(bSession, userB)
	if r.code != http.StatusForbidden {
		t.Fatalf("success for B on A's customer: %d %s, want 403", r.code, r.body)
	}
	if after := b.snapshot(a.customer); after != before {
		t.Fatalf("refused call changed state:\nbefore %s\nafter  %s", before, after)
	}
	if code, _ := b.userBilling(userB); code != http.StatusNotFound {
		t.Fatalf("B's billing: %d, want 404", code)
	}

	// A webhook naming B for A's customer does not re-point either; it is
	// not retried (200) and the refusal is in the ledger.
	ev := event(stripefake.NewID("evt_"), "checkout.session.completed", created.Add(time.Minute),
		stripefake.SessionJSON(stripefake.Session{ID: bSession, Customer: a.customer, ClientReferenceID: userB,
			Status: "complete", PaymentStatus: "paid", Created: created.Add(time.Minute)}, nil, ""))
	r = b.postWebhook(ev)
	must200(t, "conflicting webhook", r)
	if got := b.customerOf(a.user); got != a.customer {
		t.Fatalf("A maps to %s after conflicting webhook, want %s", got, a.customer)
	}
	if note := b.scalar(`SELECT last_error FROM stripe_events WHERE event_id = $1`, eventID(t, ev)); !strings.Contains(note, "mapped to another user") {
		t.Fatalf("ledger note = %q, want the refusal", note)
	}
}

// The success call is authoritative for its own user: a new checkout with a
// new customer re-points the user. A webhook never does, but repeats
// matching data idempotently.
func TestMappingRepointBySuccessNotByWebhook(t *testing.T) {
	t.Parallel()
	b := setup(t)
	user := uniqueUser("upgrader")
	old := b.paidCheckout(user, time.Now().Add(-48*time.Hour).Truncate(time.Second))
	must200(t, "old checkout", b.checkout(old.session, user))

	// The same data again, by webhook, twice: nothing changes.
	must200(t, "matching webhook", b.postWebhook(sessionCompleted(old, old.created)))
	must200(t, "matching webhook again", b.postWebhook(sessionCompleted(old, old.created)))
	if got := b.customerOf(user); got != old.customer {
		t.Fatalf("maps to %s, want %s", got, old.customer)
	}

	// A new checkout creates a new customer. Its webhook alone does not
	// re-point the user...
	fresh := b.paidCheckout(user, time.Now().Add(-time.Minute).Truncate(time.Second))
	r := b.postWebhook(sessionCompleted(fresh, fresh.created))
	must200(t, "new customer webhook", r)
	if got := b.customerOf(user); got != old.customer {
		t.Fatalf("webhook re-pointed the user to %s", got)
	}
	if !strings.Contains(r.body, "mapping refused") {
		t.Fatalf("webhook answer %s does not say the mapping was refused", r.body)
	}
	// ...the user's own success call does.
	r = b.checkout(fresh.session, user)
	must200(t, "new checkout success", r)
	if m := r.json(t)["mapping"]; m != "repointed" {
		t.Fatalf("mapping = %v, want repointed", m)
	}
	if got := b.customerOf(user); got != fresh.customer {
		t.Fatalf("maps to %s, want %s", got, fresh.customer)
	}
	if u := b.scalar(`SELECT user_id FROM stripe_customers WHERE stripe_customer_id = $1`, old.customer); u != "<null>" {
		t.Fatalf("old customer still mapped to %s", u)
	}
	// A late success call for the older checkout does not take the user back.
	r = b.checkout(old.session, user)
	must200(t, "late old success", r)
	if m := r.json(t)["mapping"]; m != "superseded" {
		t.Fatalf("mapping = %v, want superseded", m)
	}
	if sub, ok := r.json(t)["subscription"]; ok {
		t.Fatalf("a superseded checkout reported subscription %v, which is not the user's", sub)
	}
	if got := b.customerOf(user); got != fresh.customer {
		t.Fatalf("late old call re-pointed the user to %s", got)
	}
}

// Two customers for one user arrive at the same time, through both writers:
// whatever the order, the user ends on the newer checkout's customer, and
// no caller sees an error. The customer locks alone do not serialize this;
// the user's lock (taken after the customer's) does.
func TestMappingTwoCustomersOneUserConcurrently(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var failures atomic.Int64
	check := func(what string, r response) {
		if r.code != http.StatusOK {
			failures.Add(1)
			t.Errorf("%s: %d %s", what, r.code, r.body)
		}
	}
	for i := range 60 {
		user := uniqueUser(fmt.Sprintf("twice%d", i))
		base := time.Now().Add(-time.Hour).Truncate(time.Second)
		first := b.paidCheckout(user, base)
		second := b.paidCheckout(user, base.Add(time.Duration(1+i%3)*time.Second))
		if i%4 == 0 { // same second: the greater customer id wins
			second.created = first.created
			b.stripe.PutSession(second.sessionObj())
		}
		want := second.customer
		if second.created.Equal(first.created) && first.customer > second.customer {
			want = first.customer
		}
		concurrently(
			func() { check("success 1", b.checkout(first.session, user)) },
			func() { check("success 2", b.checkout(second.session, user)) },
			func() { check("webhook 1", b.postWebhook(sessionCompleted(first, first.created))) },
			func() { check("webhook 2", b.postWebhook(sessionCompleted(second, second.created))) },
		)
		if got := b.customerOf(user); got != want {
			t.Fatalf("round %d: user maps to %s, want %s (first %s, second %s)", i, got, want, first.customer, second.customer)
		}
		if n := b.count(`SELECT count(*) FROM stripe_customers WHERE user_id = $1`, user); n != 1 {
			t.Fatalf("round %d: %d customers mapped to the user", i, n)
		}
	}
	if failures.Load() > 0 {
		t.Fatalf("%d requests failed", failures.Load())
	}
}
