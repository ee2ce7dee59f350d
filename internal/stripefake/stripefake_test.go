package stripefake

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
	"github.com/stripe/stripe-go/v76/client"
	"github.com/stripe/stripe-go/v76/webhook"
)

// newClient builds a stripe-go client aimed at s the way the brief (and
// lockstep) does it, with retries off so injected failures surface.
func newClient(s *Server) *client.API {
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(s.URL),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		MaxNetworkRetries: stripe.Int64(0),
	})
	return client.New("sk_test_x", &stripe.Backends{API: backend, Connect: backend, Uploads: backend})
}

var (
	t0        = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	periodEnd = time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
)

func seed(s *Server) {
	s.PutCustomer(Customer{ID: "cus_A", Email: "a@example.com", Created: t0, Metadata: map[string]string{"user_id": "u1"}})
	s.PutSubscription(Subscription{
		ID: "sub_A", Customer: "cus_A", Status: "active", PriceID: "price_pro",
		CurrentPeriodEnd: periodEnd, CancelAtPeriodEnd: true, Created: t0,
		Metadata: map[string]string{"user_id": "u1"},
	})
	s.PutSession(Session{
		ID: "cs_test_A", Customer: "cus_A", Subscription: "sub_A", ClientReferenceID: "u1",
		Metadata: map[string]string{"user_id": "u1"}, Status: "complete", PaymentStatus: "paid", Created: t0,
	})
}

func TestURLHasNoTrailingSlash(t *testing.T) {
	s := New(t)
	if strings.HasSuffix(s.URL, "/") || !strings.HasPrefix(s.URL, "http://") {
		t.Fatalf("URL = %q", s.URL)
	}
}

func TestSessionExpandSubscription(t *testing.T) {
	s := New(t)
	seed(s)
	sc := newClient(s)

	params := &stripe.CheckoutSessionParams{}
	params.AddExpand("subscription")
	sess, err := sc.CheckoutSessions.Get("cs_test_A", params)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if sess.ID != "cs_test_A" || sess.Object != "checkout.session" {
		t.Errorf("id/object = %q/%q", sess.ID, sess.Object)
	}
	if sess.Customer == nil || sess.Customer.ID != "cus_A" {
		t.Errorf("Customer = %+v, want id cus_A", sess.Customer)
	}
	if sess.ClientReferenceID != "u1" || sess.Metadata["user_id"] != "u1" {
		t.Errorf("ClientReferenceID = %q, metadata = %v", sess.ClientReferenceID, sess.Metadata)
	}
	if sess.Status != stripe.CheckoutSessionStatusComplete || sess.PaymentStatus != stripe.CheckoutSessionPaymentStatusPaid ||
		sess.Mode != stripe.CheckoutSessionModeSubscription {
		t.Errorf("status/payment_status/mode = %q/%q/%q", sess.Status, sess.PaymentStatus, sess.Mode)
	}
	if sess.Created != t0.Unix() {
		t.Errorf("Created = %d, want %d", sess.Created, t0.Unix())
	}
	sub := sess.Subscription
	if sub == nil || sub.ID != "sub_A" {
		t.Fatalf("Subscription = %+v", sub)
	}
	if sub.Status != stripe.SubscriptionStatusActive {
		t.Errorf("Subscription.Status = %q (not expanded?)", sub.Status)
	}
	if sub.Customer == nil || sub.Customer.ID != "cus_A" {
		t.Errorf("Subscription.Customer = %+v", sub.Customer)
	}
	if sub.CurrentPeriodEnd != periodEnd.Unix() || !sub.CancelAtPeriodEnd || sub.CancelAt != periodEnd.Unix() {
		t.Errorf("period end %d, cancel_at_period_end %v, cancel_at %d", sub.CurrentPeriodEnd, sub.CancelAtPeriodEnd, sub.CancelAt)
	}
	if sub.Items == nil || len(sub.Items.Data) != 1 || sub.Items.Data[0].Price == nil || sub.Items.Data[0].Price.ID != "price_pro" {
		t.Errorf("Items = %+v", sub.Items)
	}
	if sub.Metadata["user_id"] != "u1" {
		t.Errorf("Subscription.Metadata = %v", sub.Metadata)
	}
}

func TestSessionUnexpanded(t *testing.T) {
	s := New(t)
	seed(s)
	s.PutSession(Session{ID: "cs_open"}) // defaults, null references

	sess, err := newClient(s).CheckoutSessions.Get("cs_test_A", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Subscription == nil || sess.Subscription.ID != "sub_A" || sess.Subscription.Status != "" {
		t.Errorf("unexpanded Subscription = %+v, want only the id", sess.Subscription)
	}

	raw := getJSON(t, s, "/v1/checkout/sessions/cs_open", "")
	for _, k := range []string{"customer", "subscription", "client_reference_id", "url"} {
		if v, ok := raw[k]; !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null", k, v, ok)
		}
	}
	want := map[string]any{"object": "checkout.session", "status": "open", "payment_status": "unpaid", "mode": "subscription", "livemode": false}
	for k, v := range want {
		if raw[k] != v {
			t.Errorf("%s = %v, want %v", k, raw[k], v)
		}
	}
	if md, ok := raw["metadata"].(map[string]any); !ok || len(md) != 0 {
		t.Errorf("metadata = %#v, want {}", raw["metadata"])
	}
}

func TestExpandForms(t *testing.T) {
	s := New(t)
	seed(s)
	for _, q := range []string{"expand[]=subscription", "expand[0]=subscription", "expand%5B%5D=subscription", "expand=subscription"} {
		raw := getJSON(t, s, "/v1/checkout/sessions/cs_test_A?"+q, "")
		sub, ok := raw["subscription"].(map[string]any)
		if !ok || sub["object"] != "subscription" {
			t.Errorf("%s: subscription = %v", q, raw["subscription"])
		}
	}
}

func TestDanglingExpansionIsLoud(t *testing.T) {
	s := New(t)
	s.PutSession(Session{ID: "cs_x", Subscription: "sub_missing"})
	params := &stripe.CheckoutSessionParams{}
	params.AddExpand("subscription")
	_, err := newClient(s).CheckoutSessions.Get("cs_x", params)
	var se *stripe.Error
	if !errors.As(err, &se) || se.HTTPStatusCode != 500 || !strings.Contains(se.Msg, "sub_missing") {
		t.Fatalf("err = %v", err)
	}
}

func TestNotFound(t *testing.T) {
	s := New(t)
	sc := newClient(s)
	cases := []struct {
		get  func() error
		want string
	}{
		{func() error { _, err := sc.CheckoutSessions.Get("cs_x", nil); return err }, "No such checkout.session: 'cs_x'"},
		{func() error { _, err := sc.Subscriptions.Get("sub_x", nil); return err }, "No such subscription: 'sub_x'"},
		{func() error { _, err := sc.Customers.Get("cus_x", nil); return err }, "No such customer: 'cus_x'"},
		{func() error { _, err := sc.Invoices.Get("in_x", nil); return err }, "No such invoice: 'in_x'"},
	}
	for _, c := range cases {
		err := c.get()
		var se *stripe.Error
		if !errors.As(err, &se) {
			t.Fatalf("err = %v (%T), want *stripe.Error", err, err)
		}
		if se.Code != stripe.ErrorCodeResourceMissing || se.HTTPStatusCode != 404 || se.Type != stripe.ErrorTypeInvalidRequest ||
			se.Msg != c.want || se.Param != "id" {
			t.Errorf("error = %+v, want resource_missing 404 %q", se, c.want)
		}
	}
}

func TestAuth(t *testing.T) {
	s := New(t)
	seed(s)
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", 401},
		{"Bearer ", 401},
		{"Bearer pk_test_x", 401},
		{"Bearer sk_test", 401},
		{"Bearer sk_test_x", 200},
		{"Bearer sk_live_x", 200},
		{"Bearer rk_test_x", 200},
	} {
		req, _ := http.NewRequest("GET", s.URL+"/v1/customers/cus_A", nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if res.StatusCode != tc.want {
			t.Errorf("%q: status %d, want %d", tc.auth, res.StatusCode, tc.want)
		}
		if tc.want == 401 && string(body) != "" {
			var e struct {
				Error map[string]any `json:"error"`
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error["type"] != "invalid_request_error" || e.Error["message"] != "Invalid API Key provided" {
				t.Errorf("%q: body %s", tc.auth, body)
			}
		}
	}

	// And through stripe-go with a bad key.
	backend := s.Backends()
	_, err := client.New("pk_test_nope", backend).Customers.Get("cus_A", nil)
	var se *stripe.Error
	if !errors.As(err, &se) || se.HTTPStatusCode != 401 || se.Type != stripe.ErrorTypeInvalidRequest {
		t.Errorf("bad key: %v", err)
	}
}

func TestCustomerAndDeleted(t *testing.T) {
	s := New(t)
	seed(s)
	s.PutCustomer(Customer{ID: "cus_gone", Deleted: true})
	sc := newClient(s)

	c, err := sc.Customers.Get("cus_A", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Email != "a@example.com" || c.Deleted || c.Metadata["user_id"] != "u1" || c.Created != t0.Unix() {
		t.Errorf("customer = %+v", c)
	}

	c, err = sc.Customers.Get("cus_gone", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Deleted || c.ID != "cus_gone" {
		t.Errorf("deleted customer = %+v", c)
	}
	raw := getJSON(t, s, "/v1/customers/cus_gone", "")
	if len(raw) != 3 || raw["deleted"] != true || raw["object"] != "customer" {
		t.Errorf("deleted stub = %v", raw)
	}
}

func TestSubscriptionGet(t *testing.T) {
	s := New(t)
	seed(s)
	sub, err := newClient(s).Subscriptions.Get("sub_A", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sub.Customer == nil || sub.Customer.ID != "cus_A" {
		t.Errorf("customer = %+v", sub.Customer)
	}
	if sub.CurrentPeriodStart != periodEnd.AddDate(0, -1, 0).Unix() || sub.CurrentPeriodEnd != periodEnd.Unix() {
		t.Errorf("period = %d..%d", sub.CurrentPeriodStart, sub.CurrentPeriodEnd)
	}
	if sub.Items.Data[0].Quantity != 1 || sub.Items.Data[0].ID == "" || sub.Items.Data[0].Object != "subscription_item" {
		t.Errorf("item = %+v", sub.Items.Data[0])
	}
}

func TestAPIVersionShapes(t *testing.T) {
	s := New(t)
	seed(s)

	old := getJSON(t, s, "/v1/subscriptions/sub_A", DefaultAPIVersion)
	if old["current_period_end"] != float64(periodEnd.Unix()) || old["current_period_start"] == nil {
		t.Errorf("2023-10-16: top-level period = %v..%v", old["current_period_start"], old["current_period_end"])
	}
	item := firstItem(t, old)
	if _, ok := item["current_period_end"]; ok {
		t.Errorf("2023-10-16: item has current_period_end")
	}

	for _, v := range []string{"2025-03-31.basil", "2025-04-30.basil", "2025-09-30.clover"} {
		basil := getJSON(t, s, "/v1/subscriptions/sub_A", v)
		if _, ok := basil["current_period_end"]; ok {
			t.Errorf("%s: top-level current_period_end present", v)
		}
		if _, ok := basil["current_period_start"]; ok {
			t.Errorf("%s: top-level current_period_start present", v)
		}
		item := firstItem(t, basil)
		if item["current_period_end"] != float64(periodEnd.Unix()) || item["current_period_start"] != float64(periodEnd.AddDate(0, -1, 0).Unix()) {
			t.Errorf("%s: item period = %v..%v", v, item["current_period_start"], item["current_period_end"])
		}
	}

	// Expanded subscriptions inside sessions follow the version too.
	sess := getJSON(t, s, "/v1/checkout/sessions/cs_test_A?expand[]=subscription", "2025-03-31.basil")
	sub := sess["subscription"].(map[string]any)
	if _, ok := sub["current_period_end"]; ok {
		t.Errorf("basil session.subscription has top-level current_period_end")
	}
	if firstItem(t, sub)["current_period_end"] != float64(periodEnd.Unix()) {
		t.Errorf("basil session.subscription item lacks current_period_end")
	}

	// Direct renderer check.
	m := SubscriptionJSON(Subscription{ID: "sub_B", CurrentPeriodEnd: periodEnd, Created: t0}, BasilAPIVersion)
	if _, ok := m["current_period_end"]; ok {
		t.Errorf("SubscriptionJSON basil: top-level current_period_end")
	}
}

func TestInvoiceShapes(t *testing.T) {
	inv := Invoice{ID: "in_1", Customer: "cus_A", Subscription: "sub_A", Status: "paid", Currency: "usd", AmountDue: 1500, AmountPaid: 1500, Created: t0}

	old := InvoiceJSON(inv, DefaultAPIVersion)
	if old["subscription"] != "sub_A" || old["object"] != "invoice" || old["paid"] != true {
		t.Errorf("old invoice = %v", old)
	}
	var si stripe.Invoice
	roundTrip(t, old, &si)
	if si.Subscription == nil || si.Subscription.ID != "sub_A" || si.Customer.ID != "cus_A" || si.AmountPaid != 1500 || si.Status != "paid" {
		t.Errorf("decoded invoice = %+v", si)
	}

	basil := InvoiceJSON(inv, BasilAPIVersion)
	if _, ok := basil["subscription"]; ok {
		t.Errorf("basil invoice has top-level subscription")
	}
	parent := basil["parent"].(map[string]any)
	if parent["type"] != "subscription_details" || parent["subscription_details"].(map[string]any)["subscription"] != "sub_A" {
		t.Errorf("basil parent = %v", parent)
	}
	if InvoiceJSON(Invoice{ID: "in_2"}, BasilAPIVersion)["parent"] != nil {
		t.Errorf("basil invoice without subscription: parent should be null")
	}

	s := New(t)
	seed(s)
	s.PutInvoice(inv)
	got, err := newClient(s).Invoices.Get("in_1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Subscription == nil || got.Subscription.ID != "sub_A" {
		t.Errorf("invoice subscription = %+v", got.Subscription)
	}
}

func TestRenderersDecodeIntoStripeGo(t *testing.T) {
	// Type mismatches (e.g. a string where stripe-go wants an object) fail here.
	for _, v := range []string{DefaultAPIVersion, BasilAPIVersion} {
		sub := Subscription{ID: "sub_1", Customer: "cus_1", Status: "canceled"}
		roundTrip(t, SubscriptionJSON(sub, v), &stripe.Subscription{})
		roundTrip(t, SessionJSON(Session{ID: "cs_1"}, &sub, v), &stripe.CheckoutSession{})
		roundTrip(t, CustomerJSON(Customer{ID: "cus_1"}, v), &stripe.Customer{})
		roundTrip(t, CustomerJSON(Customer{ID: "cus_1", Deleted: true}), &stripe.Customer{})
		roundTrip(t, InvoiceJSON(Invoice{ID: "in_1"}, v), &stripe.Invoice{})
	}
}

func TestWebhookSignature(t *testing.T) {
	const secret = "whsec_test_secret"
	sub := Subscription{ID: "sub_A", Customer: "cus_A", Status: "active", PriceID: "price_pro", CurrentPeriodEnd: periodEnd, Created: t0}
	payload := EventJSON("evt_1", "customer.subscription.updated", t0, "", SubscriptionJSON(sub, DefaultAPIVersion))

	now := time.Now()
	header := SignatureHeader(payload, secret, now)
	if !regexp.MustCompile(`^t=\d+,v1=[0-9a-f]{64}$`).MatchString(header) {
		t.Fatalf("header = %q", header)
	}
	// Byte-for-byte what stripe-go computes.
	if want := "v1=" + hexString(webhook.ComputeSignature(now, payload, secret)); !strings.HasSuffix(header, want) {
		t.Errorf("header %q does not end with %q", header, want)
	}

	ev, err := webhook.ConstructEventWithOptions(payload, header, secret, webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
	if err != nil {
		t.Fatalf("ConstructEvent: %v", err)
	}
	if ev.ID != "evt_1" || ev.Type != "customer.subscription.updated" || ev.APIVersion != DefaultAPIVersion || ev.Created != t0.Unix() ||
		ev.Livemode || ev.PendingWebhooks != 1 {
		t.Errorf("event = %+v", ev)
	}
	var got stripe.Subscription
	if err := json.Unmarshal(ev.Data.Raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "sub_A" || got.Customer.ID != "cus_A" || got.CurrentPeriodEnd != periodEnd.Unix() {
		t.Errorf("event subscription = %+v", got)
	}

	// stripe-go's default (no option) also accepts the pinned version.
	if _, err := webhook.ConstructEvent(payload, header, secret); err != nil {
		t.Errorf("ConstructEvent (pinned version): %v", err)
	}
	if _, err := webhook.ConstructEventWithOptions(payload, header, "whsec_other", webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true}); err == nil {
		t.Errorf("wrong secret verified")
	}
	old := SignatureHeader(payload, secret, now.Add(-10*time.Minute))
	if _, err := webhook.ConstructEventWithOptions(payload, old, secret, webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true}); !errors.Is(err, webhook.ErrTooOld) {
		t.Errorf("old signature: err = %v, want ErrTooOld", err)
	}
}

func TestWebhookSignatureMulti(t *testing.T) {
	secrets := []string{"whsec_old", "whsec_new", "whsec_newer"}
	payload := EventJSON("evt_2", "checkout.session.completed", time.Now(), BasilAPIVersion,
		SessionJSON(Session{ID: "cs_1", Customer: "cus_1", Subscription: "sub_1", Status: "complete", PaymentStatus: "paid"}, nil, BasilAPIVersion))
	header := SignatureHeaderMulti(payload, time.Now(), secrets...)
	if n := strings.Count(header, ",v1="); n != len(secrets) {
		t.Fatalf("header %q has %d signatures", header, n)
	}
	for _, secret := range secrets {
		ev, err := webhook.ConstructEventWithOptions(payload, header, secret, webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true})
		if err != nil {
			t.Errorf("secret %s: %v", secret, err)
			continue
		}
		if ev.APIVersion != BasilAPIVersion || ev.Data.Object["id"] != "cs_1" {
			t.Errorf("event = %+v", ev)
		}
	}
	if _, err := webhook.ConstructEventWithOptions(payload, header, "whsec_stranger", webhook.ConstructEventOptions{IgnoreAPIVersionMismatch: true}); err == nil {
		t.Errorf("unknown secret verified")
	}
	// A basil event fails stripe-go's version check unless it is ignored.
	if _, err := webhook.ConstructEvent(payload, header, secrets[0]); err == nil {
		t.Errorf("basil event passed stripe-go's version check")
	}
}

func TestEventEnvelope(t *testing.T) {
	payload := EventJSON("evt_3", "customer.deleted", t0, "", CustomerJSON(Customer{ID: "cus_1", Deleted: true}))
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"id": "evt_3", "object": "event", "api_version": DefaultAPIVersion, "created": float64(t0.Unix()),
		"livemode": false, "pending_webhooks": float64(1), "type": "customer.deleted"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	req := m["request"].(map[string]any)
	if v, ok := req["id"]; !ok || v != nil {
		t.Errorf("request.id = %v", v)
	}
	if v, ok := req["idempotency_key"]; !ok || v != nil {
		t.Errorf("request.idempotency_key = %v", v)
	}
	if m["data"].(map[string]any)["object"].(map[string]any)["deleted"] != true {
		t.Errorf("data.object = %v", m["data"])
	}
}

func TestFailNextAndRequests(t *testing.T) {
	s := New(t)
	seed(s)
	sc := newClient(s)
	if s.Requests() != 0 {
		t.Fatalf("Requests = %d before any", s.Requests())
	}
	s.FailNext(2, 503)
	for i := 0; i < 2; i++ {
		_, err := sc.Customers.Get("cus_A", nil)
		var se *stripe.Error
		if !errors.As(err, &se) || se.HTTPStatusCode != 503 || se.Type != stripe.ErrorTypeAPI {
			t.Fatalf("call %d: err = %v", i, err)
		}
	}
	if _, err := sc.Customers.Get("cus_A", nil); err != nil {
		t.Fatalf("after failures: %v", err)
	}
	if got := s.Requests(); got != 3 {
		t.Errorf("Requests = %d, want 3", got)
	}

	// stripe-go's default retries absorb a single 500 on a GET.
	retrying := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:           stripe.String(s.URL),
		LeveledLogger: &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	s.FailNext(1, 500)
	if _, err := client.New("sk_test_x", &stripe.Backends{API: retrying, Connect: retrying, Uploads: retrying}).Customers.Get("cus_A", nil); err != nil {
		t.Errorf("retrying client: %v", err)
	}
	if got := s.Requests(); got != 5 {
		t.Errorf("Requests = %d, want 5", got)
	}

	s.FailNext(1, 0) // invalid status means 500
	_, err := sc.Customers.Get("cus_A", nil)
	var se *stripe.Error
	if !errors.As(err, &se) || se.HTTPStatusCode != 500 {
		t.Errorf("FailNext(1, 0): %v", err)
	}
	s.FailNext(5, 500)
	s.FailNext(0, 500)
	if _, err := sc.Customers.Get("cus_A", nil); err != nil {
		t.Errorf("FailNext(0) did not cancel: %v", err)
	}
}

func TestOnRequestAndDelay(t *testing.T) {
	s := New(t)
	seed(s)
	sc := newClient(s)

	var mu sync.Mutex
	var seen []string
	s.SetOnRequest(func(r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+r.Header.Get("Stripe-Version"))
		mu.Unlock()
		// State changes made here are visible to the answer of this very request.
		s.PutSubscription(Subscription{ID: "sub_A", Customer: "cus_A", Status: "past_due"})
	})
	sub, err := sc.Subscriptions.Get("sub_A", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sub.Status != stripe.SubscriptionStatusPastDue {
		t.Errorf("status = %q, want past_due set by OnRequest", sub.Status)
	}
	mu.Lock()
	if len(seen) != 1 || seen[0] != "GET /v1/subscriptions/sub_A "+stripe.APIVersion {
		t.Errorf("seen = %q", seen)
	}
	mu.Unlock()
	s.SetOnRequest(nil)

	s.SetDelay(150 * time.Millisecond)
	start := time.Now()
	if _, err := sc.Customers.Get("cus_A", nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("answer took %v, want >= 150ms", d)
	}

	// A client that gives up does not keep the server (or its Close) waiting.
	s.SetDelay(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	params := &stripe.CustomerParams{}
	params.Context = ctx
	if _, err := sc.Customers.Get("cus_A", params); err == nil {
		t.Errorf("expected a timeout")
	}
	s.SetDelay(0)
}

func TestConcurrentUse(t *testing.T) {
	s := New(t)
	seed(s)
	sc := newClient(s)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			md := map[string]string{"n": "x"}
			s.PutSubscription(Subscription{ID: "sub_A", Customer: "cus_A", Metadata: md})
			md["n"] = "mutated after Put" // must not race with the server's copy
			s.SetDelay(0)
			_ = s.Requests()
		}()
		go func() {
			defer wg.Done()
			if _, err := sc.Subscriptions.Get("sub_A", nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := s.Requests(); got != 20 {
		t.Errorf("Requests = %d, want 20", got)
	}
}

func TestUnrecognizedURL(t *testing.T) {
	s := New(t)
	for _, p := range []string{"/v1/charges/ch_1", "/v1/customers/", "/v1/customers/cus_1/sources"} {
		req, _ := http.NewRequest("GET", s.URL+p, nil)
		req.Header.Set("Authorization", "Bearer sk_test_x")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		if res.StatusCode != 404 {
			t.Errorf("%s: %d", p, res.StatusCode)
		}
	}
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^cus_[0-9A-Za-z]{14}$`)
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID("cus_")
		if !re.MatchString(id) {
			t.Fatalf("NewID = %q", id)
		}
		if seen[id] {
			t.Fatalf("duplicate %q", id)
		}
		seen[id] = true
	}
}

// getJSON GETs path with a valid key and optional Stripe-Version and decodes
// the 200 answer.
func getJSON(t *testing.T, s *Server, path, apiVersion string) map[string]any {
	t.Helper()
	req, err := http.NewRequest("GET", s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer sk_test_x")
	if apiVersion != "" {
		req.Header.Set("Stripe-Version", apiVersion)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = res.Body.Close() }()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, res.StatusCode, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func firstItem(t *testing.T, sub map[string]any) map[string]any {
	t.Helper()
	items, _ := sub["items"].(map[string]any)
	data, _ := items["data"].([]any)
	if len(data) != 1 {
		t.Fatalf("items = %v", sub["items"])
	}
	return data[0].(map[string]any)
}

func roundTrip(t *testing.T, m map[string]any, v any) {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Errorf("decode %T: %v\n%s", v, err, b)
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// Answers are rendered once per request, and a Put of any object changes
// them: an expanded session shows its subscription's new status.
func TestAnswersFollowPuts(t *testing.T) {
	s := New(t)
	seed(s)
	api := newClient(s)
	get := func() string {
		t.Helper()
		params := &stripe.CheckoutSessionParams{}
		params.AddExpand("subscription")
		sess, err := api.CheckoutSessions.Get("cs_test_A", params)
		if err != nil {
			t.Fatal(err)
		}
		return string(sess.Subscription.Status)
	}
	if st := get(); st != "active" || get() != "active" {
		t.Fatalf("status %q, want active twice", st)
	}
	s.PutSubscription(Subscription{ID: "sub_A", Customer: "cus_A", Status: "past_due", PriceID: "price_pro",
		CurrentPeriodEnd: periodEnd, Created: t0})
	if st := get(); st != "past_due" {
		t.Errorf("after PutSubscription: status %q, want past_due", st)
	}
	s.PutSession(Session{ID: "cs_test_A", Customer: "cus_A", Subscription: "sub_A", ClientReferenceID: "u1",
		Status: "expired", PaymentStatus: "unpaid", Created: t0})
	sess, err := api.CheckoutSessions.Get("cs_test_A", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Status != "expired" {
		t.Errorf("after PutSession: status %q, want expired", sess.Status)
	}
}
