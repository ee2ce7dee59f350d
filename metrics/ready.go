package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var readyDesc = prometheus.NewDesc(namespace+"_ready",
	"1 when this process's database answers and its schema is the version the binary expects (what /readyz answers 200 for), else 0; read at scrape.",
	nil, nil)

// RegisterReady exports lockstep_ready, the answer of check at scrape time:
// 1 for nil, 0 for an error. Alerts read it, because a process that is up
// (up == 1) may still be unable to reach its database.
func (m *Metrics) RegisterReady(check func(ctx context.Context) error) {
	m.Registry.MustRegister(readyCollector{check: check})
}

type readyCollector struct {
	check func(ctx context.Context) error
}

func (c readyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- readyDesc }

func (c readyCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v := 1.0
	if c.check(ctx) != nil {
		v = 0
	}
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, v)
}
