package handlers_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

const benchWebhookSecret = "whsec_bench_handler_0123456789"

// benchHandler is lockstep's HTTP handler on a fresh database, logging JSON
// at info level to nowhere (formatted, as in production).
func benchHandler(b *testing.B) http.Handler {
	b.Helper()
	h, _ := benchHandlerDB(b)
	return h
}

func benchHandlerDB(b *testing.B) (http.Handler, *pgxpool.Pool) {
	b.Helper()
	db := dbtest.New(b, dbtest.WithMaxConns(4))
	fake := stripefake.New(b)
	cfg := &config.Config{DatabaseURL: db.URL, WebhookSecrets: []string{benchWebhookSecret}, StripeSecretKey: "sk_test_bench",
		StripeAPIBase: fake.URL, AppAPIToken: "bench-app-token-123", AdminToken: "bench-admin-token-123",
		LockTimeout: 1500 * time.Millisecond, RetryBudget: 4 * time.Second}
	return app.NewServer(cfg, db.Pool, slog.New(slog.NewJSONHandler(io.Discard, nil))).Handler, db.Pool
}

func benchWebhookBody(n int, created time.Time) []byte {
	sub := stripefake.SubscriptionJSON(stripefake.Subscription{ID: "sub_bench" + strconv.Itoa(n%100), Customer: "cus_bench" + strconv.Itoa(n%100),
		Status: "active", PriceID: "price_bench", Created: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}, stripefake.DefaultAPIVersion)
	return stripefake.EventJSON("evt_bench"+strconv.Itoa(n), "customer.subscription.updated", created, "", sub)
}

func benchServe(b *testing.B, h http.Handler, body []byte, want int) {
	req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
	req.Header.Set("Stripe-Signature", stripefake.SignatureHeader(body, benchWebhookSecret, time.Now()))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != want {
		b.Fatalf("status %d, want %d: %s", rec.Code, want, rec.Body)
	}
}

// BenchmarkWebhookNewEvent is one new subscription event through the whole
// handler, without the network: signature, parsing, the event's transaction
// on PostgreSQL (one at a time, so no lock is contended), metrics, the log
// line. ns/op is mostly the database's commit; allocs/op is lockstep's.
func BenchmarkWebhookNewEvent(b *testing.B) {
	h := benchHandler(b)
	base := time.Now().Add(time.Hour)
	bodies := make([][]byte, 0, 1024)
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if len(bodies) == 0 {
			for range cap(bodies) {
				i++
				bodies = append(bodies, benchWebhookBody(i, base.Add(time.Duration(i)*time.Second)))
			}
		}
		body := bodies[len(bodies)-1]
		bodies = bodies[:len(bodies)-1]
		b.StartTimer()
		benchServe(b, h, body, http.StatusOK)
	}
}

// BenchmarkWebhookDuplicate is a redelivery of a processed event: one read.
func BenchmarkWebhookDuplicate(b *testing.B) {
	h := benchHandler(b)
	body := benchWebhookBody(1, time.Now())
	benchServe(b, h, body, http.StatusOK)
	b.ReportAllocs()
	for b.Loop() {
		benchServe(b, h, body, http.StatusOK)
	}
}

// BenchmarkWebhookBadSignature is a request refused before any parsing: the
// cost of the router, the middleware and the signature check.
func BenchmarkWebhookBadSignature(b *testing.B) {
	h := benchHandler(b)
	body := benchWebhookBody(1, time.Now())
	header := stripefake.SignatureHeader(body, "whsec_someone_else_0123456", time.Now())
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest {
			b.Fatalf("status %d", rec.Code)
		}
	}
}

// BenchmarkAccessRead is the paywall read, GET /api/users/{user_id}/access,
// for an active subscriber with two entitlements, through the whole handler
// without the network: router, token, observe (request id, log line,
// histogram), the one statement, the decision, its JSON. ns/op is mostly
// the database's round trip; allocs/op is lockstep's.
func BenchmarkAccessRead(b *testing.B) {
	h, db := benchHandlerDB(b)
	seedBenchSubscriber(b, db)
	req := httptest.NewRequest(http.MethodGet, "/api/users/user_bench_1/access", nil)
	req.Header.Set("Authorization", "Bearer bench-app-token-123")
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK || !bytes.Contains(rec.Body.Bytes(), []byte(`"state":"active"`)) {
			b.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	}
}

// seedBenchSubscriber stores user_bench_1: customer cus_bench_1, an active
// subscription to price_bench (product prod_bench), entitlements export and
// sso.
func seedBenchSubscriber(b *testing.B, db *pgxpool.Pool) {
	b.Helper()
	for _, q := range []string{
		`INSERT INTO stripe_products (stripe_product_id, name, source_time, source) VALUES ('prod_bench', 'Pro', now(), 'bench')`,
		`INSERT INTO stripe_prices (stripe_price_id, stripe_product_id, lookup_key, currency, unit_amount, recurring_interval, recurring_interval_count, source_time, source)
		 VALUES ('price_bench', 'prod_bench', 'pro_monthly', 'usd', 2000, 'month', 1, now(), 'bench')`,
		`INSERT INTO stripe_customers (stripe_customer_id, user_id, linked_at) VALUES ('cus_bench_1', 'user_bench_1', now())`,
		`INSERT INTO stripe_subscriptions (stripe_subscription_id, stripe_customer_id, status, price_id, current_period_start, current_period_end,
		   cancel_at_period_end, source_time, source)
		 VALUES ('sub_bench_1', 'cus_bench_1', 'active', 'price_bench', now() - interval '10 days', now() + interval '20 days', false, now(), 'bench')`,
		`INSERT INTO stripe_entitlements (stripe_customer_id, stripe_feature_id, lookup_key) VALUES ('cus_bench_1', 'feat_export', 'export'), ('cus_bench_1', 'feat_sso', 'sso')`,
	} {
		if _, err := db.Exec(b.Context(), q); err != nil {
			b.Fatal(err)
		}
	}
}
