// Package metrics defines lockstep's Prometheus metrics and serves them.
// Counters and histograms move where things happen; ledger counts and pool
// statistics are read when /metrics is scraped.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
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
	retries          *prometheus.CounterVec
	lockWait         *prometheus.HistogramVec
	lockHold         *prometheus.HistogramVec
	httpDuration     *prometheus.HistogramVec
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
		Help: "Checkout-success calls by outcome.",
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
	m.Registry.MustRegister(m.webhookEvents, m.webhookRejected, m.secretMatched, m.checkoutOutcomes,
		m.retries, m.lockWait, m.lockHold, m.httpDuration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// WebhookEvent counts a verified event's outcome.
func (m *Metrics) WebhookEvent(typ, outcome string) {
	m.webhookEvents.WithLabelValues(typ, outcome).Inc()
}

// WebhookRejected counts a webhook request refused before processing.
func (m *Metrics) WebhookRejected(reason string) { m.webhookRejected.WithLabelValues(reason).Inc() }

// SecretMatched counts which configured secret (0-based index) verified a webhook.
func (m *Metrics) SecretMatched(i int) { m.secretMatched.WithLabelValues(strconv.Itoa(i + 1)).Inc() }

// CheckoutOutcome counts a checkout-success call's outcome.
func (m *Metrics) CheckoutOutcome(outcome string) { m.checkoutOutcomes.WithLabelValues(outcome).Inc() }

// ObserveHTTP records one request's latency.
func (m *Metrics) ObserveHTTP(route string, code int, d time.Duration) {
	m.httpDuration.WithLabelValues(route, strconv.Itoa(code)).Observe(d.Seconds())
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

// RegisterPool exports the pool's statistics at scrape time.
func (m *Metrics) RegisterPool(pool *pgxpool.Pool) {
	m.Registry.MustRegister(&poolCollector{pool: pool})
}

// LedgerCounter reads the ledger's row counts by status.
type LedgerCounter func(ctx context.Context) (map[string]int64, error)

// RegisterLedger exports stripe_events counts by status at scrape time.
func (m *Metrics) RegisterLedger(count LedgerCounter, log *slog.Logger) {
	m.Registry.MustRegister(&ledgerCollector{count: count, log: log})
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
	}
)

type ledgerCollector struct {
	count LedgerCounter
	log   *slog.Logger
}

func (c *ledgerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- ledgerDesc }

func (c *ledgerCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		c.log.Warn("metrics: cannot count ledger", slog.String("error", err.Error()))
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
}
