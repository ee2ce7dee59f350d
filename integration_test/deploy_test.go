package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/metrics"
)

// The files operators load: Prometheus rules and their promtool tests, and
// the Grafana dashboard.
const (
	rulesFile     = "../deploy/prometheus/lockstep-rules.yml"
	rulesTestFile = "../deploy/prometheus/lockstep-rules.test.yml"
	dashboardFile = "../deploy/grafana/lockstep.json"
)

// laterMetrics are series that a freshly started lockstep does not export
// yet, whatever traffic it gets, with the reason. Each must still be
// described by the running server's registry, or exported by the metrics
// package's collector for it (see exportedLater).
var laterMetrics = map[string]string{
	"lockstep_stripe_api_budget_wait_seconds_bucket": "observed once a call waits for the STRIPE_API_RPS budget; the test server has none",
}

// promLabels are added by Prometheus's scrape, not exported by lockstep.
var promLabels = map[string]bool{"job": true, "instance": true}

// queries returns every PromQL expression of the rules and the dashboard,
// each named by where it comes from.
func deployQueries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	rules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	// The rules file is read whole: every lockstep_ name in it, in an
	// expression or in a summary, must exist.
	out[rulesFile] = string(rules)

	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboardFile, err)
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("dashboard: panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("dashboard: panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("dashboard: panel %q query %d is empty", p.Title, i)
			}
			out[fmt.Sprintf("dashboard panel %q query %d", p.Title, i)] = tg.Expr
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			out[fmt.Sprintf("dashboard variable %s", v.Name)] = v.Definition
		}
	}
	if len(out) < 20 {
		t.Fatalf("only %d queries found in the dashboard and rules", len(out))
	}
	return out
}

var (
	metricName = regexp.MustCompile(`\blockstep_[a-zA-Z0-9_]+`)
	selector   = regexp.MustCompile(`\b(lockstep_[a-zA-Z0-9_]+)\s*\{([^}]*)\}`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// exported is what a scrape shows: sample names (histograms as _bucket,
// _sum, _count) and the label names seen on each.
type exported map[string]map[string]bool

func (e exported) add(name string, labels ...string) {
	if e[name] == nil {
		e[name] = map[string]bool{}
	}
	for _, l := range labels {
		e[name][l] = true
	}
}

func exportedOf(fams map[string]*dto.MetricFamily) exported {
	e := exported{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName())
			}
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				e.add(name+"_bucket", append(labels, "le")...)
				e.add(name+"_sum", labels...)
				e.add(name+"_count", labels...)
			case dto.MetricType_SUMMARY:
				e.add(name, append(labels, "quantile")...)
				e.add(name+"_sum", labels...)
				e.add(name+"_count", labels...)
			default:
				e.add(name, labels...)
			}
		}
	}
	return e
}

// described names every metric the server's registry describes, with the
// exposition suffixes a histogram may have.
func described(t *testing.T, b *bundle) map[string]bool {
	t.Helper()
	ch := make(chan *prometheus.Desc, 256)
	out := map[string]bool{}
	done := make(chan struct{})
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	go func() {
		defer close(done)
		for d := range ch {
			if m := fq.FindStringSubmatch(d.String()); m != nil {
				for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
					out[m[1]+suffix] = true
				}
			}
		}
	}()
	b.app.Metrics.Registry.Describe(ch)
	close(ch)
	<-done
	return out
}

// exportedLater is what the metrics package exports once the sweeper, verify
// and the Stripe budget have run: a registry with the convergence collector
// fed a swept cursor and drift, and a budget wait observed.
func exportedLater(t *testing.T) exported {
	t.Helper()
	m := metrics.New()
	m.RegisterConvergence(func(context.Context) (metrics.Convergence, error) {
		return metrics.Convergence{
			SweepCursor:   time.Now().Add(-time.Minute),
			DriftFound:    map[string]int64{"subscription.status": 1},
			DriftRepaired: map[string]int64{"subscription.status": 1},
		}, nil
	}, slog.New(slog.DiscardHandler))
	m.StripeBudgetWaited("bulk", time.Millisecond)
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		byName[f.GetName()] = f
	}
	return exportedOf(byName)
}

// Every metric name the alert rules and the dashboard use is exported by a
// running lockstep (built with app.NewServer, scraped over HTTP after a
// little of every kind of traffic, a sweep and a verify), with the labels their selectors match
// on: a renamed metric or label cannot silently blank a panel or an alert.
// The sweeper's and verify's series are made to exist by a sweep pass and a
// verify --repair that mends a drift; the one series the test server cannot
// export is listed in laterMetrics and checked against the registry.
func TestDeployQueriesUseExportedMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))

	// Traffic: a processed, a duplicate, an ignored, a rejected and a failed
	// webhook (a lock timeout, retried), a paid and a not-found success call.
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("deploy"), now)
	completed := sessionCompleted(fx, now)
	must200(t, "session completed", b.postWebhook(completed))
	must200(t, "duplicate", b.postWebhook(completed))
	must200(t, "ignored", b.postWebhook(event(stripefake.NewID("evt_"), "payment_intent.created", now, map[string]any{"id": "pi_deploy", "object": "payment_intent"})))
	if r := b.postWebhookHeader(completed, "t=1,v1=00"); r.code != http.StatusBadRequest {
		t.Fatalf("bad signature: %d", r.code)
	}
	must200(t, "checkout success", b.checkout(fx.session, fx.user))
	if r := b.checkout("cs_test_nosuchsession", fx.user); r.code != http.StatusNotFound {
		t.Fatalf("unknown session: %d", r.code)
	}
	b.failEvent(fx.customer, subEvent(fx, "customer.subscription.updated", "past_due", now.Add(time.Second)))
	// A sweep pass stores the cursor (lockstep_sweep_lag_seconds); Stripe's
	// subscription moves on unseen, and verify --repair finds and mends
	// the drift (lockstep_drift_found_total, _repaired_total). Those series
	// are read from the database, so the server exports what the commands
	// recorded.
	cli := map[string]string{"DATABASE_URL": b.db.URL, "STRIPE_SECRET_KEY": stripeKey, "STRIPE_API_BASE": b.stripe.URL}
	var out bytes.Buffer
	if err := app.Run(context.Background(), []string{"sweep"}, app.Env{Getenv: func(k string) string { return cli[k] }, Stdout: &out, Stderr: io.Discard}); err != nil {
		t.Fatalf("sweep: %v\n%s", err, out.String())
	}
	b.stripe.PutCustomer(stripefake.Customer{ID: fx.customer, Metadata: map[string]string{"user_id": fx.user}, Created: now})
	b.stripe.PutSubscription(fx.subObj("canceled"))
	if err := app.Run(context.Background(), []string{"verify", "--repair"}, app.Env{Getenv: func(k string) string { return cli[k] }, Stdout: &out, Stderr: io.Discard}); err != nil {
		t.Fatalf("verify --repair: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "mended") {
		t.Fatalf("verify --repair found no drift to mend:\n%s", out.String())
	}

	scraped := exportedOf(scrapeMetrics(t, b))
	desc := described(t, b)
	later := exportedLater(t)

	used := map[string][]string{} // metric name -> where
	for where, q := range deployQueries(t) {
		for _, name := range metricName.FindAllString(q, -1) {
			used[name] = append(used[name], where)
		}
		for _, m := range selector.FindAllStringSubmatch(q, -1) {
			name := m[1]
			for _, lm := range matcher.FindAllStringSubmatch(m[2], -1) {
				label := lm[1]
				if promLabels[label] {
					continue
				}
				labels, ok := scraped[name]
				if !ok {
					labels = later[name]
				}
				if labels != nil && !labels[label] {
					t.Errorf("%s: %s{%s=...}: lockstep exports %s without a %q label", where, name, label, name, label)
				}
			}
		}
	}
	names := make([]string, 0, len(used))
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		where := used[name]
		sort.Strings(where)
		if _, ok := scraped[name]; ok {
			continue
		}
		reason, allowed := laterMetrics[name]
		switch {
		case !allowed:
			t.Errorf("%s is used by %s but a running lockstep does not export it", name, strings.Join(where, ", "))
		case desc[name]:
			t.Logf("%s: not exported yet (%s); the server's registry describes it", name, reason)
		case later[name] != nil:
			t.Logf("%s: not exported yet (%s); app.NewServer does not register its collector yet, the metrics package exports it", name, reason)
		default:
			t.Errorf("%s (%s) is used by %s but neither the server's registry nor the metrics package exports it", name, reason, strings.Join(where, ", "))
		}
	}
	for name := range laterMetrics {
		if _, ok := used[name]; !ok {
			t.Errorf("laterMetrics lists %s, which no rule or panel uses: remove it", name)
		}
	}
	if !t.Failed() {
		t.Logf("%d metric names used by the rules and the dashboard, all exported", len(names))
	}
}

// Every alert has a promtool test that fires it and one that does not, and
// every test names an alert that exists.
func TestDeployEveryAlertIsTested(t *testing.T) {
	t.Parallel()
	rules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)\s*$`).FindAllStringSubmatch(string(rules), -1) {
		alerts[m[1]] = true
	}
	if len(alerts) < 8 {
		t.Fatalf("only %d alerts found in %s", len(alerts), rulesFile)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	// An alert_rule_test entry: alertname, then exp_alerts either [] or a list.
	entry := regexp.MustCompile(`(?m)^\s*alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?\s*$`)
	for _, m := range entry.FindAllStringSubmatch(string(tests), -1) {
		if !alerts[m[1]] {
			t.Errorf("%s tests %s, which %s does not define", rulesTestFile, m[1], rulesFile)
		}
		if m[2] == "[]" {
			quiet[m[1]] = true
		} else {
			fires[m[1]] = true
		}
	}
	for a := range alerts {
		if !fires[a] {
			t.Errorf("%s: no promtool test fires it", a)
		}
		if !quiet[a] {
			t.Errorf("%s: no promtool test where it stays quiet", a)
		}
	}
	// Each rule has a for:, a severity and a summary naming its runbook
	// section, and docs/runbook.md has that section.
	runbook, err := os.ReadFile(filepath.Join("..", "docs", "runbook.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(rules), "- alert: ")[1:] {
		name := strings.Fields(block)[0]
		for _, want := range []string{"\n        for: ", "\n          severity: ", "Runbook: docs/runbook.md, " + name, "runbook: \"docs/runbook.md#" + strings.ToLower(name) + "\""} {
			if !strings.Contains(block, want) {
				t.Errorf("%s lacks %q", name, strings.TrimSpace(want))
			}
		}
		if !regexp.MustCompile(`(?m)^## ` + name + `$`).Match(runbook) {
			t.Errorf("docs/runbook.md has no section \"## %s\" for the alert's runbook link", name)
		}
	}
}

// The dashboard's queries are valid PromQL: promtool checks them as
// recording rules, with Grafana's variables filled in. It needs promtool
// (Debian's prometheus package; .ci/run installs it, make check-alerts
// runs this test with PROMTOOL set).
func TestDeployDashboardQueriesParse(t *testing.T) {
	t.Parallel()
	promtool := os.Getenv("PROMTOOL")
	if promtool == "" {
		var err error
		if promtool, err = exec.LookPath("promtool"); err != nil {
			t.Skip("promtool not found: install Debian's prometheus package, or run make check-alerts")
		}
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	fill := strings.NewReplacer("$__rate_interval", "5m", "$__range", "1h", "$job", ".*", "$instance", ".*")
	n := 0
	for where, q := range deployQueries(t) {
		if !strings.HasPrefix(where, "dashboard panel") {
			continue
		}
		n++
		expr, _ := json.Marshal(fill.Replace(q)) // a JSON string is a YAML double-quoted scalar
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", n, expr)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's %d queries: %v\n%s", n, err, out)
	}
	t.Logf("promtool: %d dashboard queries parse", n)
}
