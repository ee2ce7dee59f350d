package integration_test

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/logging"
)

// With Stripe hanging, a request that needs it answers 503 with a JSON
// error and Retry-After once its Stripe deadline has passed, well inside
// the server's write timeout: never a dropped connection. The success call
// and a webhook whose same-second snapshot must be settled by a read are
// tried; the webhook's event is in the ledger as failed, for redelivery,
// and once Stripe answers again its redelivery is processed.
func TestHangingStripeAnswers503(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// The server as serve runs it, with the Stripe deadline and the write
	// timeout shortened alike (10 s of 30 s in production).
	b.cfg.StripeDeadline = 400 * time.Millisecond
	a := app.NewServer(b.cfg, b.db.Pool, logging.New(b.logs, slog.LevelDebug))
	srv := httptest.NewUnstartedServer(a.Handler)
	srv.Config = app.NewHTTPServer(a.Handler, logging.New(b.logs, slog.LevelDebug))
	srv.Config.WriteTimeout = 3 * time.Second
	srv.Start()
	t.Cleanup(srv.Close)
	b.srv = srv

	created := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("hang"), created)
	// A first snapshot of the subscription, at second T, needs no read.
	at := b.stripe.Now().Truncate(time.Second)
	first := event(stripefake.NewID("evt_"), "customer.subscription.updated", at,
		stripefake.SubscriptionJSON(fx.subObj("active"), stripefake.DefaultAPIVersion))
	must200(t, "first snapshot", b.postWebhook(first))

	b.stripe.SetDelay(time.Hour) // Stripe accepts connections and never answers
	check := func(what string, res *http.Response, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: no HTTP answer: %v", what, err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		var m map[string]any
		if res.StatusCode != http.StatusServiceUnavailable || json.Unmarshal(body, &m) != nil || m["error"] == nil {
			t.Fatalf("%s: %d %s, want 503 with a JSON error", what, res.StatusCode, body)
		}
		if res.Header.Get("Retry-After") == "" {
			t.Fatalf("%s: 503 without Retry-After", what)
		}
		if !strings.Contains(m["error"].(string), "stripe") {
			t.Errorf("%s: reason %q does not name Stripe", what, m["error"])
		}
	}

	// The success call reads the session from Stripe.
	body, _ := json.Marshal(map[string]string{"session_id": fx.session, "user_id": fx.user})
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/checkout/success", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+appToken)
	res, err := b.client.Do(req)
	check("success call", res, err)
	if n := b.count(`SELECT count(*) FROM stripe_customers WHERE user_id = $1`, fx.user); n != 0 {
		t.Errorf("a success call that could not read Stripe mapped the user")
	}

	// Another snapshot of second T with other content: settled by a read.
	evID := stripefake.NewID("evt_")
	second := event(evID, "customer.subscription.updated", at,
		stripefake.SubscriptionJSON(fx.subObj("past_due"), stripefake.DefaultAPIVersion))
	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/webhooks/stripe", bytes.NewReader(second))
	req.Header.Set("Stripe-Signature", stripefake.SignatureHeader(second, secretNew, time.Now()))
	res, err = b.client.Do(req)
	check("same-second webhook", res, err)
	if st := b.scalar(`SELECT status FROM stripe_events WHERE event_id = $1`, evID); st != "failed" {
		t.Fatalf("the webhook's event is %q in the ledger, want failed", st)
	}

	// Stripe answers again: the redelivery is processed.
	b.stripe.SetDelay(0)
	b.stripe.PutSubscription(fx.subObj("past_due"))
	must200(t, "redelivery", b.postWebhook(second))
	if st := b.scalar(`SELECT status FROM stripe_events WHERE event_id = $1`, evID); st != "processed" {
		t.Fatalf("after redelivery the event is %q, want processed", st)
	}
}
