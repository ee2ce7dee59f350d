package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"
)

// Latencies summarizes one kind of request.
type Latencies struct {
	N    int
	P50  time.Duration
	P95  time.Duration
	P99  time.Duration
	Max  time.Duration
	Mean time.Duration
}

// Summarize sorts samples in place and returns their percentiles.
func Summarize(samples []time.Duration) Latencies {
	if len(samples) == 0 {
		return Latencies{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	return Latencies{
		N:    len(samples),
		P50:  Percentile(samples, 50),
		P95:  Percentile(samples, 95),
		P99:  Percentile(samples, 99),
		Max:  samples[len(samples)-1],
		Mean: sum / time.Duration(len(samples)),
	}
}

// Percentile returns the p-th percentile (0 < p <= 100) of sorted samples by
// the nearest-rank method: the smallest sample that at least p% of the
// samples do not exceed. It returns 0 for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(n)))
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// statusKey names an answer for the errors-by-status table: the HTTP status
// code, or "transport" when no answer came.
func statusKey(code int) string {
	if code <= 0 {
		return "transport"
	}
	return strconv.Itoa(code)
}

// isError reports whether an answer counts as an error: anything but 2xx.
func isError(key string) bool {
	code, err := strconv.Atoi(key)
	return err != nil || code < 200 || code > 299
}

// ms formats a duration in milliseconds with a precision that suits it.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case d == 0:
		return "0"
	case v < 1:
		return fmt.Sprintf("%.2f", v)
	case v < 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// secondsMs formats seconds as milliseconds.
func secondsMs(s float64) string {
	if math.IsNaN(s) {
		return "-"
	}
	return ms(time.Duration(s * float64(time.Second)))
}
