package integration_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

func TestAPIRequiresToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	body := []byte(`{"session_id":"cs_test_x1","user_id":"u1"}`)
	for _, tc := range []struct{ name, token string }{
		{"none", ""}, {"wrong", "not-the-token"}, {"admin token", adminToken}, {"prefix", appToken[:10]},
	} {
		if r := b.api(http.MethodPost, "/api/checkout/success", tc.token, body); r.code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", tc.name, r.code)
		}
		if r := b.api(http.MethodGet, "/api/users/u1/billing", tc.token, nil); r.code != http.StatusUnauthorized {
			t.Errorf("billing %s: %d, want 401", tc.name, r.code)
		}
	}
	if r := b.api(http.MethodGet, "/admin/locks", appToken, nil); r.code != http.StatusUnauthorized {
		t.Errorf("admin with the app token: %d, want 401", r.code)
	}
	if b.stripe.Requests() != 0 {
		t.Fatal("an unauthorized call reached Stripe")
	}
}

func TestCheckoutSuccessAnswers(t *testing.T) {
	t.Parallel()
	b := setup(t)
	created := time.Now().Add(-time.Minute).Truncate(time.Second)
	owner := uniqueUser("owner")

	t.Run("malformed body", func(t *testing.T) {
		for _, body := range []string{``, `{`, `[]`, `{"session_id":"cs_1"}`, `{"session_id":"pi_1","user_id":"u"}`,
			`{"session_id":"cs_1","user_id":""}`, `{"session_id":"cs_1","user_id":"a\u0000b"}`, `{"session_id":"cs_1","user_id":"u"} {}`} {
			if r := b.api(http.MethodPost, "/api/checkout/success", appToken, []byte(body)); r.code != http.StatusBadRequest || !strings.Contains(r.body, "error") {
				t.Errorf("body %q: %d %s, want 400 with a reason", body, r.code, r.body)
			}
		}
	})
	t.Run("unknown session", func(t *testing.T) {
		if r := b.checkout("cs_test_doesnotexist", owner); r.code != http.StatusNotFound {
			t.Fatalf("%d %s, want 404", r.code, r.body)
		}
	})
	t.Run("another user's session", func(t *testing.T) {
		fx := b.paidCheckout(owner, created)
		for _, meta := range []bool{false, true} {
			if meta { // named by metadata.user_id instead of client_reference_id
				s := fx.sessionObj()
				s.ClientReferenceID, s.Metadata = "", map[string]string{"user_id": owner}
				b.stripe.PutSession(s)
			}
			if r := b.checkout(fx.session, "intruder"); r.code != http.StatusForbidden {
				t.Fatalf("metadata=%v: %d %s, want 403", meta, r.code, r.body)
			}
		}
		if n := b.count(`SELECT count(*) FROM stripe_customers WHERE stripe_customer_id = $1`, fx.customer); n != 0 {
			t.Fatal("a refused call wrote the customer")
		}
	})
	t.Run("unpaid", func(t *testing.T) {
		fx := b.paidCheckout(uniqueUser("slowbank"), created)
		s := fx.sessionObj()
		s.PaymentStatus = "unpaid" // e.g. a bank debit still processing
		b.stripe.PutSession(s)
		r := b.checkout(fx.session, fx.user)
		if r.code != http.StatusAccepted || r.json(t)["redirect"] != "/checkout/processing" {
			t.Fatalf("%d %s, want 202 to /checkout/processing", r.code, r.body)
		}
		// The user is not told to subscribe: the session's customer and
		// subscription are stored, and the paywall answers what Stripe says
		// of the subscription, the same on the success page as after it.
		if n := b.count(`SELECT count(*) FROM stripe_customers WHERE stripe_customer_id = $1 AND user_id = $2`, fx.customer, fx.user); n != 1 {
			t.Fatalf("processing checkout: %d mapped customers, want 1", n)
		}
		access, _ := r.json(t)["access"].(map[string]any)
		if access == nil || access["state"] == "none" || access["action"] == "subscribe" {
			t.Fatalf("processing checkout's access = %v, want the subscription's state, not none/subscribe", access)
		}
		// The async payment succeeds: the webhook maps, the next call is 200.
		s.PaymentStatus = "paid"
		b.stripe.PutSession(s)
		must200(t, "async succeeded", b.postWebhook(event(stripefake.NewID("evt_"), "checkout.session.async_payment_succeeded",
			created, stripefake.SessionJSON(s, nil, ""))))
		if r := b.checkout(fx.session, fx.user); r.code != http.StatusOK || r.json(t)["redirect"] != "/dashboard" {
			t.Fatalf("after payment: %d %s", r.code, r.body)
		}
	})
	t.Run("no payment required", func(t *testing.T) {
		fx := b.paidCheckout(uniqueUser("trial"), created)
		s := fx.sessionObj()
		s.PaymentStatus = "no_payment_required"
		b.stripe.PutSession(s)
		must200(t, "free trial", b.checkout(fx.session, fx.user))
	})
	t.Run("stripe down", func(t *testing.T) {
		fx := b.paidCheckout(uniqueUser("down"), created)
		b.stripe.FailNext(10, http.StatusInternalServerError)
		r := b.checkout(fx.session, fx.user)
		b.stripe.FailNext(0, 0)
		if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Fatalf("%d %s, want 503 with Retry-After: Stripe failing is a 503, as Stripe hanging is", r.code, r.body)
		}
	})
	t.Run("billing of unknown user", func(t *testing.T) {
		if code, _ := b.userBilling("nobody-at-all"); code != http.StatusNotFound {
			t.Fatalf("%d, want 404", code)
		}
	})
}

// Every handled type is processed, in both the 2023-10-16 and 2025-03-31
// shapes (current_period_end on the items; invoice subscription under
// parent); unknown types are ignored.
func TestWebhookTypesAndAPIVersions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, version := range []string{stripefake.DefaultAPIVersion, stripefake.BasilAPIVersion} {
		fx := b.paidCheckout(uniqueUser("types"), time.Now().Add(-time.Hour).Truncate(time.Second))
		at := func(i int) time.Time { return fx.created.Add(time.Duration(i) * time.Second) }
		sub := func(st string) map[string]any { return stripefake.SubscriptionJSON(fx.subObj(st), version) }
		inv := stripefake.Invoice{ID: stripefake.NewID("in_"), Customer: fx.customer, Subscription: fx.subscription,
			Status: "open", Currency: "usd", AmountDue: 990, Created: fx.created}
		paidInv := inv
		paidInv.Status, paidInv.AmountPaid = "paid", 990
		cust := stripefake.Customer{ID: fx.customer, Email: "someone@example.com", Created: fx.created}
		sess := stripefake.SessionJSON(fx.sessionObj(), nil, version)
		steps := []struct {
			typ string
			obj map[string]any
		}{
			{"customer.created", stripefake.CustomerJSON(cust, version)},
			{"checkout.session.completed", sess},
			{"checkout.session.async_payment_succeeded", sess},
			{"checkout.session.async_payment_failed", sess},
			{"customer.subscription.created", sub("incomplete")},
			{"invoice.payment_failed", stripefake.InvoiceJSON(inv, version)},
			{"invoice.paid", stripefake.InvoiceJSON(paidInv, version)},
			{"customer.subscription.updated", sub("active")},
			{"customer.subscription.paused", sub("paused")},
			{"customer.subscription.resumed", sub("active")},
			{"customer.updated", stripefake.CustomerJSON(cust, version)},
			{"customer.subscription.deleted", sub("canceled")},
			{"customer.deleted", stripefake.CustomerJSON(cust, version)},
		}
		for i, s := range steps {
			r := b.postWebhook(stripefake.EventJSON(stripefake.NewID("evt_"), s.typ, at(i), version, s.obj))
			if r.code != http.StatusOK || !strings.Contains(r.body, `"processed"`) {
				t.Fatalf("%s %s: %d %s, want processed", version, s.typ, r.code, r.body)
			}
		}
		code, v := b.userBilling(fx.user)
		if code != http.StatusOK || !v.CustomerDeleted || len(v.Subscriptions) != 1 || len(v.Invoices) != 1 {
			t.Fatalf("%s: billing %d %+v", version, code, v)
		}
		if s := v.Subscriptions[0]; s.Status != "canceled" || s.CurrentPeriodEnd == nil || s.PriceID != fx.price {
			t.Fatalf("%s: subscription %+v: want canceled with price and period end read from this version's shape", version, s)
		}
		if i := v.Invoices[0]; i.Status != "paid" || i.SubscriptionID != fx.subscription {
			t.Fatalf("%s: invoice %+v, want paid and tied to the subscription", version, i)
		}
		if strings.Contains(b.logs.String(), "someone@example.com") {
			t.Fatal("an email reached the logs")
		}
	}
	r := b.postWebhook(event(stripefake.NewID("evt_"), "charge.refunded", time.Now(), map[string]any{"id": "ch_1", "object": "charge"}))
	if r.code != http.StatusOK || !strings.Contains(r.body, `"ignored"`) {
		t.Fatalf("unknown type: %d %s, want 200 ignored", r.code, r.body)
	}
}

// Signatures are checked against every configured secret; anything
// unsigned, stale, oversized or not an event is refused with nothing written.
func TestWebhookInputRefused(t *testing.T) {
	t.Parallel()
	b := setup(t)
	fx := b.paidCheckout(uniqueUser("input"), time.Now().Add(-time.Hour).Truncate(time.Second))
	ev := subEvent(fx, "customer.subscription.created", "active", fx.created)
	now := time.Now()
	big := append(append([]byte(nil), ev[:len(ev)-1]...), []byte(`,"pad":"`+strings.Repeat("x", 1<<20)+`"}`)...)
	for _, tc := range []struct {
		name string
		body []byte
		sig  string
		want int
	}{
		{"unsigned", ev, "", http.StatusBadRequest},
		{"wrong secret", ev, stripefake.SignatureHeader(ev, "whsec_somebody_else_000", now), http.StatusBadRequest},
		{"tampered body", bytes.Replace(ev, []byte("active"), []byte("activ3"), 1), stripefake.SignatureHeader(ev, secretNew, now), http.StatusBadRequest},
		{"301 s old", ev, stripefake.SignatureHeader(ev, secretNew, now.Add(-301*time.Second)), http.StatusBadRequest},
		{"garbage header", ev, "t=abc,v1=zz", http.StatusBadRequest},
		{"over 1 MiB", big, stripefake.SignatureHeader(big, secretNew, now), http.StatusRequestEntityTooLarge},
		{"signed non-event", []byte(`{"hello":"world"}`), stripefake.SignatureHeader([]byte(`{"hello":"world"}`), secretNew, now), http.StatusBadRequest},
	} {
		if r := b.postWebhookHeader(tc.body, tc.sig); r.code != tc.want || !strings.Contains(r.body, "error") {
			t.Errorf("%s: %d %s, want %d with a reason", tc.name, r.code, r.body, tc.want)
		}
	}
	if n := b.count(`SELECT (SELECT count(*) FROM stripe_events) + (SELECT count(*) FROM stripe_customers)`); n != 0 {
		t.Fatalf("refused requests wrote %d rows", n)
	}
	// The rotated-out secret still verifies, alone or beside the new one.
	must200(t, "old secret", b.postWebhookHeader(ev, stripefake.SignatureHeader(ev, secretOld, now)))
	must200(t, "both secrets", b.postWebhookHeader(ev, stripefake.SignatureHeaderMulti(ev, now, "whsec_unknown_0000000", secretNew)))
}

// No Stripe API call happens while a transaction or an advisory lock is held
// by lockstep. Requests one at a time: every lock held while the fake Stripe
// serves must be the caller's own. Then concurrently: no transaction named
// for the session being fetched may be open.
func TestNoStripeCallUnderLock(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var violations []string
	var sequential bool
	b.stripe.SetOnRequest(func(r *http.Request) {
		session := strings.TrimPrefix(r.URL.Path, "/v1/checkout/sessions/")
		if session == r.URL.Path {
			session = "(none)"
		}
		var held, named int
		err := b.db.Pool.QueryRow(context.Background(), `
SELECT count(*) FILTER (WHERE l.locktype = 'advisory' AND l.granted),
       count(*) FILTER (WHERE a.application_name LIKE '%' || $1 AND a.xact_start IS NOT NULL)
FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid
WHERE a.datname = current_database() AND a.application_name LIKE 'lockstep %'`, session).Scan(&held, &named)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil:
			violations = append(violations, err.Error())
		case named > 0, sequential && held > 0:
			violations = append(violations, fmt.Sprintf("%s (locks held %d, transactions for it %d)", r.URL.Path, held, named))
		}
	})
	round := func(concurrent bool) {
		fx := b.paidCheckout(uniqueUser("nolock"), time.Now().Add(-time.Hour).Truncate(time.Second))
		tie := fx.created.Add(time.Minute) // tied events make the webhook path ask Stripe too
		steps := []func(){
			func() { b.postWebhook(subEvent(fx, "customer.subscription.updated", "past_due", tie)) },
			func() { b.postWebhook(subEvent(fx, "customer.subscription.updated", "active", tie)) },
			func() { b.postWebhook(sessionCompleted(fx, fx.created)) },
			func() { b.checkout(fx.session, fx.user) },
		}
		if concurrent {
			concurrently(steps...)
			return
		}
		for _, f := range steps {
			f()
		}
	}
	sequential = true
	for range 10 {
		round(false)
	}
	seqCalls := b.stripe.Requests()
	mu.Lock()
	sequential = false
	mu.Unlock()
	for range 10 {
		round(true)
	}
	if seqCalls < 20 {
		t.Fatalf("only %d Stripe requests in sequential rounds: the test did not exercise both paths", seqCalls)
	}
	if len(violations) > 0 {
		t.Fatalf("%d Stripe calls made while lockstep held a transaction or lock: %v", len(violations), violations)
	}
}
