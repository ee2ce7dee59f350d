package stripefake

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// postFake POSTs form to one of the fake's own endpoints with key.
func postFake(t *testing.T, s *Server, path, key string, form url.Values) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(key, "")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = res.Body.Close() }()
	body, _ := io.ReadAll(res.Body)
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("POST %s: %d %s: not JSON", path, res.StatusCode, body)
	}
	return res.StatusCode, m
}

// A paid checkout made through the fake's own endpoint reads back as a
// finished Stripe Checkout, and its two events are in the Events API.
func TestFakeCheckoutPaid(t *testing.T) {
	t.Parallel()
	s := New(t)
	code, m := postFake(t, s, "/_fake/checkout/sessions", "sk_test_x", url.Values{"user_id": {"user_1"}})
	if code != http.StatusOK || m["paid"] != true || m["user_id"] != "user_1" {
		t.Fatalf("create: %d %v", code, m)
	}
	sessID, cus, sub := m["session_id"].(string), m["customer"].(string), m["subscription"].(string)
	sess := getJSON(t, s, "/v1/checkout/sessions/"+sessID+"?expand[]=subscription", "")
	if sess["status"] != "complete" || sess["payment_status"] != "paid" || sess["client_reference_id"] != "user_1" || sess["customer"] != cus {
		t.Errorf("session = %v", sess)
	}
	if got := sess["subscription"].(map[string]any); got["id"] != sub || got["status"] != "active" {
		t.Errorf("session's subscription = %v", got)
	}
	if c := getJSON(t, s, "/v1/customers/"+cus, ""); c["id"] != cus {
		t.Errorf("customer = %v", c)
	}
	events := getJSON(t, s, "/v1/events", "")["data"].([]any)
	var types []string
	for _, e := range events {
		ev := e.(map[string]any)
		types = append(types, ev["type"].(string))
		obj := ev["data"].(map[string]any)["object"].(map[string]any)
		if id := obj["id"]; id != sessID && id != sub {
			t.Errorf("event %v is about %v", ev["id"], id)
		}
	}
	ids := m["events"].([]any)
	if len(events) != 2 || len(ids) != 2 || !strings.Contains(strings.Join(types, " "), "checkout.session.completed") ||
		!strings.Contains(strings.Join(types, " "), "customer.subscription.created") {
		t.Errorf("events %v (answer named %v), want checkout.session.completed and customer.subscription.created", types, ids)
	}
}

// paid=false leaves a complete session whose payment is still processing,
// an incomplete subscription whose latest invoice is open, and the events
// of that.
func TestFakeCheckoutUnpaid(t *testing.T) {
	t.Parallel()
	s := New(t)
	code, m := postFake(t, s, "/_fake/checkout/sessions", "sk_test_x", url.Values{"user_id": {"user_2"}, "paid": {"false"}})
	if code != http.StatusOK || m["paid"] != false {
		t.Fatalf("create: %d %v", code, m)
	}
	sess := getJSON(t, s, "/v1/checkout/sessions/"+m["session_id"].(string), "")
	if sess["status"] != "complete" || sess["payment_status"] != "unpaid" {
		t.Errorf("session = %v", sess)
	}
	sub := getJSON(t, s, "/v1/subscriptions/"+m["subscription"].(string), "")
	if sub["status"] != "incomplete" || sub["latest_invoice"] == nil {
		t.Errorf("subscription status = %v, latest_invoice %v", sub["status"], sub["latest_invoice"])
	}
	if inv := getJSON(t, s, "/v1/invoices/"+sub["latest_invoice"].(string), ""); inv["status"] != "open" || inv["hosted_invoice_url"] == nil {
		t.Errorf("latest invoice = %v", inv)
	}
	if n := len(getJSON(t, s, "/v1/events", "")["data"].([]any)); n != 3 {
		t.Errorf("%d events, want 3 (session completed, subscription created, payment action required)", n)
	}
}

// Bad requests change nothing and say why; the key is checked as for the
// rest of the API.
func TestFakeCheckoutRefuses(t *testing.T) {
	t.Parallel()
	s := New(t)
	for _, tc := range []struct {
		path, key string
		form      url.Values
		code      int
		says      string
	}{
		{"/_fake/checkout/sessions", "sk_test_x", url.Values{}, 400, "user_id is required"},
		{"/_fake/checkout/sessions", "sk_test_x", url.Values{"user_id": {"tab\there"}}, 400, "user_id is required"},
		{"/_fake/checkout/sessions", "sk_test_x", url.Values{"user_id": {"u"}, "paid": {"maybe"}}, 400, "paid must be true or false"},
		{"/_fake/checkout/sessions", "nokey", url.Values{"user_id": {"u"}}, 401, "Invalid API Key"},
		{"/_fake/sessions", "sk_test_x", url.Values{"user_id": {"u"}}, 404, "POST /_fake/checkout/sessions"},
	} {
		code, m := postFake(t, s, tc.path, tc.key, tc.form)
		msg, _ := m["error"].(map[string]any)["message"].(string)
		if code != tc.code || !strings.Contains(msg, tc.says) {
			t.Errorf("POST %s %v: %d %q, want %d saying %q", tc.path, tc.form, code, msg, tc.code, tc.says)
		}
	}
	if n := s.Requests(); n != 5 {
		t.Errorf("%d requests served, want 5", n)
	}
	if n := len(getJSON(t, s, "/v1/events", "")["data"].([]any)); n != 0 {
		t.Errorf("%d events after refused requests, want none", n)
	}
	if got := getJSON(t, s, "/v1/customers", "")["data"].([]any); len(got) != 0 {
		t.Errorf("customers after refused requests: %v", got)
	}
}
