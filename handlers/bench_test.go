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
	db := dbtest.New(b, dbtest.WithMaxConns(4))
	fake := stripefake.New(b)
	cfg := &config.Config{DatabaseURL: db.URL, WebhookSecrets: []string{benchWebhookSecret}, StripeSecretKey: "sk_test_bench",
		StripeAPIBase: fake.URL, AppAPIToken: "bench-app-token-123", AdminToken: "bench-admin-token-123",
		LockTimeout: 1500 * time.Millisecond, RetryBudget: 4 * time.Second}
	return app.NewServer(cfg, db.Pool, slog.New(slog.NewJSONHandler(io.Discard, nil))).Handler
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
