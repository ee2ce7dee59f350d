package handlers_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/stripeapi"
)

const fuzzSecret = "whsec_fuzz_secret_0123456789"

// fuzzSeeds are webhook bodies of every shape hostile input takes.
func fuzzSeeds() [][]byte {
	now := time.Now()
	sub := stripefake.SubscriptionJSON(stripefake.Subscription{ID: "sub_fuzz1", Customer: "cus_fuzz1", Status: "active",
		PriceID: "price_1", Created: now}, stripefake.DefaultAPIVersion)
	valid := stripefake.EventJSON("evt_fuzz1", "customer.subscription.updated", now, "", sub)
	sess := stripefake.SessionJSON(stripefake.Session{ID: "cs_fuzz1", Customer: "cus_fuzz1", ClientReferenceID: "user'; DROP TABLE stripe_customers;--",
		Status: "complete", PaymentStatus: "paid", Created: now}, nil, "")
	long := strings.Repeat("x", 300)
	return [][]byte{
		valid,
		stripefake.EventJSON("evt_fuzz2", "checkout.session.completed", now, "", sess),
		stripefake.EventJSON("evt_fuzz3", "invoice.paid", now, stripefake.BasilAPIVersion,
			stripefake.InvoiceJSON(stripefake.Invoice{ID: "in_fuzz", Customer: "cus_fuzz1", Subscription: "sub_fuzz1", Status: "paid"}, stripefake.BasilAPIVersion)),
		valid[:len(valid)/2], // truncated JSON
		[]byte(`{"id":"evt_x","object":"event","type":"customer.subscription.updated","created":1700000000,"data":{"object":{"id":"sub_1","object":"subscription","customer":null,"status":"active"}}}`),
		[]byte(`{"id":"evt_x","object":"event","type":"customer.subscription.updated","created":"yesterday","data":{"object":{}}}`),
		[]byte(`{"id":"evt_x","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_` + long + `","object":"customer"}}}`),
		[]byte(`{"id":"evt_x","object":"event","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_a\u0000b","object":"customer"}}}`),
		[]byte("{\"id\":\"evt_\xff\xfe\",\"object\":\"event\"}"),
		[]byte(`{"id":"evt_x","object":"event","type":"customer.created","created":99999999999999,"data":{"object":{"id":"cus_a","object":"customer","created":-5}}}`),
		[]byte(`{"id":"evt_x","object":"event","type":"invoice.paid","created":1700000000,"data":{"object":{"id":"in_1","object":"invoice","customer":"cus_1","amount_due":1e300}}}`),
		[]byte(`[]`), []byte(`null`), []byte(``),
	}
}

// FuzzWebhook sends any body, correctly signed, through the webhook handler
// on a real database (one database and one handler for the whole run, set
// up outside f.Fuzz): no panic, no 5xx (nothing here is transient), a body
// ParseEvent refuses is refused, and a refused body writes nothing.
func FuzzWebhook(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	db := dbtest.New(f, dbtest.WithMaxConns(4))
	fake := stripefake.New(f)
	cfg := &config.Config{DatabaseURL: db.URL, WebhookSecrets: []string{fuzzSecret}, StripeSecretKey: "sk_test_fuzz",
		StripeAPIBase: fake.URL, AppAPIToken: "fuzz-app-token-123", AdminToken: "fuzz-admin-token-123",
		LockTimeout: time.Second, RetryBudget: 2 * time.Second}
	h := app.NewServer(cfg, db.Pool, slog.New(slog.NewTextHandler(io.Discard, nil))).Handler
	rows := func() (n int) {
		err := db.Pool.QueryRow(context.Background(),
			`SELECT (SELECT count(*) FROM stripe_events) + (SELECT count(*) FROM stripe_customers)
			 + (SELECT count(*) FROM stripe_subscriptions) + (SELECT count(*) FROM stripe_invoices)`).Scan(&n)
		if err != nil {
			f.Fatal(err)
		}
		return n
	}

	// Most mutated bodies are not events: the handler refuses them after
	// the signature check and ParseEvent, before any database work, so
	// such an input costs microseconds and needs no row count. Only a
	// body ParseEvent accepts reaches the database, and only then are the
	// rows counted around it. (Counting for every input made each one a
	// few database round trips, and the fuzzer spent its time budget
	// minimizing a handful of inputs: 38 execs counted in 15 s.)
	f.Fuzz(func(t *testing.T, body []byte) {
		_, parseErr := stripeapi.ParseEvent(body)
		before := 0
		if parseErr == nil {
			before = rows()
		}
		req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", stripefake.SignatureHeader(body, fuzzSecret, time.Now()))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch code := rec.Code; {
		case code == http.StatusOK && parseErr != nil:
			t.Fatalf("the handler accepted a body ParseEvent refuses (%v): %s", parseErr, rec.Body)
		case code == http.StatusOK:
		case code == http.StatusBadRequest || code == http.StatusRequestEntityTooLarge:
			if parseErr == nil {
				if after := rows(); after != before {
					t.Fatalf("rejected body (%d) wrote %d rows: %s", code, after-before, rec.Body)
				}
			}
		default:
			t.Fatalf("status %d for input that can never succeed: %s", code, rec.Body)
		}
	})
}
