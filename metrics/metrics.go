// Package metrics defines lockstep's Prometheus metrics and serves them.
// Counters and histograms move where things happen; pool statistics are
// read when /metrics is scraped, ledger counts at most every LedgerMaxAge.
//
// Label values come from small fixed sets (outcomes, reasons, SQLSTATEs,
// writers, route templates) or from Stripe's own event types, which only a
// request signed with a configured secret can name; nothing a stranger sends
// becomes a label.
//
// The webhook failure rate over five minutes is
//
//	sum(rate(lockstep_webhook_events_total{outcome="failed"}[5m]))
//	  / sum(rate(lockstep_webhook_events_total[5m]))
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "lockstep"

// lockBuckets span a free lock (sub-millisecond) to a lock_timeout.
var lockBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// Metrics holds every collector. Its methods are safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	webhookEvents    *prometheus.CounterVec
	webhookRejected  *prometheus.CounterVec
	secretMatched    *prometheus.CounterVec
	checkoutOutcomes *prometheus.CounterVec
	replays          *prometheus.CounterVec
	retries          *prometheus.CounterVec
	lockWait         *prometheus.HistogramVec
	lockHold         *prometheus.HistogramVec
	httpDuration     *prometheus.HistogramVec
	sweepRecovered   prometheus.Counter
	sweepErrors      prometheus.Counter
	stripeRequests   *prometheus.CounterVec
	stripeWait       *prometheus.HistogramVec
	accessDecisions  *prometheus.CounterVec
	// httpObservers caches httpDuration's children by route and status:
	// a request then costs one map read, not a label hash and lookup.
	httpObservers sync.Map // httpKey -> prometheus.Observer
	// accessCounters are accessDecisions' children, by label.
	accessCounters map[string]prometheus.Counter

	ledger *ledgerCollector // nil until RegisterLedger
}

// New registers lockstep's collectors on a fresh registry.
func New() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.webhookEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "webhook_events_total",
		Help: "Verified webhook events by type and outcome (processed, duplicate, ignored, failed).",
	}, []string{"type", "outcome"})
	m.webhookRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "webhook_rejected_total",
		Help: "Webhook requests rejected before processing, by reason (signature, too_old, malformed, too_large).",
	}, []string{"reason"})
	m.secretMatched = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "webhook_secret_matched_total",
		Help: "Verified webhooks by the position (1-based) in STRIPE_WEBHOOK_SECRET of the secret that matched; a rotated-out secret at 0 can be retired.",
	}, []string{"secret"})
	m.checkoutOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "checkout_success_total",
		Help: "Checkout-success calls by outcome: paid, pending, or the HTTP status of a failed call in snake case (not_found, forbidden, gone, bad_request, bad_gateway, service_unavailable, internal_server_error, other).",
	}, []string{"outcome"})
	m.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "replay_events_total",
		Help: "Events replayed through POST /admin/events/{id}/replay, by outcome (processed, duplicate, ignored, failed, not_found).",
	}, []string{"outcome"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "tx_retries_total",
		Help: "Customer transactions retried after a transient failure, by writer and SQLSTATE (connection for a dropped connection).",
	}, []string{"writer", "sqlstate"})
	m.lockWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "lock_wait_seconds",
		Help: "Time spent waiting for a customer's advisory lock, by writer.", Buckets: lockBuckets,
	}, []string{"writer"})
	m.lockHold = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "lock_hold_seconds",
		Help: "Time a customer's advisory lock was held (lock to commit or rollback), by writer.", Buckets: lockBuckets,
	}, []string{"writer"})
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "http_request_duration_seconds",
		Help: "HTTP request latency by route and status code.", Buckets: prometheus.DefBuckets,
	}, []string{"route", "code"})
	m.sweepRecovered = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "sweep_events_recovered_total",
		Help: "Events the sweeper found in Stripe's Events API but not in the ledger, and processed.",
	})
	m.sweepErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: namespace, Name: "sweep_errors_total",
		Help: "Sweeper passes that ended in an error (Stripe or the database); the next pass starts from the same cursor.",
	})
	m.stripeRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "stripe_api_requests_total",
		Help: "Requests to Stripe's API by share of the budget (live: checkout-success and same-second reads; bulk: sync, verify, sweep) and answer (2xx, 4xx, 429, 5xx, error).",
	}, []string{"share", "code"})
	m.stripeWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "stripe_api_budget_wait_seconds",
		Help: "Time a Stripe API call waited for the client-side budget (STRIPE_API_RPS), by share.", Buckets: lockBuckets,
	}, []string{"share"})
	m.Registry.MustRegister(m.webhookEvents, m.webhookRejected, m.secretMatched, m.checkoutOutcomes,
		m.replays, m.retries, m.lockWait, m.lockHold, m.httpDuration,
		m.sweepRecovered, m.sweepErrors, m.stripeRequests, m.stripeWait, unknownEnums,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Series that exist from the start read 0 rather than "no data", so
	// rates and ratios over them are defined before the first event.
	for _, o := range checkoutOutcomeNames {
		m.checkoutOutcomes.WithLabelValues(o)
	}
	for _, r := range []string{"signature", "too_old", "malformed", "too_large"} {
		m.webhookRejected.WithLabelValues(r)
	}
	for _, o := range []string{"processed", "duplicate", "ignored", "failed", "not_found"} {
		m.replays.WithLabelValues(o)
	}
	for _, share := range []string{"live", "bulk"} {
		for _, code := range []string{"2xx", "4xx", "429", "5xx", "error"} {
			m.stripeRequests.WithLabelValues(share, code)
		}
	}
	m.accessDecisions, m.accessCounters = newAccessDecisions(m.Registry)
	return m
}

// InitSecrets creates the secret-matched series for each of n configured
// webhook secrets at 0, so a secret that never matches reads 0 and not
// "no data".
func (m *Metrics) InitSecrets(n int) {
	for i := range n {
		m.secretMatched.WithLabelValues(strconv.Itoa(i + 1))
	}
}

// WebhookEvent counts a verified event's outcome.
func (m *Metrics) WebhookEvent(typ, outcome string) {
	m.webhookEvents.WithLabelValues(typ, outcome).Inc()
}

// WebhookRejected counts a webhook request refused before processing.
func (m *Metrics) WebhookRejected(reason string) { m.webhookRejected.WithLabelValues(reason).Inc() }

// SecretMatched counts which configured secret (0-based index) verified a webhook.
func (m *Metrics) SecretMatched(i int) { m.secretMatched.WithLabelValues(strconv.Itoa(i + 1)).Inc() }

// checkoutOutcomeNames is every value of checkout_success_total's label.
var checkoutOutcomeNames = []string{"paid", "pending", "bad_request", "forbidden", "not_found", "gone",
	"bad_gateway", "service_unavailable", "internal_server_error", "other"}

// CheckoutOutcome counts a checkout-success call's outcome: "paid",
// "pending", or for a failed call its HTTP status text ("Not Found") or the
// same in snake case ("not_found"). The label is always one of a fixed set
// of lowercase words; anything else counts as "other".
func (m *Metrics) CheckoutOutcome(outcome string) {
	m.checkoutOutcomes.WithLabelValues(CheckoutLabel(outcome)).Inc()
}

// CheckoutLabel is the label value CheckoutOutcome records for outcome.
func CheckoutLabel(outcome string) string {
	o := strings.ToLower(strings.Join(strings.Fields(outcome), "_"))
	for _, known := range checkoutOutcomeNames {
		if o == known {
			return o
		}
	}
	return "other"
}

// Replayed counts an admin replay's outcome.
func (m *Metrics) Replayed(outcome string) { m.replays.WithLabelValues(outcome).Inc() }

// ObserveHTTP records one request's latency.
func (m *Metrics) ObserveHTTP(route string, code int, d time.Duration) {
	k := httpKey{route, code}
	o, ok := m.httpObservers.Load(k)
	if !ok {
		o, _ = m.httpObservers.LoadOrStore(k, m.httpDuration.WithLabelValues(route, strconv.Itoa(code)))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
}

type httpKey struct {
	route string
	code  int
}

// LockWaited implements lockmgr.Observer.
func (m *Metrics) LockWaited(writer string, d time.Duration) {
	m.lockWait.WithLabelValues(writer).Observe(d.Seconds())
}

// LockHeld implements lockmgr.Observer.
func (m *Metrics) LockHeld(writer string, d time.Duration) {
	m.lockHold.WithLabelValues(writer).Observe(d.Seconds())
}

// Retried implements lockmgr.Observer.
func (m *Metrics) Retried(writer, sqlstate string) { m.retries.WithLabelValues(writer, sqlstate).Inc() }

// SweepRecovered counts events the sweeper processed because the ledger
// lacked them.
func (m *Metrics) SweepRecovered(n int) { m.sweepRecovered.Add(float64(n)) }

// SweepFailed counts a sweeper pass that ended in an error.
func (m *Metrics) SweepFailed() { m.sweepErrors.Inc() }

// StripeRequest counts one answer (or transport error, status 0) from
// Stripe's API for a share of the budget ("live" or "bulk").
func (m *Metrics) StripeRequest(share string, status int) {
	code := "error"
	switch {
	case status == http.StatusTooManyRequests:
		code = "429"
	case status >= 200 && status < 300:
		code = "2xx"
	case status >= 400 && status < 500:
		code = "4xx"
	case status >= 500:
		code = "5xx"
	}
	m.stripeRequests.WithLabelValues(share, code).Inc()
}

// StripeBudgetWaited records how long a Stripe call waited for the
// client-side budget.
func (m *Metrics) StripeBudgetWaited(share string, d time.Duration) {
	m.stripeWait.WithLabelValues(share).Observe(d.Seconds())
}

// Convergence is what the database says of the sweeper and of verify runs,
// read at scrape time so that runs of the CLI count too.
type Convergence struct {
	// SweepCursor is the Stripe time up to which the Events API has been
	// swept; zero before the first sweep.
	SweepCursor time.Time
	// DriftFound and DriftRepaired count differences by "object.field"
	// (subscription.status), over every verify run recorded.
	DriftFound, DriftRepaired map[string]int64
}

// ConvergenceReader reads Convergence from the database.
type ConvergenceReader func(ctx context.Context) (Convergence, error)

// RegisterConvergence exports the sweep lag and the drift counts at scrape
// time.
func (m *Metrics) RegisterConvergence(read ConvergenceReader, log *slog.Logger) {
	m.Registry.MustRegister(&convergenceCollector{read: read, log: log, now: time.Now})
}

// RegisterPool exports the pool's statistics at scrape time.
func (m *Metrics) RegisterPool(pool *pgxpool.Pool) {
	m.Registry.MustRegister(&poolCollector{pool: pool})
}

// LedgerCounter reads the ledger's row counts by status.
type LedgerCounter func(ctx context.Context) (map[string]int64, error)

// LedgerMaxAge is how old the ledger counts a scrape exports may be.
//
// Counting stripe_events reads the whole ledger (tens of milliseconds at
// 100k rows, growing with it), so a scrape does not count: it exports the
// counts read by an earlier scrape when they are younger than this, and
// only one read runs at a time; scrapes that arrive during it wait for its
// result (a singleflight). However many scrapers there are, the ledger is
// read at most once per LedgerMaxAge. 15 s is Prometheus's usual scrape
// interval, so one scraper sees counts at most one interval old. A failed
// read is remembered as long, so a database that is down is not asked by
// every scrape.
const LedgerMaxAge = 15 * time.Second

// RegisterLedger exports stripe_events counts by status, read at most once
// per LedgerMaxAge (see SetLedgerMaxAge).
func (m *Metrics) RegisterLedger(count LedgerCounter, log *slog.Logger) {
	m.ledger = &ledgerCollector{count: count, log: log, maxAge: LedgerMaxAge, now: time.Now}
	m.Registry.MustRegister(m.ledger)
}

// SetLedgerMaxAge changes how old exported ledger counts may be; 0 reads
// them at every scrape, concurrently, as lockstep did before the cache (for
// tests that compare counts between scrapes, and to measure the cache).
// It applies to the next scrape.
func (m *Metrics) SetLedgerMaxAge(d time.Duration) {
	if m.ledger == nil {
		return
	}
	m.ledger.mu.Lock()
	defer m.ledger.mu.Unlock()
	m.ledger.maxAge = d
	m.ledger.at = time.Time{}
}

// Handler serves the registry in Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

var (
	ledgerDesc = prometheus.NewDesc(namespace+"_ledger_events", "stripe_events rows by status.", []string{"status"}, nil)
	poolDescs  = map[string]*prometheus.Desc{
		"total":        prometheus.NewDesc(namespace+"_db_pool_conns", "Connections in the pool, by state.", []string{"state"}, nil),
		"max":          prometheus.NewDesc(namespace+"_db_pool_max_conns", "Largest size the pool may grow to.", nil, nil),
		"acquires":     prometheus.NewDesc(namespace+"_db_pool_acquires_total", "Successful acquires from the pool.", nil, nil),
		"empty":        prometheus.NewDesc(namespace+"_db_pool_empty_acquires_total", "Acquires that had to wait for a connection.", nil, nil),
		"acquire_wait": prometheus.NewDesc(namespace+"_db_pool_acquire_wait_seconds_total", "Total time spent waiting to acquire a connection.", nil, nil),
		"canceled":     prometheus.NewDesc(namespace+"_db_pool_canceled_acquires_total", "Acquires given up because their context ended first.", nil, nil),
		"new_conns":    prometheus.NewDesc(namespace+"_db_pool_new_conns_total", "Connections opened by the pool.", nil, nil),
	}
)

var (
	sweepLagDesc = prometheus.NewDesc(namespace+"_sweep_lag_seconds",
		"Age of the sweeper's cursor: how far behind now the Events API has been swept (absent before the first sweep).", nil, nil)
	driftFoundDesc = prometheus.NewDesc(namespace+"_drift_found_total",
		"Differences between stored state and Stripe's found by lockstep verify, by object and field.", []string{"object", "field"}, nil)
	driftRepairedDesc = prometheus.NewDesc(namespace+"_drift_repaired_total",
		"Differences mended by lockstep verify --repair, by object and field.", []string{"object", "field"}, nil)
)

type convergenceCollector struct {
	read ConvergenceReader
	log  *slog.Logger
	now  func() time.Time
}

func (c *convergenceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sweepLagDesc
	ch <- driftFoundDesc
	ch <- driftRepairedDesc
}

func (c *convergenceCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := c.read(ctx)
	if err != nil {
		c.log.Warn("metrics: cannot read convergence state", slog.String("error", err.Error()))
		return
	}
	if !st.SweepCursor.IsZero() {
		ch <- prometheus.MustNewConstMetric(sweepLagDesc, prometheus.GaugeValue, max(0, c.now().Sub(st.SweepCursor).Seconds()))
	}
	for desc, counts := range map[*prometheus.Desc]map[string]int64{driftFoundDesc: st.DriftFound, driftRepairedDesc: st.DriftRepaired} {
		for key, n := range counts {
			object, field, _ := strings.Cut(key, ".")
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(n), object, field)
		}
	}
}

type ledgerCollector struct {
	count LedgerCounter
	log   *slog.Logger
	now   func() time.Time

	mu     sync.Mutex // held across a read: one at a time, the others wait for it
	maxAge time.Duration
	at     time.Time // of the last read; zero before the first
	counts map[string]int64
	err    error
}

func (c *ledgerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- ledgerDesc }

// read returns the last counts when younger than maxAge, else reads them;
// at maxAge 0 every scrape reads, concurrently.
func (c *ledgerCollector) read() (map[string]int64, error) {
	c.mu.Lock()
	if c.maxAge <= 0 {
		c.mu.Unlock()
		return c.readNow()
	}
	defer c.mu.Unlock()
	if !c.at.IsZero() && c.now().Sub(c.at) < c.maxAge {
		return c.counts, c.err
	}
	c.counts, c.err = c.readNow()
	c.at = c.now()
	return c.counts, c.err
}

func (c *ledgerCollector) readNow() (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		c.log.Warn("metrics: cannot count ledger", slog.String("error", err.Error()))
	}
	return counts, err
}

func (c *ledgerCollector) Collect(ch chan<- prometheus.Metric) {
	counts, err := c.read()
	if err != nil {
		return
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(ledgerDesc, prometheus.GaugeValue, float64(n), st)
	}
}

type poolCollector struct{ pool *pgxpool.Pool }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range poolDescs {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolDescs["total"], prometheus.GaugeValue, float64(s.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolDescs["total"], prometheus.GaugeValue, float64(s.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolDescs["total"], prometheus.GaugeValue, float64(s.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolDescs["max"], prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolDescs["acquires"], prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolDescs["empty"], prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolDescs["acquire_wait"], prometheus.CounterValue, s.AcquireDuration().Seconds())
	ch <- prometheus.MustNewConstMetric(poolDescs["canceled"], prometheus.CounterValue, float64(s.CanceledAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolDescs["new_conns"], prometheus.CounterValue, float64(s.NewConnsCount()))
}
