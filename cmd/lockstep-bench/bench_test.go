package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/scripts/pgbench"
	"github.com/lockstep/lockstep/stripeapi"
)

func TestPercentile(t *testing.T) {
	t.Parallel()
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100..1, unsorted
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 99, 0},
		{"one", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"median of four is the second", ms(4, 1, 3, 2), 50, 2 * time.Millisecond},
		{"p100 is the max", ms(4, 1, 3, 2), 100, 4 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p95 of 1..100", ms(hundred...), 95, 95 * time.Millisecond},
		{"p50 of 1..100", ms(hundred...), 50, 50 * time.Millisecond},
		{"p99 of ten is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := Summarize(tt.samples)
			got := Percentile(tt.samples, tt.p) // sorted by Summarize
			if got != tt.want {
				t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
			}
			if l.N != len(tt.samples) {
				t.Errorf("N = %d, want %d", l.N, len(tt.samples))
			}
		})
	}
	l := Summarize(ms(hundred...))
	if l.P50 != 50*time.Millisecond || l.P95 != 95*time.Millisecond || l.P99 != 99*time.Millisecond ||
		l.Max != 100*time.Millisecond || l.Mean != 50500*time.Microsecond {
		t.Errorf("Summarize(1..100) = %+v", l)
	}
}

const metricsBefore = `# HELP lockstep_lock_wait_seconds Time spent waiting for a customer's advisory lock, by writer.
# TYPE lockstep_lock_wait_seconds histogram
lockstep_lock_wait_seconds_bucket{writer="webhook",le="0.001"} 10
lockstep_lock_wait_seconds_bucket{writer="webhook",le="0.01"} 10
lockstep_lock_wait_seconds_bucket{writer="webhook",le="0.1"} 10
lockstep_lock_wait_seconds_bucket{writer="webhook",le="+Inf"} 10
lockstep_lock_wait_seconds_sum{writer="webhook"} 0.005
lockstep_lock_wait_seconds_count{writer="webhook"} 10
# TYPE lockstep_tx_retries_total counter
lockstep_tx_retries_total{writer="webhook",sqlstate="55P03"} 2
`

const metricsAfter = `# TYPE lockstep_lock_wait_seconds histogram
lockstep_lock_wait_seconds_bucket{writer="checkout",le="0.001"} 0
lockstep_lock_wait_seconds_bucket{writer="checkout",le="0.01"} 0
lockstep_lock_wait_seconds_bucket{writer="checkout",le="0.1"} 100
lockstep_lock_wait_seconds_bucket{writer="checkout",le="+Inf"} 100
lockstep_lock_wait_seconds_bucket{writer="webhook",le="0.001"} 910
lockstep_lock_wait_seconds_bucket{writer="webhook",le="0.01"} 1000
lockstep_lock_wait_seconds_bucket{writer="webhook",le="0.1"} 1010
lockstep_lock_wait_seconds_bucket{writer="webhook",le="+Inf"} 1010
# TYPE lockstep_tx_retries_total counter
lockstep_tx_retries_total{writer="webhook",sqlstate="55P03"} 5
lockstep_tx_retries_total{writer="checkout",sqlstate="connection"} 1
lockstep_http_request_duration_seconds_bucket{route="/webhooks/stripe",code="200",le="0.005"} 3 1700000000000
process_resident_memory_bytes 3.1e+07
`

func TestHistogramDeltaP99(t *testing.T) {
	t.Parallel()
	before, err := ParseMetrics(strings.NewReader(metricsBefore))
	if err != nil {
		t.Fatal(err)
	}
	after, err := ParseMetrics(strings.NewReader(metricsAfter))
	if err != nil {
		t.Fatal(err)
	}
	webhook := map[string]string{"writer": "webhook"}
	delta := DeltaBuckets(before.Histogram("lockstep_lock_wait_seconds", webhook), after.Histogram("lockstep_lock_wait_seconds", webhook))
	// 1000 new waits: 900 under 1 ms, 90 in (1 ms, 10 ms], 10 in (10 ms, 100 ms].
	if got := Count(delta); got != 1000 {
		t.Fatalf("delta count = %v, want 1000", got)
	}
	// Rank 990 is the last of the (1 ms, 10 ms] bucket: its upper bound.
	if got := HistogramQuantile(0.99, delta); math.Abs(got-0.01) > 1e-9 {
		t.Errorf("p99 = %v, want 0.01", got)
	}
	// Rank 500 of 900 in the first bucket: interpolated from 0.
	if got, want := HistogramQuantile(0.5, delta), 0.001*500/900; math.Abs(got-want) > 1e-9 {
		t.Errorf("p50 = %v, want %v", got, want)
	}
	// Rank 995: 5 of the 10 in (10 ms, 100 ms].
	if got := HistogramQuantile(0.995, delta); math.Abs(got-0.055) > 1e-9 {
		t.Errorf("p99.5 = %v, want 0.055", got)
	}

	// All writers: the checkout series has no "before" and counts from zero.
	all := DeltaBuckets(before.Histogram("lockstep_lock_wait_seconds", nil), after.Histogram("lockstep_lock_wait_seconds", nil))
	if got := Count(all); got != 1100 {
		t.Fatalf("all writers: count = %v, want 1100", got)
	}
	// Rank 1089 of 1100: 99 into the 110 of (10 ms, 100 ms].
	if got, want := HistogramQuantile(0.99, all), 0.01+0.09*99/110; math.Abs(got-want) > 1e-9 {
		t.Errorf("all writers p99 = %v, want %v", got, want)
	}

	if got := after.Sum("lockstep_tx_retries_total", nil) - before.Sum("lockstep_tx_retries_total", nil); got != 4 {
		t.Errorf("retries delta = %v, want 4", got)
	}
	if got := after.Sum("process_resident_memory_bytes", nil); got != 3.1e7 {
		t.Errorf("unlabelled sample = %v", got)
	}
	if got := HistogramQuantile(0.99, DeltaBuckets(after.Histogram("lockstep_lock_wait_seconds", webhook), after.Histogram("lockstep_lock_wait_seconds", webhook))); !math.IsNaN(got) {
		t.Errorf("quantile of an empty delta = %v, want NaN", got)
	}
}

func TestHistogramQuantileInInfBucket(t *testing.T) {
	t.Parallel()
	b := []Bucket{{0.5, 1}, {1, 2}, {math.Inf(1), 100}}
	if got := HistogramQuantile(0.99, b); got != 1 {
		t.Errorf("rank in +Inf bucket = %v, want the largest finite bound 1", got)
	}
}

func TestParseMetricsRejectsGarbage(t *testing.T) {
	t.Parallel()
	for _, in := range []string{`x{a="b} 1`, `x{a=b} 1`, `x{a="b"}`, `x not-a-number`} {
		if _, err := ParseMetrics(strings.NewReader(in)); err == nil {
			t.Errorf("ParseMetrics(%q) succeeded", in)
		}
	}
	s, err := ParseMetrics(strings.NewReader(`x{a="q\"uote",b="c"} 2` + "\n"))
	if err != nil || s.Sum("x", map[string]string{"a": `q"uote`, "b": "c"}) != 2 || s.Sum("x", map[string]string{"a": "q"}) != 0 {
		t.Errorf("escaped label: %v, %v", s, err)
	}
}

const pgbench15 = `pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: /tmp/lockstep-pgbench-1/event.sql
scaling factor: 1
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 19212
number of failed transactions: 0 (0.000%)
latency average = 4.153 ms
initial connection time = 22.145 ms
tps = 3852.630473 (without initial connection time)
`

const pgbench13 = `transaction type: event.sql
scaling factor: 1
query mode: prepared
number of clients: 4
number of threads: 2
duration: 3 s
number of transactions actually processed: 7000
latency average = 1.700 ms
tps = 2300.100000 (including connections establishing)
tps = 2350.500000 (excluding connections establishing)
`

func TestParsePgbench(t *testing.T) {
	t.Parallel()
	r, err := ParsePgbench(pgbench15)
	if err != nil {
		t.Fatal(err)
	}
	if r.TPS != 3852.630473 || r.Transactions != 19212 || r.Failed != 0 || r.Clients != 16 ||
		r.Duration != 5*time.Second || r.LatencyAvg != 4153*time.Microsecond {
		t.Errorf("pgbench 15: %+v", r)
	}
	r, err = ParsePgbench(pgbench13)
	if err != nil {
		t.Fatal(err)
	}
	if r.TPS != 2350.5 || r.Transactions != 7000 || r.Clients != 4 {
		t.Errorf("pgbench 13 (tps excluding connections): %+v", r)
	}
	if _, err := ParsePgbench("pgbench: error: connection to server failed\n"); !errors.Is(err, ErrNoTPS) {
		t.Errorf("no tps: err = %v, want ErrNoTPS", err)
	}
}

func TestParsePgbenchLog(t *testing.T) {
	t.Parallel()
	log := "0 1 6482 0 1795430771 171603\n1 1 1000 0 1795430771 171663\n" +
		"2 7 failed 0 1795430771 171700 0 1\n\n3 1 2500 0 1795430771 173028\n"
	got, err := parsePgbenchLog(strings.NewReader(log), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Duration{6482 * time.Microsecond, 1000 * time.Microsecond, 2500 * time.Microsecond}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("sample %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestLibpqURL(t *testing.T) {
	t.Parallel()
	got := LibpqURL("postgres://u:p@127.0.0.1:5432/db?sslmode=disable&pool_max_conns=20&default_query_exec_mode=exec")
	if got != "postgres://u:p@127.0.0.1:5432/db?sslmode=disable" {
		t.Errorf("LibpqURL = %q", got)
	}
}

func TestParseConcurrency(t *testing.T) {
	t.Parallel()
	got, err := ParseConcurrency(" 1, 4,16 ")
	if err != nil || len(got) != 3 || got[0] != 1 || got[1] != 4 || got[2] != 16 {
		t.Errorf("ParseConcurrency = %v, %v", got, err)
	}
	for _, bad := range []string{"", "0", "4,x", "2000", ","} {
		if _, err := ParseConcurrency(bad); err == nil {
			t.Errorf("ParseConcurrency(%q) succeeded", bad)
		}
	}
}

func TestParseArgs(t *testing.T) {
	t.Parallel()
	o, err := ParseArgs([]string{"-concurrency", "1,4", "-hot", "-events", "500", "-target", "http://127.0.0.1:8080/"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Mode() != "hot" || o.Events != 500 || o.Target != "http://127.0.0.1:8080" || o.Customers != 1000 || o.Duration != 10*time.Second ||
		!o.Reference || !o.Stepwise {
		t.Errorf("options: %+v", o)
	}
	if o, err := ParseArgs([]string{"-stepwise=false"}, io.Discard); err != nil || !o.Reference || o.Stepwise {
		t.Errorf("-stepwise=false: %+v, %v", o, err)
	}
	var help bytes.Buffer
	if _, err := ParseArgs([]string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) || !strings.Contains(help.String(), "STRIPE_API_BASE") {
		t.Errorf("-h: err %v, usage %q", err, help.String())
	}
	if o, err := ParseArgs([]string{"-scrapers", "8", "-scrape-interval", "1s", "-ledger-rows", "100000", "-ledger-max-age", "0s"}, io.Discard); err != nil ||
		o.Scrapers != 8 || o.ScrapeInterval != time.Second || o.LedgerRows != 100000 || o.LedgerMaxAge != "0s" {
		t.Errorf("-scrapers ...: %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"-hot", "-storm"}, {"-storm", "-customers", "1"}, {"-dup", "1.5"}, {"-target", "127.0.0.1:8080"}, {"extra"},
		{"-scrapers", "-1"}, {"-ledger-rows", "-5"}, {"-ledger-rows", "10", "-target", "http://127.0.0.1:8080"}, {"-ledger-max-age", "soon"}} {
		if _, err := ParseArgs(bad, io.Discard); err == nil {
			t.Errorf("ParseArgs(%q) succeeded", bad)
		}
	}
}

// The template renders events lockstep accepts, with the ids and time asked for.
func TestEventTemplate(t *testing.T) {
	t.Parallel()
	tmpl := newEventTemplate()
	body := tmpl.render(nil, "evt_bench_x_", 42, "cus_bench_x_7", "sub_bench_x_7", 1234567890)
	ev, err := stripeapi.ParseEvent(body)
	if err != nil {
		t.Fatalf("ParseEvent: %v\n%s", err, body)
	}
	if _, err := stripeapi.ParseSubscription(ev.Object); err != nil {
		t.Fatalf("the event's subscription: %v", err)
	}
	if ev.ID != "evt_bench_x_42" || ev.Type != EventType || ev.Created.Unix() != 1234567890 {
		t.Errorf("event %s %s %v", ev.ID, ev.Type, ev.Created)
	}
	sub, err := stripeapi.ParseSubscription(ev.Object)
	if err != nil {
		t.Fatal(err)
	}
	if sub.ID != "sub_bench_x_7" || sub.CustomerID != "cus_bench_x_7" || sub.Status != "active" || sub.PriceID != "price_bench" {
		t.Errorf("subscription %+v", sub)
	}
	if !json.Valid(body) || bytes.Contains(body, []byte("TMPL")) {
		t.Errorf("body keeps a marker or is not JSON:\n%s", body)
	}
}

func TestWorkloadEventsGetNewer(t *testing.T) {
	t.Parallel()
	fake := stripefake.Start()
	defer fake.Close()
	w := newWorkload("t1", 3, false, false, 0.2, 0.1, fake)
	a, b := w.newEvent(1), w.newEvent(1)
	if b.created <= a.created || b.n == a.n {
		t.Errorf("second event of a customer %+v is not newer than %+v", b, a)
	}
	if ev, ok := w.redelivery(); !ok || (ev != a && ev != b) {
		t.Errorf("redelivery = %+v, %v", ev, ok)
	}
	hot := newWorkload("t2", 1000, true, false, 0, 0, fake)
	if len(hot.customers) != 1 || hot.eventCustomer() != 0 {
		t.Errorf("hot workload has %d customers", len(hot.customers))
	}
	storm := newWorkload("t3", 5, false, true, 0, 0, fake)
	for range 50 {
		if storm.eventCustomer() != 0 || storm.successCustomer() == 0 {
			t.Fatal("storm: webhooks must go to customer 0 and success calls elsewhere")
		}
	}
}

func TestMarkdown(t *testing.T) {
	t.Parallel()
	rep := &Report{
		Config: Config{Options: Options{Customers: 1000, Concurrency: []int{1, 4, 16}, Duration: 5 * time.Second, Dup: 0.2, Success: 0.1}, Command: "lockstep-bench"},
		Run:    "abcd",
	}
	for i, c := range []int{1, 4, 16} {
		lvl := Level{Concurrency: c, RPS: float64(400 * (i + 1)), Requests: 100,
			Webhook:     Latencies{N: 90, P50: time.Millisecond, P99: time.Duration(i+2) * time.Millisecond},
			Success:     Latencies{N: 10, P99: 5 * time.Millisecond},
			LockWaitP99: Seconds{"": 0.001}, LockHoldP99: Seconds{"": math.NaN()}}
		if i < 2 { // the last level's reference failed
			lvl.Reference = &Reference{TPS: float64(600 * (i + 1)), Latencies: Latencies{N: 5, P99: time.Millisecond}}
			lvl.Ratio = lvl.RPS / lvl.Reference.TPS
		} else {
			lvl.ReferenceErr = "pgbench: exit status 1"
		}
		rep.Levels = append(rep.Levels, lvl)
	}
	if hasStepwise(rep) {
		t.Error("no level ran the stepwise reference, yet hasStepwise")
	}
	js, err := json.Marshal(rep)
	if err != nil || !bytes.Contains(js, []byte(`"LockHoldP99":{"":null}`)) {
		t.Errorf("report JSON: %v\n%s", err, js)
	}
	md := Markdown(rep)
	for _, want := range []string{"| 16 | 1200 |", "0.67", "pgbench: exit status 1"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	for _, unwanted := range []string{"stepwise", "one statement per round trip"} {
		if strings.Contains(md, unwanted) {
			t.Errorf("report without a stepwise reference mentions %q:\n%s", unwanted, md)
		}
	}
	var out bytes.Buffer
	printSummary(&out, rep)
	if strings.Contains(out.String(), "step") {
		t.Errorf("summary without a stepwise reference has its columns:\n%s", out.String())
	}
}

// stepwiseReport has both references at every level but where one failed.
func stepwiseReport() *Report {
	rep := &Report{
		Config: Config{Options: Options{Customers: 1000, Concurrency: []int{1, 4, 16}, Duration: 4 * time.Second, Dup: 0.2, Success: 0.1,
			Reference: true, Stepwise: true}, Command: "lockstep-bench", InProcess: true},
		Run: "abcd",
	}
	for i, c := range []int{1, 4, 16} {
		lvl := Level{Concurrency: c, RPS: float64(500 * (i + 1)), Requests: 100, Elapsed: time.Second,
			Webhook:     Latencies{N: 90, P50: time.Millisecond, P99: time.Duration(i+2) * time.Millisecond},
			Success:     Latencies{N: 10, P99: 5 * time.Millisecond},
			LockWaitP99: Seconds{"": 0.001}, LockHoldP99: Seconds{"": math.NaN()},
			CPU: CPU{Machine: 400 * time.Microsecond, Process: 200 * time.Microsecond, DB: 100 * time.Microsecond}}
		if i != 1 { // the middle level's pipelined reference failed
			lvl.Reference = &Reference{TPS: float64(1000 * (i + 1)), Transactions: 4000, Rounds: 2, Command: "pgbench -f scripts/pgbench/event.sql",
				Latencies: Latencies{N: 5, P99: 2 * time.Millisecond}, CPU: CPU{Machine: 150 * time.Microsecond, Process: 30 * time.Microsecond}}
			lvl.Ratio = lvl.RPS / lvl.Reference.TPS
		} else {
			lvl.ReferenceErr = "pgbench: exit status 2"
			lvl.ReferenceRetries = 1
		}
		if i != 2 { // the last level's stepwise reference failed
			lvl.Stepwise = &Reference{TPS: float64(625 * (i + 1)), Transactions: 2500, Rounds: 2, Command: "pgbench -f '<stepwise>'",
				Latencies: Latencies{N: 5, P99: 3 * time.Millisecond}, CPU: CPU{Machine: 250 * time.Microsecond, Process: 70 * time.Microsecond}}
			lvl.StepwiseRatio = lvl.RPS / lvl.Stepwise.TPS
		} else {
			lvl.StepwiseErr = "pgbench: exit status 3"
			lvl.StepwiseRetries = 1
		}
		rep.Levels = append(rep.Levels, lvl)
	}
	return rep
}

func TestReportStepwise(t *testing.T) {
	t.Parallel()
	rep := stepwiseReport()
	js, err := json.Marshal(rep)
	if err != nil || !bytes.Contains(js, []byte(`"StepwiseRatio":0.8`)) || !bytes.Contains(js, []byte(`"StepwiseErr":"pgbench: exit status 3"`)) {
		t.Errorf("report JSON: %v\n%s", err, js)
	}

	md := Markdown(rep)
	for _, want := range []string{
		"| stepwise tx/s | stepwise p50 | p95 | p99 | ratio | ratio, one statement per round trip | errors |",
		"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n| 1 |",
		"| 1 | 500 |",                    // both references
		"| - | - | - | - | 1250 |",       // c=4: the pipelined one failed, the stepwise one ran
		"| 2.0 | - | - | - | - | 0.50 |", // c=16: the stepwise one failed
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	for _, want := range []string{
		"| 0.50 | 0.80 | 0 |", "| 0.50 | - | 0 |", "| - | 0.80 | 0 |",
		"| ratio | 0.50 (lockstep requests/s ÷ pgbench tx/s) |",
		"| ratio, one statement per round trip | 0.80 (lockstep requests/s ÷ pgbench tx/s, one statement per round trip) |",
		"| reference | failed: pgbench: exit status 2 |", "| reference retries | 1 run(s)",
		"| stepwise reference | failed: pgbench: exit status 3 |", "| stepwise reference retries | 1 run(s)",
		"The reference ran 2 times, after each round of lockstep:\n\n```\npgbench -f scripts/pgbench/event.sql\n```",
		"The stepwise reference ran 2 times, after each round of lockstep:\n\n```\npgbench -f '<stepwise>'\n```",
		"stepwise per transaction: pgbench 70 µs",
		"- The stepwise reference runs",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}

	var out bytes.Buffer
	printLevel(&out, rep.Config, &rep.Levels[0])
	for _, want := range []string{
		"  reference  pgbench 1000 tx/s", "  stepwise   pgbench 625 tx/s",
		"  ratio      0.50 (lockstep requests/s ÷ pgbench tx/s)\n",
		"  ratio      0.80 (lockstep requests/s ÷ pgbench tx/s, one statement per round trip)\n",
		"; reference per transaction: pgbench 30 µs", "; stepwise per transaction: pgbench 70 µs",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("level lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	printLevel(&out, rep.Config, &rep.Levels[2])
	if s := out.String(); !strings.Contains(s, "  stepwise   failed: pgbench: exit status 3") || !strings.Contains(s, "  ratio      0.50 ") || strings.Count(s, "  ratio ") != 1 {
		t.Errorf("level with a failed stepwise reference:\n%s", s)
	}
	out.Reset()
	printSummary(&out, rep)
	for _, want := range []string{"  stepwise   p99 ms", "step ratio", "   0.50       0.80       0\n", "step ratio: against pgbench one statement per round trip"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCombineReferences(t *testing.T) {
	t.Parallel()
	a := &Reference{Clients: 4, Transactions: 1000, TPS: 500, samples: []time.Duration{time.Millisecond, 3 * time.Millisecond},
		CPU: CPU{Machine: 100 * time.Microsecond, Process: 10 * time.Microsecond}}
	b := &Reference{Clients: 4, Transactions: 3000, TPS: 1000, samples: []time.Duration{2 * time.Millisecond},
		CPU: CPU{Machine: 200 * time.Microsecond, Process: 30 * time.Microsecond}}
	got := CombineReferences([]*Reference{a, b})
	// 4000 transactions in 2 s + 3 s.
	if got.Transactions != 4000 || got.TPS != 800 || got.Rounds != 2 {
		t.Errorf("combined: %+v", got)
	}
	if got.Latencies.N != 3 || got.Latencies.P50 != 2*time.Millisecond || got.Latencies.Max != 3*time.Millisecond {
		t.Errorf("latencies: %+v", got.Latencies)
	}
	if got.CPU.Machine != 175*time.Microsecond || got.CPU.Process != 25*time.Microsecond {
		t.Errorf("cpu: %+v", got.CPU)
	}
}

// fakePgbench writes a pgbench that fails its first fails runs, then prints
// pgbench15's summary; each run copies the script it was given to
// script.N in dir.
func fakePgbench(t *testing.T, fails int) (path, dir string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "pgbench")
	sh := fmt.Sprintf(`#!/bin/sh
d=%q
n=$(($(cat "$d/count" 2>/dev/null || echo 0) + 1))
echo $n > "$d/count"
while [ $# -gt 0 ]; do
	if [ "$1" = -f ]; then cp "$2" "$d/script.$n"; fi
	shift
done
if [ $n -le %d ]; then echo "pgbench: error: client 0 aborted" >&2; exit 2; fi
cat <<'OUT'
%sOUT
`, dir, fails, pgbench15)
	if err := os.WriteFile(path, []byte(sh), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, dir
}

// Both references share one path: a failed run is run once more, and a
// reference that fails twice stops, alone.
func TestRefRoundsRetry(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	path, dir := fakePgbench(t, 1)
	runner := &refRunner{path: path, url: "postgres://u@127.0.0.1:1/fake_ref", threads: 2, customers: 10, payload: []byte("{}"), stepwise: true}
	mirror, stepwise := runner.levelRefs()
	if mirror == nil || stepwise == nil || mirror.script != mirrorScript || stepwise.script != stepwiseScript {
		t.Fatalf("levelRefs = %+v, %+v", mirror, stepwise)
	}
	var progress bytes.Buffer
	stepwise.run(ctx, &progress, runner.pgbench(stepwise.script, 4, time.Second))
	ref, errMsg, retries := stepwise.result()
	if ref == nil || ref.TPS != 3852.630473 || errMsg != "" || retries != 1 {
		t.Fatalf("after one failure: %+v, %q, %d retries", ref, errMsg, retries)
	}
	if !strings.Contains(progress.String(), "bench: stepwise reference failed, running it again") {
		t.Errorf("progress: %q", progress.String())
	}
	if !strings.Contains(ref.Command, `'<scripts/pgbench/event.sql without \startpipeline and \endpipeline>'`) || !strings.Contains(ref.Command, "-c 4 -j 2 -T 1") {
		t.Errorf("command: %s", ref.Command)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "script.2")); err != nil || string(got) != pgbench.EventStepwiseSQL {
		t.Errorf("pgbench ran %q (%v), want the stepwise script", got, err)
	}
	if r := ratio(1926.3152365, ref); math.Abs(r-0.5) > 1e-9 {
		t.Errorf("ratio = %v, want 0.5", r)
	}

	failing, _ := fakePgbench(t, 100)
	runner.path = failing
	for range 3 {
		mirror.run(ctx, io.Discard, runner.pgbench(mirror.script, 4, time.Second))
	}
	if ref, errMsg, retries := mirror.result(); ref != nil || !strings.Contains(errMsg, "exit status 2") || retries != 1 {
		t.Errorf("failing twice: %+v, %q, %d retries; want no reference, the error, 1 retry", ref, errMsg, retries)
	}
	if ref, errMsg, retries := (*refRounds)(nil).result(); ref != nil || errMsg != "" || retries != 0 || ratio(1, nil) != 0 {
		t.Error("no reference must give nothing")
	}
	if m, s := (&refRunner{}).levelRefs(); m == nil || s != nil {
		t.Errorf("without -stepwise: %+v, %+v", m, s)
	}
}

// The readings from /proc (through procfs) find this process: its memory,
// its CPU time, the machine's, and the port it listens on.
func TestProcReadings(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	if m, err := readMemory(os.Getpid()); err != nil || m.RSS <= 0 || m.Peak < m.RSS {
		t.Errorf("readMemory = %+v, %v", m, err)
	}
	if _, ok := processCPU(os.Getpid()); !ok {
		t.Error("processCPU of this process failed")
	}
	if busy, ok := machineBusy(); !ok || busy <= 0 {
		t.Errorf("machineBusy = %v, %v", busy, ok)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if pid := pidListening(ln.Addr().(*net.TCPAddr).Port); pid != os.Getpid() {
		t.Errorf("pidListening = %d, want this process %d", pid, os.Getpid())
	}
	if m := describeMachine(context.Background(), "", ""); m.CPUs < 1 || m.MemTotal == "" {
		t.Errorf("describeMachine = %+v", m)
	}
}

// A command line that makes no sense is a usage error (exit status 2); -h
// is not an error.
func TestRunUsage(t *testing.T) {
	t.Parallel()
	getenv := func(string) string { return "" }
	var usage *usageError
	if err := run(context.Background(), []string{"-customers", "0"}, getenv, io.Discard, io.Discard); !errors.As(err, &usage) {
		t.Errorf("bad flag: %v, want a usage error", err)
	}
	if err := run(context.Background(), []string{"-h"}, getenv, io.Discard, io.Discard); err != nil {
		t.Errorf("-h: %v", err)
	}
}
