package metrics_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lockstep/lockstep/metrics"
)

// Checkout outcomes are a fixed set of lowercase words, whatever the
// caller passes.
func TestMetricsCheckoutLabel(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"paid":                  "paid",
		"pending":               "pending",
		"Not Found":             "not_found",
		"not_found":             "not_found",
		"Forbidden":             "forbidden",
		"Gone":                  "gone",
		"Bad Request":           "bad_request",
		"Bad Gateway":           "bad_gateway",
		"Service Unavailable":   "service_unavailable",
		"Internal Server Error": "internal_server_error",
		"I'm a teapot":          "other",
		"":                      "other",
		"PAID":                  "paid",
	} {
		if got := metrics.CheckoutLabel(in); got != want {
			t.Errorf("CheckoutLabel(%q) = %q, want %q", in, got, want)
		}
	}
}

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	body := rec.Body.String()
	p := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := p.TextToMetricFamilies(strings.NewReader(body)); err != nil {
		t.Fatalf("not Prometheus text: %v", err)
	}
	return body
}

// Series a rate or a ratio divides by exist at 0 before anything happens;
// recorded values show under their labels.
func TestMetricsSeries(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	m.InitSecrets(2)
	body := scrape(t, m)
	for _, want := range []string{
		`lockstep_checkout_success_total{outcome="paid"} 0`,
		`lockstep_checkout_success_total{outcome="service_unavailable"} 0`,
		`lockstep_webhook_rejected_total{reason="signature"} 0`,
		`lockstep_webhook_secret_matched_total{secret="1"} 0`,
		`lockstep_webhook_secret_matched_total{secret="2"} 0`,
		`lockstep_replay_events_total{outcome="processed"} 0`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("fresh /metrics lacks %s", want)
		}
	}

	m.WebhookEvent("invoice.paid", "processed")
	m.WebhookEvent("invoice.paid", "failed")
	m.SecretMatched(1)
	m.CheckoutOutcome("Service Unavailable")
	m.Retried("webhook", "55P03")
	m.LockWaited("webhook", 3*time.Millisecond)
	m.LockHeld("webhook", 40*time.Millisecond)
	m.ObserveHTTP("/webhooks/stripe", 503, time.Second)
	m.Replayed("duplicate")
	body = scrape(t, m)
	for _, want := range []string{
		`lockstep_webhook_events_total{outcome="processed",type="invoice.paid"} 1`,
		`lockstep_webhook_events_total{outcome="failed",type="invoice.paid"} 1`,
		`lockstep_webhook_secret_matched_total{secret="2"} 1`,
		`lockstep_checkout_success_total{outcome="service_unavailable"} 1`,
		`lockstep_tx_retries_total{sqlstate="55P03",writer="webhook"} 1`,
		`lockstep_lock_wait_seconds_bucket{writer="webhook",le="0.005"} 1`,
		`lockstep_lock_hold_seconds_count{writer="webhook"} 1`,
		`lockstep_http_request_duration_seconds_count{code="503",route="/webhooks/stripe"} 1`,
		`lockstep_replay_events_total{outcome="duplicate"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
