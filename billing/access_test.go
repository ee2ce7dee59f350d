package billing

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The contract's state table, row by row, and its edges: what Decide
// answers for one customer's stored subscriptions at the database's now.
func TestDecide(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	str := func(s string) *string { return &s }
	day := 24 * time.Hour
	const cus, url = "cus_1", "https://invoice.stripe.com/i/acct_1/inv_1"
	// sub is a subscription of cus_1 in its 30-day period, started 10 days
	// ago, on a known price and product.
	sub := func(id, status string, edit ...func(*AccessSubscription)) AccessSubscription {
		s := AccessSubscription{ID: id, Status: status, CurrentPeriodStart: at(-10 * day), CurrentPeriodEnd: at(20 * day),
			StoredAt: now.Add(-10 * day), PriceID: "price_pro", PriceKnown: true, LookupKey: str("pro_monthly"),
			Interval: str("month"), ProductID: str("prod_pro"), ProductName: str("Pro")}
		for _, e := range edit {
			e(&s)
		}
		return s
	}
	cancel := func(s *AccessSubscription) { s.CancelAtPeriodEnd = true }
	endsIn := func(d time.Duration) func(*AccessSubscription) {
		return func(s *AccessSubscription) { s.CurrentPeriodEnd = at(d) }
	}
	startedAgo := func(d time.Duration) func(*AccessSubscription) {
		return func(s *AccessSubscription) { s.CurrentPeriodStart = at(-d) }
	}
	openInvoice := func(s *AccessSubscription) { s.OpenInvoiceURL = url }
	latestInvoice := func(status string) func(*AccessSubscription) {
		return func(s *AccessSubscription) { s.LatestInvoiceStatus, s.LatestInvoiceURL = status, url }
	}
	pro := &Plan{Product: str("prod_pro"), Name: str("Pro"), Price: "price_pro", LookupKey: str("pro_monthly"), Interval: str("month")}

	// want is the part of the answer each row checks; the reason is
	// checked apart (non-empty, naming no more than ids).
	type want struct {
		State        string
		Access       bool
		Until        *time.Time
		Subscription *string
		Plan         *Plan
		Action       string
		ActionURL    *string
	}
	none := want{State: "none", Action: "subscribe"}
	for _, tc := range []struct {
		name     string
		customer string
		deleted  bool
		grace    time.Duration
		subs     []AccessSubscription
		want     want
	}{
		{name: "no customer", want: none},
		{name: "customer deleted", customer: cus, deleted: true,
			subs: []AccessSubscription{sub("sub_1", "active")}, want: none},
		{name: "no subscription", customer: cus, want: none},
		{name: "active", customer: cus, subs: []AccessSubscription{sub("sub_1", "active")},
			want: want{State: "active", Access: true, Until: at(20 * day), Subscription: str("sub_1"), Plan: pro, Action: "none"}},
		{name: "active, period end exactly now, not cancelling: Stripe renews it", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "active", endsIn(0))},
			want: want{State: "active", Access: true, Until: at(0), Subscription: str("sub_1"), Plan: pro, Action: "none"}},
		{name: "active, set to cancel, period end ahead", customer: cus, subs: []AccessSubscription{sub("sub_1", "active", cancel)},
			want: want{State: "grace", Access: true, Until: at(20 * day), Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "active, set to cancel, period end a second ahead", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "active", cancel, endsIn(time.Second))},
			want: want{State: "grace", Access: true, Until: at(time.Second), Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "active, set to cancel, period end exactly now", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "active", cancel, endsIn(0))},
			want: want{State: "ended", Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "active, set to cancel, period end passed (no deletion event yet)", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "active", cancel, endsIn(-time.Hour))},
			want: want{State: "ended", Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "trialing", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "trialing", func(s *AccessSubscription) { s.TrialEnd = at(4 * day) })},
			want: want{State: "trialing", Access: true, Until: at(4 * day), Subscription: str("sub_1"), Plan: pro, Action: "none"}},
		{name: "trial ending now", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "trialing", func(s *AccessSubscription) { s.TrialEnd = at(0) })},
			want: want{State: "trialing", Access: true, Until: at(0), Subscription: str("sub_1"), Plan: pro, Action: "none"}},
		{name: "trialing, trial end not stored: its period end", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "trialing")},
			want: want{State: "trialing", Access: true, Until: at(20 * day), Subscription: str("sub_1"), Plan: pro, Action: "none"}},
		{name: "trialing, set to cancel, trial over", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "trialing", cancel, endsIn(-time.Minute), func(s *AccessSubscription) { s.TrialEnd = at(-time.Minute) })},
			want: want{State: "ended", Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "past_due, grace 0", customer: cus, subs: []AccessSubscription{sub("sub_1", "past_due", startedAgo(time.Hour), openInvoice)},
			want: want{State: "past_due", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method", ActionURL: str(url)}},
		{name: "past_due within grace", customer: cus, grace: 72 * time.Hour,
			subs: []AccessSubscription{sub("sub_1", "past_due", startedAgo(time.Hour), openInvoice)},
			want: want{State: "past_due", Access: true, Until: at(71 * time.Hour), Subscription: str("sub_1"), Plan: pro,
				Action: "update_payment_method", ActionURL: str(url)}},
		{name: "past_due, a second before the grace ends", customer: cus, grace: 72 * time.Hour,
			subs: []AccessSubscription{sub("sub_1", "past_due", startedAgo(72*time.Hour-time.Second), openInvoice)},
			want: want{State: "past_due", Access: true, Until: at(time.Second), Subscription: str("sub_1"), Plan: pro,
				Action: "update_payment_method", ActionURL: str(url)}},
		{name: "past_due, exactly at start+grace", customer: cus, grace: 72 * time.Hour,
			subs: []AccessSubscription{sub("sub_1", "past_due", startedAgo(72*time.Hour), openInvoice)},
			want: want{State: "past_due", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method", ActionURL: str(url)}},
		{name: "past_due, period start unknown: no grace", customer: cus, grace: 72 * time.Hour,
			subs: []AccessSubscription{sub("sub_1", "past_due", func(s *AccessSubscription) { s.CurrentPeriodStart = nil })},
			want: want{State: "past_due", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method"}},
		{name: "past_due, only the latest invoice's url known", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "past_due", latestInvoice("open"))},
			want: want{State: "past_due", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method", ActionURL: str(url)}},
		{name: "past_due, latest invoice paid: no link", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "past_due", latestInvoice("paid"))},
			want: want{State: "past_due", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method"}},
		{name: "incomplete", customer: cus, subs: []AccessSubscription{sub("sub_1", "incomplete", latestInvoice("open"))},
			want: want{State: "incomplete", Subscription: str("sub_1"), Plan: pro, Action: "confirm_payment", ActionURL: str(url)}},
		{name: "incomplete, invoice not stored yet", customer: cus, subs: []AccessSubscription{sub("sub_1", "incomplete")},
			want: want{State: "incomplete", Subscription: str("sub_1"), Plan: pro, Action: "confirm_payment"}},
		{name: "unpaid", customer: cus, subs: []AccessSubscription{sub("sub_1", "unpaid", openInvoice)},
			want: want{State: "unpaid", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method", ActionURL: str(url)}},
		{name: "unpaid, no invoice known", customer: cus, subs: []AccessSubscription{sub("sub_1", "unpaid")},
			want: want{State: "unpaid", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method"}},
		{name: "paused", customer: cus, subs: []AccessSubscription{sub("sub_1", "paused", openInvoice)},
			want: want{State: "paused", Subscription: str("sub_1"), Plan: pro, Action: "update_payment_method"}},
		{name: "canceled", customer: cus, subs: []AccessSubscription{sub("sub_1", "canceled")},
			want: want{State: "ended", Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "canceled, period end still ahead", customer: cus, subs: []AccessSubscription{sub("sub_1", "canceled", cancel)},
			want: want{State: "ended", Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "incomplete_expired", customer: cus, subs: []AccessSubscription{sub("sub_1", "incomplete_expired")},
			want: want{State: "ended", Subscription: str("sub_1"), Plan: pro, Action: "resubscribe"}},
		{name: "a status Stripe adds later", customer: cus, grace: 72 * time.Hour,
			subs: []AccessSubscription{sub("sub_1", "awaiting_approval", openInvoice)},
			want: want{State: "awaiting_approval", Subscription: str("sub_1"), Plan: pro, Action: "none"}},
		{name: "price not stored yet: the plan with what is known", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "active", func(s *AccessSubscription) {
				s.PriceKnown, s.LookupKey, s.Interval, s.ProductID, s.ProductName = false, nil, nil, nil, nil
			})},
			want: want{State: "active", Access: true, Until: at(20 * day), Subscription: str("sub_1"), Plan: &Plan{Price: "price_pro"}, Action: "none"}},
		{name: "price stored, its product not yet", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "active", func(s *AccessSubscription) { s.ProductName = nil })},
			want: want{State: "active", Access: true, Until: at(20 * day), Subscription: str("sub_1"),
				Plan: &Plan{Product: str("prod_pro"), Price: "price_pro", LookupKey: str("pro_monthly"), Interval: str("month")}, Action: "none"}},
		{name: "no price on the subscription: no plan", customer: cus,
			subs: []AccessSubscription{sub("sub_1", "active", func(s *AccessSubscription) {
				s.PriceID, s.PriceKnown, s.LookupKey, s.Interval, s.ProductID, s.ProductName = "", false, nil, nil, nil, nil
			})},
			want: want{State: "active", Access: true, Until: at(20 * day), Subscription: str("sub_1"), Action: "none"}},

		// Several subscriptions.
		{name: "two granting: the latest until decides", customer: cus, subs: []AccessSubscription{
			sub("sub_a", "active", endsIn(5*day)),
			sub("sub_b", "active", cancel, endsIn(25*day)),
		}, want: want{State: "grace", Access: true, Until: at(25 * day), Subscription: str("sub_b"), Plan: pro, Action: "resubscribe"}},
		{name: "two granting, either order", customer: cus, subs: []AccessSubscription{
			sub("sub_b", "active", cancel, endsIn(25*day)),
			sub("sub_a", "active", endsIn(5*day)),
		}, want: want{State: "grace", Access: true, Until: at(25 * day), Subscription: str("sub_b"), Plan: pro, Action: "resubscribe"}},
		{name: "a granting one beats a more recent denied one", customer: cus, subs: []AccessSubscription{
			sub("sub_old", "active", startedAgo(20*day), endsIn(10*day)),
			sub("sub_new", "incomplete", startedAgo(time.Minute), endsIn(30*day)),
		}, want: want{State: "active", Access: true, Until: at(10 * day), Subscription: str("sub_old"), Plan: pro, Action: "none"}},
		{name: "none granting: the most recent decides", customer: cus, subs: []AccessSubscription{
			sub("sub_old", "canceled", startedAgo(60*day), endsIn(-30*day)),
			sub("sub_new", "incomplete", startedAgo(time.Minute), endsIn(30*day), latestInvoice("open")),
		}, want: want{State: "incomplete", Subscription: str("sub_new"), Plan: pro, Action: "confirm_payment", ActionURL: str(url)}},
		{name: "none granting, periods unknown: the one stored last decides", customer: cus, subs: []AccessSubscription{
			sub("sub_2", "past_due", func(s *AccessSubscription) {
				s.CurrentPeriodStart, s.CurrentPeriodEnd, s.StoredAt = nil, nil, now.Add(-day)
			}),
			sub("sub_1", "canceled", func(s *AccessSubscription) {
				s.CurrentPeriodStart, s.CurrentPeriodEnd, s.StoredAt = nil, nil, now.Add(-2*day)
			}),
		}, want: want{State: "past_due", Subscription: str("sub_2"), Plan: pro, Action: "update_payment_method"}},
		{name: "past_due in grace and an active one ending later", customer: cus, grace: 72 * time.Hour, subs: []AccessSubscription{
			sub("sub_pd", "past_due", startedAgo(time.Hour)),
			sub("sub_ok", "active", endsIn(2*day)),
		}, want: want{State: "past_due", Access: true, Until: at(71 * time.Hour), Subscription: str("sub_pd"), Plan: pro, Action: "update_payment_method"}},
		{name: "past_due out of grace and an active one", customer: cus, grace: 0, subs: []AccessSubscription{
			sub("sub_pd", "past_due", startedAgo(time.Hour)),
			sub("sub_ok", "active", endsIn(2*day)),
		}, want: want{State: "active", Access: true, Until: at(2 * day), Subscription: str("sub_ok"), Plan: pro, Action: "none"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := Decide(AccessInputs{UserID: "user_1", Now: now, PastDueGrace: tc.grace, CustomerID: tc.customer,
				CustomerDeleted: tc.deleted, Subscriptions: tc.subs})
			got := want{State: a.State, Access: a.Access, Until: a.Until, Subscription: a.Subscription, Plan: a.Plan,
				Action: a.Action, ActionURL: a.ActionURL}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("decision (-want +got):\n%s\nreason: %s", diff, a.Reason)
			}
			if a.UserID != "user_1" || a.Features == nil {
				t.Fatalf("user %q features %v", a.UserID, a.Features)
			}
			if a.Reason == "" || strings.Contains(a.Reason, "\n") || strings.Contains(a.Reason, "user_1") {
				t.Fatalf("reason %q: want one sentence without the user id", a.Reason)
			}
			if a.Until != nil && a.Until.Location() != time.UTC {
				t.Fatalf("until %v is not UTC", a.Until)
			}
		})
	}
}

// features are the customer's entitlements; a feature is granted only when
// it is among them and access is true.
func TestDecideFeatures(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	end := now.Add(time.Hour)
	active := []AccessSubscription{{ID: "sub_1", Status: "active", CurrentPeriodEnd: &end, PriceID: "price_1"}}
	ended := []AccessSubscription{{ID: "sub_1", Status: "canceled", CurrentPeriodEnd: &end, PriceID: "price_1"}}
	feats := []string{"sso", "export", "sso"}
	for _, tc := range []struct {
		name     string
		subs     []AccessSubscription
		deleted  bool
		feature  string
		features []string
		check    *FeatureCheck
	}{
		{name: "active, no feature asked", subs: active, features: []string{"export", "sso"}},
		{name: "active, has it", subs: active, feature: "sso", features: []string{"export", "sso"}, check: &FeatureCheck{Key: "sso", Granted: true}},
		{name: "active, lacks it", subs: active, feature: "api", features: []string{"export", "sso"}, check: &FeatureCheck{Key: "api"}},
		{name: "ended: listed but not granted", subs: ended, feature: "sso", features: []string{"export", "sso"}, check: &FeatureCheck{Key: "sso"}},
		{name: "deleted customer: none", subs: active, deleted: true, feature: "sso", features: []string{}, check: &FeatureCheck{Key: "sso"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a := Decide(AccessInputs{UserID: "u", Now: now, CustomerID: "cus_1", CustomerDeleted: tc.deleted,
				Subscriptions: tc.subs, Features: append([]string(nil), feats...), Feature: tc.feature})
			if diff := cmp.Diff(tc.features, a.Features, cmpopts.EquateEmpty()); diff != "" || a.Features == nil {
				t.Fatalf("features (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.check, a.Feature); diff != "" {
				t.Fatalf("feature (-want +got):\n%s", diff)
			}
		})
	}
}

// An unknown user's answer is complete JSON: none, an empty feature list,
// nulls for the rest.
func TestDecideNoneJSONShape(t *testing.T) {
	t.Parallel()
	a := Decide(AccessInputs{UserID: "u_1", Now: time.Now()})
	b, err := jsonMarshal(a)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"user_id":"u_1","access":false,"state":"none","until":null,"subscription":null,"plan":null,"features":[],"action":"subscribe","action_url":null,"reason":"No Stripe customer is linked to this user."}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

func TestCheckFeatureKey(t *testing.T) {
	t.Parallel()
	for key, ok := range map[string]bool{"sso": true, "api-access.v2": true, "ünïcode": true, strings.Repeat("k", 255): true,
		"": false, strings.Repeat("k", 256): false, "a\x00b": false, "tab\there": false, "\xff": false} {
		err := CheckFeatureKey(key)
		if (err == nil) != ok || (err != nil && !errors.Is(err, ErrInvalidFeature)) {
			t.Errorf("CheckFeatureKey(%q) = %v, want ok=%v", key, err, ok)
		}
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// BenchmarkDecide is the decision's own cost, apart from its one statement:
// two subscriptions, a known plan, two features and a feature asked about.
func BenchmarkDecide(b *testing.B) {
	now := time.Now()
	start, end := now.Add(-240*time.Hour), now.Add(480*time.Hour)
	name, key, interval, product := "Pro", "pro_monthly", "month", "prod_pro"
	in := AccessInputs{UserID: "user_1", Now: now, CustomerID: "cus_1", Features: []string{"sso", "export"}, Feature: "sso",
		Subscriptions: []AccessSubscription{
			{ID: "sub_1", Status: "canceled", CurrentPeriodStart: &start, CurrentPeriodEnd: &start, PriceID: "price_pro"},
			{ID: "sub_2", Status: "active", CurrentPeriodStart: &start, CurrentPeriodEnd: &end, PriceID: "price_pro", PriceKnown: true,
				LookupKey: &key, Interval: &interval, ProductID: &product, ProductName: &name},
		}}
	b.ReportAllocs()
	for b.Loop() {
		if a := Decide(in); !a.Access {
			b.Fatal("no access")
		}
	}
}
