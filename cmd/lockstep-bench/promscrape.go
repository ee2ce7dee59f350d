package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape is a parsed /metrics page: its metric families by name.
type Scrape map[string]*dto.MetricFamily

// ParseMetrics reads the Prometheus text exposition format.
func ParseMetrics(r io.Reader) (Scrape, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// Sum adds the values of the counters, gauges and untyped series called
// name whose labels include match.
func (sc Scrape) Sum(name string, match map[string]string) float64 {
	var total float64
	for _, m := range sc[name].GetMetric() {
		if labelsMatch(m, match) {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
		}
	}
	return total
}

// labelsMatch reports whether m has every label of want (a label m lacks
// counts as empty).
func labelsMatch(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		have := ""
		for _, l := range m.GetLabel() {
			if l.GetName() == k {
				have = l.GetValue()
			}
		}
		if have != v {
			return false
		}
	}
	return true
}

// Bucket is one cumulative histogram bucket: Count observations <= LE.
type Bucket struct {
	LE    float64
	Count float64
}

// Histogram returns the cumulative buckets of histogram name, summed over
// every series whose labels include match, in order of le, +Inf last.
func (sc Scrape) Histogram(name string, match map[string]string) []Bucket {
	byLE := map[float64]float64{}
	for _, m := range sc[name].GetMetric() {
		if !labelsMatch(m, match) {
			continue
		}
		for _, b := range m.GetHistogram().GetBucket() {
			byLE[b.GetUpperBound()] += float64(b.GetCumulativeCount()) + b.GetCumulativeCountFloat()
		}
	}
	out := make([]Bucket, 0, len(byLE))
	for le, n := range byLE {
		out = append(out, Bucket{LE: le, Count: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LE < out[j].LE })
	return out
}

// DeltaBuckets returns after minus before, bucket by bucket (a bucket
// missing before counts from zero).
func DeltaBuckets(before, after []Bucket) []Bucket {
	prev := map[float64]float64{}
	for _, b := range before {
		prev[b.LE] = b.Count
	}
	out := make([]Bucket, len(after))
	for i, b := range after {
		out[i] = Bucket{LE: b.LE, Count: b.Count - prev[b.LE]}
	}
	return out
}

// HistogramQuantile estimates the q-quantile (0..1) of cumulative buckets
// the way Prometheus's histogram_quantile does: find the bucket holding the
// rank, interpolate linearly inside it (from 0 for the first bucket). A rank
// in the +Inf bucket returns the largest finite bound. It returns NaN when
// the buckets hold no observation.
func HistogramQuantile(q float64, buckets []Bucket) float64 {
	if len(buckets) == 0 {
		return math.NaN()
	}
	total := buckets[len(buckets)-1].Count
	if !math.IsInf(buckets[len(buckets)-1].LE, 1) || total <= 0 {
		return math.NaN()
	}
	rank := q * total
	for i, b := range buckets {
		if b.Count < rank {
			continue
		}
		if math.IsInf(b.LE, 1) {
			if i == 0 {
				return math.NaN()
			}
			return buckets[i-1].LE
		}
		lower, below := 0.0, 0.0
		if i > 0 {
			lower, below = buckets[i-1].LE, buckets[i-1].Count
		}
		if b.Count == below {
			return b.LE
		}
		return lower + (b.LE-lower)*(rank-below)/(b.Count-below)
	}
	return buckets[len(buckets)-2].LE
}

// Count returns the number of observations in cumulative buckets.
func Count(buckets []Bucket) float64 {
	if len(buckets) == 0 {
		return 0
	}
	return buckets[len(buckets)-1].Count
}

// scrapeMetrics fetches and parses base/metrics, with token as a bearer
// token when set.
func scrapeMetrics(ctx context.Context, client *http.Client, base, token string) (Scrape, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s/metrics: %w", base, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s/metrics: status %d", base, res.StatusCode)
	}
	return ParseMetrics(res.Body)
}
