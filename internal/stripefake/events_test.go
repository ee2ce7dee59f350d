package stripefake

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/webhook"
)

// Emit returns the bytes a webhook would carry; they verify signed, and the
// Events API serves the very same event.
func TestEmit(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.SetClockOffset(time.Hour)
	sub := Subscription{ID: "sub_E", Customer: "cus_E", Status: "past_due", Created: t0}
	id, payload := s.Emit("customer.subscription.updated", SubscriptionJSON(sub, DefaultAPIVersion))

	const secret = "whsec_emit"
	ev, err := webhook.ConstructEvent(payload, SignatureHeader(payload, secret, time.Now()), secret)
	if err != nil {
		t.Fatalf("ConstructEvent: %v", err)
	}
	now := s.Now().Unix()
	if ev.ID != id || ev.Type != "customer.subscription.updated" || ev.APIVersion != DefaultAPIVersion ||
		ev.Created < now-2 || ev.Created > now || ev.Livemode || ev.Data.Object["status"] != "past_due" {
		t.Errorf("event = %+v, want %s created about %d on Stripe's clock", ev, id, now)
	}

	res := get(t, s, "/v1/events/"+id)
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if res.StatusCode != 200 || !bytes.Equal(bytes.TrimSuffix(body, []byte("\n")), payload) {
		t.Errorf("GET /v1/events/%s: %d\n%s\nwant the payload\n%s", id, res.StatusCode, body, payload)
	}
	got, err := newClient(s).Events.Get(id, nil)
	if err != nil || got.ID != id || got.Data.Object["id"] != "sub_E" {
		t.Errorf("stripe-go Events.Get = %+v, %v", got, err)
	}

	// The returned payload is the caller's: changing it changes nothing served.
	payload[0] = 'x'
	if m := getJSON(t, s, "/v1/events/"+id, ""); m["id"] != id {
		t.Errorf("served event = %v", m)
	}

	if status, e := getError(t, s, "/v1/events/evt_nope"); status != 404 || e.Msg != "No such event: 'evt_nope'" || e.Code != stripe.ErrorCodeResourceMissing {
		t.Errorf("unknown event: %d %+v", status, e)
	}
}

// The Update helpers store the object and emit its event in one step, in
// the account's API version.
func TestUpdateHelpers(t *testing.T) {
	t.Parallel()
	s := New(t)
	s.SetEventAPIVersion(BasilAPIVersion)
	subID, payload := s.UpdateSubscription(Subscription{ID: "sub_U", Customer: "cus_U", Status: "canceled"}, "customer.subscription.deleted")
	var ev stripe.Event
	if err := json.Unmarshal(payload, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.APIVersion != BasilAPIVersion || ev.Data.Object["status"] != "canceled" {
		t.Errorf("event = %+v", ev)
	}
	if _, ok := ev.Data.Object["current_period_end"]; ok {
		t.Errorf("basil event carries a top-level current_period_end")
	}
	stored, err := newClient(s).Subscriptions.Get("sub_U", nil)
	if err != nil || stored.Status != "canceled" || stored.Created != int64(ev.Data.Object["created"].(float64)) {
		t.Errorf("stored subscription = %+v, %v", stored, err)
	}

	cusID, _ := s.UpdateCustomer(Customer{ID: "cus_U", Email: "u@example.com"}, "customer.created")
	invID, _ := s.UpdateInvoice(Invoice{ID: "in_U", Customer: "cus_U", Subscription: "sub_U", Status: "paid"}, "invoice.paid")
	if _, err := newClient(s).Invoices.Get("in_U", nil); err != nil {
		t.Errorf("stored invoice: %v", err)
	}
	ids, _ := listIDs(t, s, "/v1/events", "")
	// Same second: the later emitted first.
	if diff := cmp.Diff([]string{invID, cusID, subID}, ids); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestEventFilters(t *testing.T) {
	t.Parallel()
	s := New(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	emit := func(typ string, sec int) string {
		t.Helper()
		id, _ := s.EmitAt(typ, map[string]any{"object": "thing"}, base.Add(time.Duration(sec)*time.Second))
		return id
	}
	created := emit("customer.subscription.created", 0)
	paid := emit("invoice.paid", 1)
	updated := emit("customer.subscription.updated", 2)
	failed := emit("invoice.payment_failed", 2)
	deleted := emit("customer.subscription.deleted", 3)

	at := func(sec int) int64 { return base.Unix() + int64(sec) }
	for _, tc := range []struct {
		name   string
		params *stripe.EventListParams
		want   []string
	}{
		{"all", &stripe.EventListParams{}, []string{deleted, failed, updated, paid, created}},
		{"created gte", &stripe.EventListParams{CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: at(2)}}, []string{deleted, failed, updated}},
		{"types", &stripe.EventListParams{Types: stripe.StringSlice([]string{"invoice.paid", "customer.subscription.deleted"})}, []string{deleted, paid}},
		{"types and created", &stripe.EventListParams{
			Types:        stripe.StringSlice([]string{"invoice.paid", "invoice.payment_failed"}),
			CreatedRange: &stripe.RangeQueryParams{GreaterThanOrEqual: at(2)},
		}, []string{failed}},
		{"types matching none", &stripe.EventListParams{Types: stripe.StringSlice([]string{"charge.succeeded"})}, []string{}},
	} {
		tc.params.Limit = stripe.Int64(2) // and page while at it
		if diff := cmp.Diff(tc.want, drain(t, newClient(s).Events.List(tc.params))); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}

	// types[] in its other spelling.
	ids, _ := listIDs(t, s, "/v1/events?types[]=invoice.paid&types[]=invoice.payment_failed", "")
	if diff := cmp.Diff([]string{failed, paid}, ids); diff != "" {
		t.Errorf("types[] (-want +got):\n%s", diff)
	}
	if status, e := getError(t, s, "/v1/events?types[0]=a&types[1]=b&types[2]=c&types[3]=d&types[4]=e&types[5]=f&types[6]=g&types[7]=h&types[8]=i&types[9]=j&types[10]=k&types[11]=l&types[12]=m&types[13]=n&types[14]=o&types[15]=p&types[16]=q&types[17]=r&types[18]=s&types[19]=t&types[20]=u"); status != 400 || e.Param != "types" {
		t.Errorf("21 types: %d %+v", status, e)
	}
}

// Stripe keeps 30 days of events, by its own clock.
func TestEventRetention(t *testing.T) {
	t.Parallel()
	s := New(t)
	now := s.Now()
	old, _ := s.EmitAt("invoice.paid", map[string]any{}, now.Add(-31*24*time.Hour))
	kept, _ := s.EmitAt("invoice.paid", map[string]any{}, now.Add(-29*24*time.Hour))

	ids, _ := listIDs(t, s, "/v1/events", "")
	if diff := cmp.Diff([]string{kept}, ids); diff != "" {
		t.Errorf("listed (-want +got):\n%s", diff)
	}
	if status, _ := getError(t, s, "/v1/events/"+old); status != http.StatusNotFound {
		t.Errorf("31-day-old event: %d, want 404", status)
	}

	// Move Stripe's clock two days on: the 29-day-old event ages out too;
	// two days back and the old one returns.
	s.SetClockOffset(48 * time.Hour)
	if ids, _ := listIDs(t, s, "/v1/events", ""); len(ids) != 0 {
		t.Errorf("clock +48h: listed %v", ids)
	}
	s.SetClockOffset(-48 * time.Hour)
	ids, _ = listIDs(t, s, "/v1/events", "")
	if diff := cmp.Diff([]string{kept, old}, ids); diff != "" {
		t.Errorf("clock -48h (-want +got):\n%s", diff)
	}
}
