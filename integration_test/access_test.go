package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// The paywall's read, through HTTP, over what webhooks stored: the
// contract's state table with the database's clock.

const proPrice, proProduct = "price_pro_monthly", "prod_pro"

// access GETs a user's decision; query is "" or "?feature=...".
func (b *bundle) access(user, query string) (response, billing.Access) {
	b.t.Helper()
	r := b.api(http.MethodGet, "/api/users/"+url.PathEscape(user)+"/access"+query, appToken, nil)
	var a billing.Access
	if r.code == http.StatusOK {
		if err := json.Unmarshal([]byte(r.body), &a); err != nil {
			b.t.Fatalf("access body: %v: %s", err, r.body)
		}
	}
	return r, a
}

// mustAccess is access, which must answer 200.
func (b *bundle) mustAccess(user, query string) billing.Access {
	b.t.Helper()
	r, a := b.access(user, query)
	if r.code != http.StatusOK {
		b.t.Fatalf("access of %s: %d %s, want 200", user, r.code, r.body)
	}
	return a
}

// putCatalog stores the Pro plan as the catalog's webhooks would (another
// part of lockstep writes these tables; the read only reads them).
func (b *bundle) putCatalog() {
	b.t.Helper()
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO stripe_products (stripe_product_id, name, source_time, source) VALUES ('` + proProduct + `', 'Pro', now(), 'test')`,
		`INSERT INTO stripe_prices (stripe_price_id, stripe_product_id, lookup_key, currency, unit_amount, recurring_interval,
			recurring_interval_count, source_time, source)
		 VALUES ('` + proPrice + `', '` + proProduct + `', 'pro_monthly', 'usd', 2000, 'month', 1, now(), 'test')`,
	} {
		if _, err := b.db.Pool.Exec(ctx, q); err != nil {
			b.t.Fatalf("catalog: %v", err)
		}
	}
}

func (b *bundle) putEntitlements(customer string, keys ...string) {
	b.t.Helper()
	for _, k := range keys {
		if _, err := b.db.Pool.Exec(context.Background(), `INSERT INTO stripe_entitlements (stripe_customer_id, stripe_feature_id, lookup_key)
VALUES ($1, 'feat_' || $2, $2)`, customer, k); err != nil {
			b.t.Fatalf("entitlement: %v", err)
		}
	}
}

// storedAs checks that the webhook stored col of the row as the event said.
// Storing trial_end, current_period_start, latest_invoice and
// hosted_invoice_url from events is the catalog work's part of issue 14;
// until it is on this branch the column is still NULL, and it is written
// here as the event carried it, so the read is tested either way. A value
// stored differently from the event fails.
func (b *bundle) storedAs(table, keyCol, key, col string, want any) {
	b.t.Helper()
	ctx := context.Background()
	if _, err := b.db.Pool.Exec(ctx, fmt.Sprintf(`UPDATE %s SET %s = $2 WHERE %s = $1 AND %s IS NULL`, table, col, keyCol, col), key, want); err != nil {
		b.t.Fatalf("fill %s.%s: %v", table, col, err)
	}
	var same bool
	if err := b.db.Pool.QueryRow(ctx, fmt.Sprintf(`SELECT %s = $2 FROM %s WHERE %s = $1`, col, table, keyCol), key, want).Scan(&same); err != nil {
		b.t.Fatalf("read %s.%s of %s: %v", table, col, key, err)
	}
	if !same {
		b.t.Fatalf("%s.%s of %s is not what the event said (%v)", table, col, key, want)
	}
}

// subscriptionEvent is subEvent for sub, with edit applied to the
// subscription object.
func subscriptionEvent(sub stripefake.Subscription, typ string, created time.Time, edit func(map[string]any)) []byte {
	obj := stripefake.SubscriptionJSON(sub, stripefake.DefaultAPIVersion)
	if edit != nil {
		edit(obj)
	}
	return event(stripefake.NewID("evt_"), typ, created, obj)
}

// invoiceEvent sends an open invoice of fx's subscription with its hosted
// page, as invoice.payment_failed and invoice.finalized carry it.
func (b *bundle) invoiceEvent(fx fixture, typ string, created time.Time) (id, hosted string) {
	b.t.Helper()
	id = stripefake.NewID("in_")
	hosted = "https://invoice.stripe.com/i/acct_test/" + id
	obj := stripefake.InvoiceJSON(stripefake.Invoice{ID: id, Customer: fx.customer, Subscription: fx.subscription,
		Status: "open", AmountDue: 2000, Created: created}, stripefake.DefaultAPIVersion)
	obj["hosted_invoice_url"] = hosted
	must200(b.t, typ, b.postWebhook(event(stripefake.NewID("evt_"), typ, created, obj)))
	b.storedAs("stripe_invoices", "stripe_invoice_id", id, "hosted_invoice_url", hosted)
	return id, hosted
}

// mapped maps fx's user to its customer through checkout.session.completed.
func (b *bundle) mapped(fx fixture) {
	b.t.Helper()
	must200(b.t, "checkout.session.completed", b.postWebhook(sessionCompleted(fx, fx.created)))
}

func ptr[T any](v T) *T { return &v }

func utc(t time.Time) *time.Time { u := t.UTC(); return &u }

// Each status Stripe sends, stored by subscription webhooks, gives the
// contract's answer.
func TestAccessByStatus(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.putCatalog()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	end := t0.Add(30 * 24 * time.Hour)
	pro := &billing.Plan{Product: ptr(proProduct), Name: ptr("Pro"), Price: proPrice, LookupKey: ptr("pro_monthly"), Interval: ptr("month")}

	type want struct {
		State     string
		Access    bool
		Until     *time.Time
		Action    string
		ActionURL *string
		Plan      *billing.Plan
	}
	for _, tc := range []struct {
		name string
		// send stores the subscription's state through webhooks and returns
		// the answer expected.
		send func(t *testing.T, fx fixture) want
	}{
		{"active", func(t *testing.T, fx fixture) want {
			must200(t, "created", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", t0.Add(time.Second))))
			return want{State: "active", Access: true, Until: utc(end), Action: "none", Plan: pro}
		}},
		{"active, set to cancel at period end", func(t *testing.T, fx fixture) want {
			s := fx.subObj("active")
			s.CancelAtPeriodEnd = true
			must200(t, "updated", b.postWebhook(subscriptionEvent(s, "customer.subscription.updated", t0.Add(time.Second), nil)))
			return want{State: "grace", Access: true, Until: utc(end), Action: "resubscribe", Plan: pro}
		}},
		{"active, set to cancel, period end passed, no deletion event", func(t *testing.T, fx fixture) want {
			s := fx.subObj("active")
			s.CancelAtPeriodEnd, s.CurrentPeriodEnd = true, time.Now().Add(-time.Minute).Truncate(time.Second)
			must200(t, "updated", b.postWebhook(subscriptionEvent(s, "customer.subscription.updated", t0.Add(time.Second), nil)))
			return want{State: "ended", Action: "resubscribe", Plan: pro}
		}},
		{"trialing", func(t *testing.T, fx fixture) want {
			trialEnd := t0.Add(14 * 24 * time.Hour)
			s := fx.subObj("trialing")
			s.CurrentPeriodEnd = trialEnd // Stripe ends a trial's period with the trial
			must200(t, "created", b.postWebhook(subscriptionEvent(s, "customer.subscription.created", t0.Add(time.Second), func(m map[string]any) {
				m["trial_start"], m["trial_end"] = t0.Unix(), trialEnd.Unix()
			})))
			b.storedAs("stripe_subscriptions", "stripe_subscription_id", fx.subscription, "trial_end", trialEnd)
			return want{State: "trialing", Access: true, Until: utc(trialEnd), Action: "none", Plan: pro}
		}},
		{"past_due, no grace configured", func(t *testing.T, fx fixture) want {
			must200(t, "updated", b.postWebhook(subEvent(fx, "customer.subscription.updated", "past_due", t0.Add(time.Second))))
			_, hosted := b.invoiceEvent(fx, "invoice.payment_failed", t0.Add(time.Second))
			return want{State: "past_due", Action: "update_payment_method", ActionURL: &hosted, Plan: pro}
		}},
		{"incomplete", func(t *testing.T, fx fixture) want {
			inv, hosted := b.invoiceEvent(fx, "invoice.finalized", t0)
			must200(t, "created", b.postWebhook(subscriptionEvent(fx.subObj("incomplete"), "customer.subscription.created", t0.Add(time.Second),
				func(m map[string]any) { m["latest_invoice"] = inv })))
			b.storedAs("stripe_subscriptions", "stripe_subscription_id", fx.subscription, "latest_invoice", inv)
			return want{State: "incomplete", Action: "confirm_payment", ActionURL: &hosted, Plan: pro}
		}},
		{"unpaid", func(t *testing.T, fx fixture) want {
			_, hosted := b.invoiceEvent(fx, "invoice.payment_failed", t0)
			must200(t, "updated", b.postWebhook(subEvent(fx, "customer.subscription.updated", "unpaid", t0.Add(time.Second))))
			return want{State: "unpaid", Action: "update_payment_method", ActionURL: &hosted, Plan: pro}
		}},
		{"paused", func(t *testing.T, fx fixture) want {
			must200(t, "paused", b.postWebhook(subEvent(fx, "customer.subscription.paused", "paused", t0.Add(time.Second))))
			return want{State: "paused", Action: "update_payment_method", Plan: pro}
		}},
		{"canceled", func(t *testing.T, fx fixture) want {
			must200(t, "created", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", t0.Add(time.Second))))
			must200(t, "deleted", b.postWebhook(subEvent(fx, "customer.subscription.deleted", "canceled", t0.Add(2*time.Second))))
			return want{State: "ended", Action: "resubscribe", Plan: pro}
		}},
		{"incomplete_expired", func(t *testing.T, fx fixture) want {
			must200(t, "updated", b.postWebhook(subEvent(fx, "customer.subscription.updated", "incomplete_expired", t0.Add(time.Second))))
			return want{State: "ended", Action: "resubscribe", Plan: pro}
		}},
		{"a status Stripe adds later", func(t *testing.T, fx fixture) want {
			must200(t, "updated", b.postWebhook(subEvent(fx, "customer.subscription.updated", "awaiting_approval", t0.Add(time.Second))))
			return want{State: "awaiting_approval", Action: "none", Plan: pro}
		}},
		{"a price not stored yet", func(t *testing.T, fx fixture) want {
			s := fx.subObj("active")
			s.PriceID = stripefake.NewID("price_")
			must200(t, "created", b.postWebhook(subscriptionEvent(s, "customer.subscription.created", t0.Add(time.Second), nil)))
			return want{State: "active", Access: true, Until: utc(end), Action: "none", Plan: &billing.Plan{Price: s.PriceID}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx := b.paidCheckout(uniqueUser("status"), t0)
			b.mapped(fx)
			w := tc.send(t, fx)
			a := b.mustAccess(fx.user, "")
			got := want{State: a.State, Access: a.Access, Until: a.Until, Action: a.Action, ActionURL: a.ActionURL, Plan: a.Plan}
			if diff := cmp.Diff(w, got); diff != "" {
				t.Fatalf("decision (-want +got):\n%s\nbody reason: %s", diff, a.Reason)
			}
			if a.UserID != fx.user || a.Subscription == nil || *a.Subscription != fx.subscription || a.Reason == "" || a.Features == nil {
				t.Fatalf("answer %+v: want the user, the subscription, a reason and a feature list", a)
			}
		})
	}
}

// The JSON is the contract's: every key present, nulls where nothing is
// known; unknown and never-mapped users are state none, not 404.
func TestAccessUnknownUserAndShape(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, user := range []string{"never-seen", "user with spaces", "ünïcødé", strings.Repeat("x", 255)} {
		r, a := b.access(user, "?feature=sso")
		if r.code != http.StatusOK {
			t.Fatalf("%q: %d %s, want 200", user, r.code, r.body)
		}
		var raw map[string]any
		if err := json.Unmarshal([]byte(r.body), &raw); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"user_id", "access", "state", "until", "subscription", "plan", "features", "feature", "action", "action_url", "reason"} {
			if _, ok := raw[k]; !ok {
				t.Fatalf("%q: key %s missing: %s", user, k, r.body)
			}
		}
		if a.UserID != user || a.Access || a.State != "none" || a.Until != nil || a.Subscription != nil || a.Plan != nil ||
			len(a.Features) != 0 || a.Action != "subscribe" || a.ActionURL != nil || a.Feature == nil || a.Feature.Granted {
			t.Fatalf("%q: %s, want state none", user, r.body)
		}
	}
	// Mapped, but no subscription yet.
	fx := b.paidCheckout(uniqueUser("nosub"), time.Now().Add(-time.Hour).Truncate(time.Second))
	b.mapped(fx)
	if a := b.mustAccess(fx.user, ""); a.State != "none" || a.Access || a.Action != "subscribe" || a.Feature != nil {
		t.Fatalf("mapped without a subscription: %+v", a)
	}
}

// Malformed ids and feature keys get 400 with a reason, a missing or wrong
// token 401; none of them touches the database's rows.
func TestAccessRefusals(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tc := range []struct{ path, why string }{
		{"/api/users/" + strings.Repeat("x", 256) + "/access", "user_id"},
		{"/api/users/a%01b/access", "user_id"},
		{"/api/users/a%7Fb/access", "user_id"},
		{"/api/users/u1/access?feature=", "empty"},
		{"/api/users/u1/access?feature=a%00b", "control"},
		{"/api/users/u1/access?feature=" + strings.Repeat("k", 256), "at most"},
		{"/api/users/u1/access?feature=a&feature=b", "once"},
	} {
		r := b.api(http.MethodGet, tc.path, appToken, nil)
		if r.code != http.StatusBadRequest || !strings.Contains(r.json(t)["error"].(string), tc.why) {
			t.Errorf("%.60s: %d %s, want 400 saying %q", tc.path, r.code, r.body, tc.why)
		}
	}
	for _, token := range []string{"", "wrong-token-0123456789", adminToken} {
		if r := b.api(http.MethodGet, "/api/users/u1/access", token, nil); r.code != http.StatusUnauthorized {
			t.Errorf("token %q: %d, want 401", token, r.code)
		}
	}
	if n := b.count(`SELECT count(*) FROM stripe_customers`); n != 0 {
		t.Fatalf("%d customers written by reads", n)
	}
}

// A deleted customer has no access, whatever its subscriptions said.
func TestAccessDeletedCustomer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("deleted"), t0)
	b.mapped(fx)
	b.putEntitlements(fx.customer, "sso")
	must200(t, "created", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", t0.Add(time.Second))))
	if a := b.mustAccess(fx.user, "?feature=sso"); !a.Access || !a.Feature.Granted {
		t.Fatalf("before the deletion: %+v", a)
	}
	obj := stripefake.CustomerJSON(stripefake.Customer{ID: fx.customer, Created: t0})
	must200(t, "customer.deleted", b.postWebhook(event(stripefake.NewID("evt_"), "customer.deleted", t0.Add(2*time.Second), obj)))
	a := b.mustAccess(fx.user, "?feature=sso")
	if a.Access || a.State != "none" || a.Action != "subscribe" || a.Subscription != nil || len(a.Features) != 0 || a.Feature.Granted ||
		!strings.Contains(a.Reason, "deleted") {
		t.Fatalf("after customer.deleted: %+v", a)
	}
}

// Two subscriptions: the one granting access with the latest until
// decides; when neither grants, the most recent; features follow access.
func TestAccessTwoSubscriptions(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.putCatalog()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("two"), t0)
	b.mapped(fx)
	b.putEntitlements(fx.customer, "export", "sso")
	second := fx
	second.subscription = stripefake.NewID("sub_")
	short := fx.subObj("active")
	short.CurrentPeriodEnd = t0.Add(10 * 24 * time.Hour)
	long := second.subObj("active")
	long.CancelAtPeriodEnd = true
	long.CurrentPeriodEnd = t0.Add(25 * 24 * time.Hour)
	must200(t, "first", b.postWebhook(subscriptionEvent(short, "customer.subscription.created", t0.Add(time.Second), nil)))
	must200(t, "second", b.postWebhook(subscriptionEvent(long, "customer.subscription.created", t0.Add(time.Second), nil)))

	a := b.mustAccess(fx.user, "?feature=sso")
	if a.State != "grace" || !a.Access || *a.Subscription != second.subscription || !a.Until.Equal(long.CurrentPeriodEnd) ||
		!a.Feature.Granted || !cmp.Equal(a.Features, []string{"export", "sso"}) {
		t.Fatalf("two granting: %+v, want %s (grace, the later until)", a, second.subscription)
	}
	// The later one ends; the other still grants.
	canceled := long
	canceled.Status = "canceled"
	must200(t, "deleted", b.postWebhook(subscriptionEvent(canceled, "customer.subscription.deleted", t0.Add(2*time.Second), nil)))
	a = b.mustAccess(fx.user, "?feature=sso")
	if a.State != "active" || *a.Subscription != fx.subscription || !a.Until.Equal(short.CurrentPeriodEnd) || !a.Feature.Granted {
		t.Fatalf("one granting: %+v, want %s active", a, fx.subscription)
	}
	// Neither grants: the more recent (the later period) decides.
	pastDue := short
	pastDue.Status = "past_due"
	must200(t, "past_due", b.postWebhook(subscriptionEvent(pastDue, "customer.subscription.updated", t0.Add(3*time.Second), nil)))
	a = b.mustAccess(fx.user, "?feature=sso")
	if a.Access || a.State != "ended" || *a.Subscription != second.subscription || a.Feature.Granted {
		t.Fatalf("none granting: %+v, want %s ended (its period is later)", a, second.subscription)
	}
}

// A past_due subscription keeps access for ACCESS_PAST_DUE_GRACE from the
// start of its period, and loses it on time with no event: the read uses
// the database's clock.
func TestAccessPastDueGraceEndsOnTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const grace = 2 * time.Hour
	b.app.Billing.SetPastDueGrace(grace) // before any request
	b.putCatalog()
	now := time.Now().Truncate(time.Second)
	pastDue := func(prefix string, start time.Time) fixture {
		fx := b.paidCheckout(uniqueUser(prefix), now.Add(-24*time.Hour))
		b.mapped(fx)
		must200(t, "past_due", b.postWebhook(subscriptionEvent(fx.subObj("past_due"), "customer.subscription.updated", fx.created.Add(time.Second),
			func(m map[string]any) { m["current_period_start"] = start.Unix() })))
		b.storedAs("stripe_subscriptions", "stripe_subscription_id", fx.subscription, "current_period_start", start)
		return fx
	}
	within := pastDue("within", now.Add(-time.Hour))
	if a := b.mustAccess(within.user, ""); !a.Access || a.State != "past_due" || !a.Until.Equal(now.Add(grace-time.Hour)) ||
		a.Action != "update_payment_method" {
		t.Fatalf("within the grace: %+v", a)
	}
	over := pastDue("over", now.Add(-3*time.Hour))
	if a := b.mustAccess(over.user, ""); a.Access || a.State != "past_due" || a.Until != nil || a.Action != "update_payment_method" {
		t.Fatalf("after the grace: %+v", a)
	}

	// The grace of this one ends a few seconds from now; no event follows.
	start := time.Now().Add(-grace + 3*time.Second).Truncate(time.Second)
	ending := pastDue("ending", start)
	events := b.count(`SELECT count(*) FROM stripe_events`)
	a := b.mustAccess(ending.user, "")
	if !a.Access || !a.Until.Equal(start.Add(grace)) {
		t.Fatalf("before its grace ends: %+v, want access until %s", a, start.Add(grace))
	}
	deadline := time.Now().Add(30 * time.Second)
	for a.Access {
		if time.Now().After(deadline) {
			t.Fatalf("still %+v 30 s on", a)
		}
		time.Sleep(200 * time.Millisecond)
		a = b.mustAccess(ending.user, "")
	}
	var passed bool
	if err := b.db.Pool.QueryRow(context.Background(), `SELECT now() >= $1`, start.Add(grace)).Scan(&passed); err != nil || !passed {
		t.Fatalf("access ended before start+grace by the database's clock (%v)", err)
	}
	if a.State != "past_due" || a.Until != nil || a.Action != "update_payment_method" || !strings.Contains(a.Reason, "ended") {
		t.Fatalf("after its grace ended: %+v", a)
	}
	if n := b.count(`SELECT count(*) FROM stripe_events`); n != events {
		t.Fatalf("%d events arrived meanwhile; the grace must end without one", n-events)
	}
}

// The success page and the paywall never disagree: the success call's
// "access", read after its write committed, equals the GET answer
// afterwards, however the webhooks race it.
func TestAccessSuccessCallAgreesWithPaywall(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.putCatalog()
	for i := range 15 {
		fx := b.paidCheckout(uniqueUser(fmt.Sprintf("race%d", i)), time.Now().Add(-time.Minute).Truncate(time.Second))
		b.putEntitlements(fx.customer) // none: the customer row does not exist yet
		var success response
		steps := []func(){
			func() { b.postWebhook(sessionCompleted(fx, fx.created)) },
			func() { b.postWebhook(subEvent(fx, "customer.subscription.created", "active", fx.created)) },
			func() { b.postWebhook(subEvent(fx, "customer.subscription.updated", "active", fx.created)) },
			func() { success = b.checkout(fx.session, fx.user) },
		}
		if i%2 == 1 {
			steps[0], steps[3] = steps[3], steps[0]
		}
		concurrently(steps...)
		must200(t, "success", success)
		var body struct {
			Access *billing.Access `json:"access"`
		}
		if err := json.Unmarshal([]byte(success.body), &body); err != nil || body.Access == nil {
			t.Fatalf("success body without access: %v: %s", err, success.body)
		}
		for _, k := range []string{"redirect", "session_id", "subscription"} {
			if success.json(t)[k] == nil {
				t.Fatalf("the success answer lost %s: %s", k, success.body)
			}
		}
		after := b.mustAccess(fx.user, "")
		if diff := cmp.Diff(after, *body.Access); diff != "" {
			t.Fatalf("round %d: success access differs from the paywall (-paywall +success):\n%s", i, diff)
		}
		if !after.Access || after.State != "active" || *after.Subscription != fx.subscription ||
			!after.Until.Equal(fx.created.Add(30*24*time.Hour)) || after.Plan == nil || after.Plan.Name == nil || *after.Plan.Name != "Pro" {
			t.Fatalf("round %d: %+v, want active on Pro until the period end", i, after)
		}
	}
}

// Features: granted only when among the customer's entitlements and access
// is true.
func TestAccessFeature(t *testing.T) {
	t.Parallel()
	b := setup(t)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("feature"), t0)
	b.mapped(fx)
	b.putEntitlements(fx.customer, "sso", "export")
	must200(t, "created", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", t0.Add(time.Second))))
	for key, granted := range map[string]bool{"sso": true, "export": true, "api": false, "SSO": false} {
		a := b.mustAccess(fx.user, "?feature="+url.QueryEscape(key))
		if a.Feature == nil || a.Feature.Key != key || a.Feature.Granted != granted || !cmp.Equal(a.Features, []string{"export", "sso"}) {
			t.Fatalf("feature %s: %+v %+v, want granted=%v", key, a.Feature, a.Features, granted)
		}
	}
	must200(t, "past_due", b.postWebhook(subEvent(fx, "customer.subscription.updated", "past_due", t0.Add(2*time.Second))))
	if a := b.mustAccess(fx.user, "?feature=sso"); a.Access || a.Feature.Granted {
		t.Fatalf("past_due without grace: %+v", a)
	}
}

// `lockstep access` prints the HTTP read's document; a bad user id is one
// line and exit 2.
func TestAccessCommand(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.putCatalog()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("cli"), t0)
	b.mapped(fx)
	b.putEntitlements(fx.customer, "sso")
	must200(t, "created", b.postWebhook(subEvent(fx, "customer.subscription.created", "active", t0.Add(time.Second))))
	ctx := context.Background()
	for _, args := range [][]string{{"access", fx.user, "--feature", "sso"}, {"access", "--feature=sso", fx.user}} {
		out, err := b.command(ctx, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		var cli billing.Access
		if err := json.Unmarshal([]byte(out), &cli); err != nil {
			t.Fatalf("%v printed no JSON: %v: %s", args, err, out)
		}
		if diff := cmp.Diff(b.mustAccess(fx.user, "?feature=sso"), cli); diff != "" {
			t.Fatalf("%v differs from the HTTP read (-http +cli):\n%s", args, diff)
		}
	}
	for _, args := range [][]string{{"access"}, {"access", ""}, {"access", "a\x01b"}, {"access", strings.Repeat("u", 256)},
		{"access", "u1", "u2"}, {"access", "u1", "--feature", ""}, {"access", "u1", "--feature"}, {"access", "u1", "--nope"}} {
		_, err := b.command(ctx, args...)
		if app.ExitCode(err) != 2 || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v (exit %d), want one line and exit 2", args, err, app.ExitCode(err))
		}
	}
	out, err := b.command(ctx, "access", "-h")
	if app.ExitCode(err) != 0 || !strings.Contains(out, "usage: lockstep access USER_ID") {
		t.Fatalf("-h: %v %q", err, out)
	}
}

// Decisions are counted by state; a denied one is logged with its state,
// reason and customer, never the user.
func TestAccessMetricsAndLogs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("logged-person"), t0)
	b.mapped(fx)
	must200(t, "unpaid", b.postWebhook(subEvent(fx, "customer.subscription.updated", "unpaid", t0.Add(time.Second))))
	other := b.paidCheckout(uniqueUser("logged-other"), t0)
	b.mapped(other)
	must200(t, "new status", b.postWebhook(subEvent(other, "customer.subscription.updated", "awaiting_approval", t0.Add(time.Second))))
	b.mustAccess(fx.user, "")
	b.mustAccess(fx.user, "")
	b.mustAccess(other.user, "")
	b.mustAccess("nobody-at-all", "")
	m := scrapeMetrics(t, b)
	for state, want := range map[string]float64{"unpaid": 2, "other": 1, "none": 1, "active": 0} {
		if v, ok := m.get("lockstep_access_decisions_total", map[string]string{"state": state}); !ok || v != want {
			t.Errorf("decisions{state=%s} = %v (%v), want %v", state, v, ok, want)
		}
	}
	var denied []string
	for _, l := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(l, `"access denied"`) && strings.Contains(l, fx.customer) {
			denied = append(denied, l)
		}
	}
	if len(denied) != 2 || !strings.Contains(denied[0], `"state":"unpaid"`) || !strings.Contains(denied[0], `"reason":"Subscription `) {
		t.Fatalf("denied decisions logged: %q", denied)
	}
	for _, l := range strings.Split(b.logs.String(), "\n") {
		if strings.Contains(l, "logged-person") && strings.Contains(l, "access") {
			t.Fatalf("a log line about access names the user: %s", l)
		}
	}
}
