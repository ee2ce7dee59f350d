package integration_test

import (
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// scrape is one scrape of /metrics, parsed.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, b *bundle) scrape {
	t.Helper()
	res, err := b.client.Get(b.srv.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", res.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return fams
}

// get sums the series of name whose labels include want: a counter's or
// gauge's value, a histogram's count. ok is false when no series matches.
func (m scrape) get(name string, want map[string]string) (v float64, ok bool) {
	f := m[name]
	if f == nil {
		return 0, false
	}
series:
	for _, s := range f.GetMetric() {
		for k, wv := range want {
			found := false
			for _, lp := range s.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == wv {
					found = true
				}
			}
			if !found {
				continue series
			}
		}
		ok = true
		switch {
		case s.Counter != nil:
			v += s.GetCounter().GetValue()
		case s.Gauge != nil:
			v += s.GetGauge().GetValue()
		case s.Histogram != nil:
			v += float64(s.GetHistogram().GetSampleCount())
		case s.Untyped != nil:
			v += s.GetUntyped().GetValue()
		}
	}
	return v, ok
}

func histSum(m scrape, name string) float64 {
	var sum float64
	if f := m[name]; f != nil {
		for _, s := range f.GetMetric() {
			sum += s.GetHistogram().GetSampleSum()
		}
	}
	return sum
}

func (m scrape) val(name string, labels ...string) float64 {
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	v, _ := m.get(name, want)
	return v
}

// /metrics moves as events are processed, duplicated, ignored and failed;
// the failure rate can be computed from it; which secret matched, retries
// by SQLSTATE, lock times, ledger counts and pool statistics are there.
func TestMetricsMoveWithEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	b.app.Metrics.SetLedgerMaxAge(0) // ledger counts are compared between scrapes a second apart
	before := scrapeMetrics(t, b)
	for _, name := range []string{"lockstep_webhook_events_total", "lockstep_tx_retries_total", "lockstep_lock_wait_seconds"} {
		if v, _ := before.get(name, nil); v != 0 {
			t.Fatalf("%s = %v on a fresh server", name, v)
		}
	}
	for _, o := range []string{"paid", "pending", "not_found", "service_unavailable", "other"} {
		if _, ok := before.get("lockstep_checkout_success_total", map[string]string{"outcome": o}); !ok {
			t.Errorf("lockstep_checkout_success_total{outcome=%q} missing before any call (rates need it at 0)", o)
		}
	}

	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("ops-metrics"), now)
	completed := sessionCompleted(fx, now)
	must200(t, "session completed", b.postWebhook(completed))
	if st := b.postWebhook(completed).json(t)["status"]; st != "duplicate" {
		t.Fatalf("second delivery: %v, want duplicate", st)
	}
	ignored := event(stripefake.NewID("evt_"), "payment_intent.created", now, map[string]any{"id": "pi_ops", "object": "payment_intent"})
	if st := b.postWebhook(ignored).json(t)["status"]; st != "ignored" {
		t.Fatalf("payment_intent.created: %v, want ignored", st)
	}
	created := subEvent(fx, "customer.subscription.created", "active", now)
	must200(t, "signed with the second secret", b.postWebhookHeader(created, stripefake.SignatureHeader(created, secretOld, time.Now())))
	if r := b.postWebhookHeader(created, stripefake.SignatureHeader(created, "whsec_not_configured_0000", time.Now())); r.code != http.StatusBadRequest {
		t.Fatalf("unknown secret: %d", r.code)
	}
	must200(t, "checkout success", b.checkout(fx.session, fx.user))
	if r := b.checkout("cs_test_nosuchsession", fx.user); r.code != http.StatusNotFound {
		t.Fatalf("unknown session: %d", r.code)
	}
	mid := scrapeMetrics(t, b)
	b.failEvent(fx.customer, subEvent(fx, "customer.subscription.updated", "past_due", now.Add(time.Second)))
	after := scrapeMetrics(t, b)

	delta := func(name string, labels ...string) float64 {
		return after.val(name, labels...) - before.val(name, labels...)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"lockstep_webhook_events_total", []string{"type", "checkout.session.completed", "outcome", "processed"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "checkout.session.completed", "outcome", "duplicate"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "payment_intent.created", "outcome", "ignored"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "customer.subscription.created", "outcome", "processed"}, 1},
		{"lockstep_webhook_events_total", []string{"type", "customer.subscription.updated", "outcome", "failed"}, 1},
		{"lockstep_webhook_events_total", []string{"outcome", "failed"}, 1},
		{"lockstep_webhook_secret_matched_total", []string{"secret", "1"}, 4},
		{"lockstep_webhook_secret_matched_total", []string{"secret", "2"}, 1},
		{"lockstep_webhook_rejected_total", []string{"reason", "signature"}, 1},
		{"lockstep_checkout_success_total", []string{"outcome", "paid"}, 1},
		{"lockstep_checkout_success_total", []string{"outcome", "not_found"}, 1},
		{"lockstep_ledger_events", []string{"status", "failed"}, 1},
		{"lockstep_ledger_events", []string{"status", "ignored"}, 1},
		{"lockstep_ledger_events", []string{"status", "processed"}, 2},
	} {
		if got := delta(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Only the failure retried, on lock_timeout.
	if got := mid.val("lockstep_tx_retries_total"); got != 0 {
		t.Errorf("retries before the failure: %v", got)
	}
	if got := delta("lockstep_tx_retries_total", "writer", "webhook", "sqlstate", "55P03"); got < 1 {
		t.Errorf("lockstep_tx_retries_total{sqlstate=55P03} moved by %v, want at least 1", got)
	}
	// Three transactions got a lock: the session and the subscription
	// events and the checkout. The duplicate stopped before the lock, the
	// ignored event needs none, and the failed one never got it: its
	// attempts (the first and each retry) each waited a full lock_timeout,
	// and those waits count too.
	failedAttempts := delta("lockstep_tx_retries_total", "writer", "webhook", "sqlstate", "55P03") + 1
	if got := delta("lockstep_lock_wait_seconds"); got != 3+failedAttempts {
		t.Errorf("lockstep_lock_wait_seconds count moved by %v, want %v (3 granted, %v timed out)", got, 3+failedAttempts, failedAttempts)
	}
	if got := histSum(after, "lockstep_lock_wait_seconds") - histSum(before, "lockstep_lock_wait_seconds"); got < 0.1*failedAttempts {
		t.Errorf("lock wait sum %.3fs, want at least lock_timeout (100ms) per timed-out attempt", got)
	}
	if got := delta("lockstep_lock_hold_seconds"); got != 3 {
		t.Errorf("lockstep_lock_hold_seconds count moved by %v, want 3", got)
	}
	for _, h := range []string{"lockstep_lock_wait_seconds", "lockstep_lock_hold_seconds"} {
		if got := delta(h, "writer", "checkout"); got != 1 {
			t.Errorf("%s{writer=checkout} count moved by %v, want 1", h, got)
		}
	}
	// The failure rate, as the PromQL in the README computes it.
	failed := delta("lockstep_webhook_events_total", "outcome", "failed")
	total := delta("lockstep_webhook_events_total")
	t.Logf("webhook events %v, failed %v; retries on 55P03 %v; lock waits %v (sum %.3fs), holds %v (sum %.3fs)",
		total, failed, delta("lockstep_tx_retries_total", "sqlstate", "55P03"),
		delta("lockstep_lock_wait_seconds"), histSum(after, "lockstep_lock_wait_seconds")-histSum(before, "lockstep_lock_wait_seconds"),
		delta("lockstep_lock_hold_seconds"), histSum(after, "lockstep_lock_hold_seconds")-histSum(before, "lockstep_lock_hold_seconds"))
	if total != 5 || failed/total != 0.2 {
		t.Errorf("webhook failure rate = %v/%v, want 1/5", failed, total)
	}
	// Pool statistics.
	if got := after.val("lockstep_db_pool_max_conns"); got != 10 {
		t.Errorf("lockstep_db_pool_max_conns = %v, want 10", got)
	}
	if got := after.val("lockstep_db_pool_acquires_total"); got <= before.val("lockstep_db_pool_acquires_total") {
		t.Errorf("lockstep_db_pool_acquires_total did not move: %v", got)
	}
	for _, st := range []string{"acquired", "idle", "constructing"} {
		if _, ok := after.get("lockstep_db_pool_conns", map[string]string{"state": st}); !ok {
			t.Errorf("lockstep_db_pool_conns{state=%q} missing", st)
		}
	}
	if _, ok := after.get("lockstep_http_request_duration_seconds", map[string]string{"route": "/webhooks/stripe", "code": "503"}); !ok {
		t.Errorf("no latency recorded for the webhook's 503")
	}
}
