package stripeapi

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseSubscriptionBothShapes(t *testing.T) {
	end := time.Unix(1767225600, 0).UTC()
	for _, tc := range []struct {
		name string
		json string
		want *Subscription
	}{
		{
			name: "2023-10-16: period end on the subscription",
			json: `{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active","cancel_at_period_end":true,
				"current_period_end":1767225600,"created":1700000000,
				"items":{"data":[{"price":{"id":"price_a","object":"price"}}]}}`,
			want: &Subscription{ID: "sub_1", CustomerID: "cus_1", Status: "active", PriceID: "price_a",
				CurrentPeriodEnd: end, CancelAtPeriodEnd: true, Created: time.Unix(1700000000, 0).UTC()},
		},
		{
			name: "2025-03-31: period end on the items, latest wins",
			json: `{"id":"sub_2","object":"subscription","customer":{"id":"cus_2","object":"customer"},"status":"past_due",
				"items":{"data":[{"price":{"id":"price_b"},"current_period_end":1767000000},
				                 {"price":"price_c","current_period_end":1767225600}]}}`,
			want: &Subscription{ID: "sub_2", CustomerID: "cus_2", Status: "past_due", PriceID: "price_b", CurrentPeriodEnd: end},
		},
		{
			name: "no period end anywhere",
			json: `{"id":"sub_3","object":"subscription","customer":"cus_3","status":"incomplete","items":{"data":[]}}`,
			want: &Subscription{ID: "sub_3", CustomerID: "cus_3", Status: "incomplete"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSubscription([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Fatalf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		parse func([]byte) error
		json  string
	}{
		{"subscription without customer", subErr, `{"id":"sub_1","object":"subscription","customer":null,"status":"active"}`},
		{"subscription with a status no enum can be", subErr, `{"id":"sub_1","object":"subscription","customer":"cus_1","status":"Robert'); DROP"}`},
		{"subscription with an empty status", subErr, `{"id":"sub_1","object":"subscription","customer":"cus_1","status":""}`},
		{"subscription with wrong object", subErr, `{"id":"sub_1","object":"invoice","customer":"cus_1","status":"active"}`},
		{"subscription id with quotes", subErr, `{"id":"sub_1'--","object":"subscription","customer":"cus_1","status":"active"}`},
		{"customer id too long", custErr, `{"id":"cus_` + string(make([]byte, 300)) + `","object":"customer"}`},
		{"customer user id with control char", custErr, `{"id":"cus_1","object":"customer","metadata":{"user_id":"a\u0007b"}}`},
		{"session with bad customer", sessErr, `{"id":"cs_1","object":"checkout.session","customer":"bob"}`},
		{"session with number customer", sessErr, `{"id":"cs_1","object":"checkout.session","customer":42}`},
		{"invoice without customer", invErr, `{"id":"in_1","object":"invoice"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.parse([]byte(tc.json)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func subErr(b []byte) error  { _, err := ParseSubscription(b); return err }
func custErr(b []byte) error { _, err := ParseCustomer(b); return err }
func sessErr(b []byte) error { _, err := ParseCheckoutSession(b); return err }
func invErr(b []byte) error  { _, err := ParseInvoice(b); return err }

func TestParseInvoiceBothShapes(t *testing.T) {
	old, err := ParseInvoice([]byte(`{"id":"in_1","object":"invoice","customer":"cus_1","subscription":"sub_1","status":"paid","amount_paid":500,"currency":"eur"}`))
	if err != nil {
		t.Fatal(err)
	}
	basil, err := ParseInvoice([]byte(`{"id":"in_1","object":"invoice","customer":"cus_1","status":"paid","amount_paid":500,"currency":"eur",
		"parent":{"type":"subscription_details","subscription_details":{"subscription":"sub_1"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(old, basil); diff != "" {
		t.Fatalf("the two shapes parse differently (-2023 +2025)\n%s", diff)
	}
	draft, err := ParseInvoice([]byte(`{"id":"in_2","object":"invoice","customer":"cus_1","status":null}`))
	if err != nil || draft.Status != "draft" {
		t.Fatalf("null status: %+v %v, want draft", draft, err)
	}
}

func TestCheckoutSessionClaims(t *testing.T) {
	for _, tc := range []struct {
		json  string
		users []string
		paid  bool
	}{
		{`{"id":"cs_1","object":"checkout.session","client_reference_id":"u1","status":"complete","payment_status":"paid"}`, []string{"u1"}, true},
		{`{"id":"cs_1","object":"checkout.session","metadata":{"user_id":"u2"},"status":"complete","payment_status":"no_payment_required"}`, []string{"u2"}, true},
		{`{"id":"cs_1","object":"checkout.session","client_reference_id":"u1","metadata":{"user_id":"u1"},"status":"complete","payment_status":"unpaid"}`, []string{"u1"}, false},
		{`{"id":"cs_1","object":"checkout.session","client_reference_id":"u1","metadata":{"user_id":"u2"},"status":"open","payment_status":"paid"}`, []string{"u1", "u2"}, false},
		{`{"id":"cs_1","object":"checkout.session","client_reference_id":null,"status":"expired"}`, nil, false},
	} {
		s, err := ParseCheckoutSession([]byte(tc.json))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.users, s.ClaimedUsers()); diff != "" || s.Paid() != tc.paid {
			t.Errorf("%s: users diff %s paid %v want %v", tc.json, diff, s.Paid(), tc.paid)
		}
	}
}

func TestParseEventRejectsWhatPostgresCannotStore(t *testing.T) {
	ok := `{"id":"evt_1","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_1","object":"customer"}}}`
	if _, err := ParseEvent([]byte(ok)); err != nil {
		t.Fatalf("valid event: %v", err)
	}
	for name, body := range map[string]string{
		"NUL escape":          `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":"\u0000"}}}`,
		"raw NUL":             "{\"id\":\"evt_1\",\"object\":\"event\",\"type\":\"x\",\"created\":1,\"data\":{\"object\":{\"a\":\"\x00\"}}}",
		"invalid UTF-8":       "{\"id\":\"evt_1\",\"object\":\"event\",\"type\":\"x\",\"created\":1,\"data\":{\"object\":{\"a\":\"\xff\"}}}",
		"far future":          `{"id":"evt_1","object":"event","type":"x","created":99999999999,"data":{"object":{}}}`,
		"data not object":     `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":[]}}`,
		"type with spaces":    `{"id":"evt_1","object":"event","type":"a b","created":1,"data":{"object":{}}}`,
		"not an event":        `{"id":"evt_1","object":"charge","type":"x","created":1,"data":{"object":{}}}`,
		"id without prefix":   `{"id":"1","object":"event","type":"x","created":1,"data":{"object":{}}}`,
		"lone high surrogate": `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":"\ud800"}}}`,
		"lone low surrogate":  `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":"x\udc00"}}}`,
		"huge exponent":       `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":1e1000000}}}`,
		"tiny exponent":       `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":-1E-99999}}}`,
		"long number":         `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":` + strings.Repeat("9", 100) + `}}}`,
		"high then non-low":   `{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":"\ud800\u0041"}}}`,
	} {
		if _, err := ParseEvent([]byte(body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
	// Numbers Stripe sends, and digits inside strings, are fine.
	if _, err := ParseEvent([]byte(`{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":-12.5e3,"b":"1e999999","c":[0,1e2]}}}`)); err != nil {
		t.Fatalf("ordinary numbers: %v", err)
	}
	// A surrogate pair is a valid character (an emoji).
	if _, err := ParseEvent([]byte(`{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":"\ud83d\ude00 \\ud800"}}}`)); err != nil {
		t.Fatalf("surrogate pair: %v", err)
	}
	// An escaped backslash before u0000 is text, not a NUL.
	if _, err := ParseEvent([]byte(`{"id":"evt_1","object":"event","type":"x","created":1,"data":{"object":{"a":"\\u0000"}}}`)); err != nil {
		t.Fatalf("escaped backslash: %v", err)
	}
}

// FuzzParse feeds any bytes to every parser of outside input: none may
// panic, and an event ParseEvent accepts is storable (valid UTF-8, no NUL).
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"id":"evt_1","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_1","object":"customer"}}}`))
	f.Add([]byte(`{"id":"sub_1","object":"subscription","customer":{"id":"cus_1"},"status":"active","items":{"data":[{"price":"p","current_period_end":5}]}}`))
	f.Add([]byte(`{"id":"cs_1","object":"checkout.session","subscription":{"id":"sub_1","object":"subscription","customer":"cus_1","status":"active"}}`))
	f.Add([]byte(`{"id":"in_1","object":"invoice","customer":"cus_1","parent":{"subscription_details":{"subscription":"sub_1"}}}`))
	f.Add([]byte(`{"id":"price_1","object":"price","product":"prod_1","lookup_key":"pro","recurring":{"interval":"month","interval_count":1}}`))
	f.Add([]byte(`{"object":"entitlements.active_entitlement_summary","customer":"cus_1","entitlements":{"data":[{"id":"ent_1","object":"entitlements.active_entitlement","feature":"feat_1","lookup_key":"sso"}],"has_more":true}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ev, err := ParseEvent(b); err == nil {
			if unstorable(ev.Payload) != "" || !ValidID(ev.ID, "evt_") {
				t.Fatalf("accepted an unstorable event: %q", b)
			}
		}
		_, _ = ParseSubscription(b)
		_, _ = ParseCheckoutSession(b)
		_, _ = ParseCustomer(b)
		_, _ = ParseInvoice(b)
		_, _ = ParseProduct(b)
		_, _ = ParsePrice(b)
		_, _ = ParseEntitlement(b)
		_, _ = ParseEntitlementSummary(b)
	})
}
