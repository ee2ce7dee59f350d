package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

func printLevel(out io.Writer, cfg Config, l *Level) {
	fmt.Fprintf(out, "\nconcurrency %d: %.1f s, %d requests, %.0f req/s, %d errors\n",
		l.Concurrency, l.Elapsed.Seconds(), l.Requests, l.RPS, l.Errors)
	if l.Webhook.N > 0 {
		fmt.Fprintf(out, "  webhooks   %7d (%.0f/s)  %s  processed %d, duplicate %d\n",
			l.Webhook.N, l.WebhookRPS, latencyLine(l.Webhook), l.Processed, l.Duplicate)
	}
	if l.Success.N > 0 {
		fmt.Fprintf(out, "  success    %7d (%.0f/s)  %s\n", l.Success.N, l.SuccessRPS, latencyLine(l.Success))
	}
	fmt.Fprintf(out, "  status     %s\n", statusLine(l))
	fmt.Fprintf(out, "  locks      wait p99 %s ms (webhook %s, checkout %s) over %.0f locks; hold p99 %s ms; retries %.0f\n",
		secondsMs(l.LockWaitP99[""]), secondsMs(l.LockWaitP99["webhook"]), secondsMs(l.LockWaitP99["checkout"]),
		l.LockWaits, secondsMs(l.LockHoldP99[""]), l.Retries)
	if l.Scrapes.N > 0 || l.ScrapeErrors > 0 {
		fmt.Fprintf(out, "  scrapes    %7d (%.0f/s) by %d scrapers  p50 %s  p99 %s  max %s ms, %d failed\n",
			l.Scrapes.N, float64(l.Scrapes.N)/max(l.Elapsed.Seconds(), 1e-9), cfg.Scrapers, ms(l.Scrapes.P50), ms(l.Scrapes.P99), ms(l.Scrapes.Max), l.ScrapeErrors)
		if cfg.Anonymous && l.ScrapeErrors > 0 {
			fmt.Fprintf(out, "             (anonymous: the failed ones were refused)\n")
		}
	}
	fmt.Fprintf(out, "  pool       %.0f acquires waited for a connection, %.3f s in all\n", l.PoolEmptyAcquires, l.PoolAcquireWait)
	if l.DB != nil && l.Requests > 0 {
		fmt.Fprintf(out, "  database   %s\n", dbLine(l))
	}
	if l.Memory.RSS > 0 {
		fmt.Fprintf(out, "  memory     rss %s, peak %s (VmHWM)\n", mb(l.Memory.RSS), mb(l.Memory.Peak))
	}
	if l.CPU.Machine > 0 {
		fmt.Fprintf(out, "  cpu        %s\n", cpuLine(cfg, l))
	}
	refs := l.references()
	for _, lr := range refs {
		if r := lr.ref; r != nil {
			fmt.Fprintf(out, "  %-10s pgbench %.0f tx/s  %s  (%d tx, %d failed)\n", lr.label, r.TPS, latencyLine(r.Latencies), r.Transactions, r.Failed)
		} else {
			fmt.Fprintf(out, "  %-10s failed: %s\n", lr.label, lr.err)
		}
	}
	for _, lr := range refs {
		if lr.ref != nil {
			fmt.Fprintf(out, "  ratio      %s (%s)\n", ratioString(lr.ratio), lr.meaning(cfg))
		}
	}
}

// levelRef is one of a level's references, as the reports show it.
type levelRef struct {
	label    string // "reference" or "stepwise"
	stepwise bool
	ref      *Reference // nil when it failed
	ratio    float64
	retries  int
	err      string
}

// references are the level's references that ran or failed: the pipelined
// mirror, then the stepwise run.
func (l *Level) references() []levelRef {
	var out []levelRef
	for _, lr := range []levelRef{
		{label: "reference", ref: l.Reference, ratio: l.Ratio, retries: l.ReferenceRetries, err: l.ReferenceErr},
		{label: "stepwise", stepwise: true, ref: l.Stepwise, ratio: l.StepwiseRatio, retries: l.StepwiseRetries, err: l.StepwiseErr},
	} {
		if lr.ref != nil || lr.err != "" {
			out = append(out, lr)
		}
	}
	return out
}

// meaning words the reference's ratio.
func (lr levelRef) meaning(cfg Config) string {
	if lr.stepwise {
		return stepwiseRatioMeaning(cfg)
	}
	return ratioMeaning(cfg)
}

func ratioMeaning(cfg Config) string {
	if cfg.Storm {
		return "lockstep webhooks/s ÷ pgbench tx/s"
	}
	return "lockstep requests/s ÷ pgbench tx/s"
}

func stepwiseRatioMeaning(cfg Config) string {
	return ratioMeaning(cfg) + ", one statement per round trip"
}

// hasStepwise says whether any level ran the stepwise reference.
func hasStepwise(rep *Report) bool {
	return slices.ContainsFunc(rep.Levels, func(l Level) bool { return l.Stepwise != nil || l.StepwiseErr != "" })
}

func cpuLine(cfg Config, l *Level) string {
	who := "lockstep"
	if cfg.InProcess {
		who = "bench process (lockstep and the load)"
	}
	s := fmt.Sprintf("per request: %s %s", who, usString(l.CPU.Process))
	if l.CPU.DB > 0 {
		s += fmt.Sprintf(" + its database backends %s", usString(l.CPU.DB))
	}
	s += fmt.Sprintf(" (machine %s)", usString(l.CPU.Machine))
	for _, lr := range l.references() {
		if r := lr.ref; r != nil && r.CPU.Machine > 0 {
			s += fmt.Sprintf("; %s per transaction: pgbench %s", lr.label, usString(r.CPU.Process))
			if r.CPU.DB > 0 {
				s += fmt.Sprintf(" + its database backends %s", usString(r.CPU.DB))
			}
			s += fmt.Sprintf(" (machine %s)", usString(r.CPU.Machine))
			if own, ref := l.CPU.Own(), r.CPU.Own(); own > 0 && ref > 0 {
				s += fmt.Sprintf("; CPU ratio %.2f", float64(ref)/float64(own))
			}
		}
	}
	return s
}

func latencyLine(l Latencies) string {
	return fmt.Sprintf("p50 %s  p95 %s  p99 %s  max %s ms", ms(l.P50), ms(l.P95), ms(l.P99), ms(l.Max))
}

func statusLine(l *Level) string {
	var parts []string
	for _, kind := range []struct {
		name string
		m    map[string]int
	}{{"webhook", l.WebhookStatus}, {"success", l.SuccessStatus}} {
		if len(kind.m) == 0 {
			continue
		}
		parts = append(parts, kind.name+" "+statusCounts(kind.m))
	}
	return strings.Join(parts, "; ")
}

func statusCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func dbLine(l *Level) string {
	d := l.DB
	n := float64(l.Requests)
	per := func(v int64) string { return fmt.Sprintf("%.2f", float64(v)/n) }
	rtps := "-"
	if d.Statements > 0 {
		rtps = fmt.Sprintf("%.2f", float64(d.RoundTrips)/float64(d.Statements))
	}
	return fmt.Sprintf("per request: %s statements, %s round trips (%s per statement), %s transactions (%d rolled back); %d prepares in all",
		per(d.Statements), per(d.RoundTrips), rtps, per(d.Begins), d.Rollbacks, d.Prepares)
}

func printSummary(out io.Writer, rep *Report) {
	if len(rep.Levels) == 0 {
		return
	}
	stepwise := hasStepwise(rep)
	fmt.Fprintf(out, "\nsummary (%s)\n", rep.Config.Mode())
	head := fmt.Sprintf("%5s %10s %8s %8s %8s %10s %8s", "conc", "req/s", "p50 ms", "p95 ms", "p99 ms", "pgbench", "p99 ms")
	if stepwise {
		head += fmt.Sprintf(" %10s %8s", "stepwise", "p99 ms")
	}
	head += fmt.Sprintf(" %8s %6s", "succ p99", "ratio")
	if stepwise {
		head += fmt.Sprintf(" %10s", "step ratio")
	}
	fmt.Fprintf(out, "%s %7s\n", head, "errors")
	for _, l := range rep.Levels {
		succ := "-"
		if l.Success.N > 0 {
			succ = ms(l.Success.P99)
		}
		row := fmt.Sprintf("%5d %10.0f %8s %8s %8s %s", l.Concurrency, l.RPS,
			ms(l.Webhook.P50), ms(l.Webhook.P95), ms(l.Webhook.P99), refCells(l.Reference))
		if stepwise {
			row += " " + refCells(l.Stepwise)
		}
		row += fmt.Sprintf(" %8s %6s", succ, ratioString(l.Ratio))
		if stepwise {
			row += fmt.Sprintf(" %10s", ratioString(l.StepwiseRatio))
		}
		fmt.Fprintf(out, "%s %7d\n", row, l.Errors)
	}
	if stepwise {
		fmt.Fprintf(out, "ratio: against pgbench pipelined as lockstep sends the transaction; step ratio: against pgbench one statement per round trip (stepwise)\n")
	}
	if rep.Memory.Peak > 0 {
		fmt.Fprintf(out, "peak rss %s (VmHWM of pid %d%s); rss at the end %s\n", mb(rep.Memory.Peak), rep.PID,
			memoryScope(rep.Config), mb(rep.Memory.RSS))
	}
}

// refCells are a reference's tx/s and p99 in the summary table.
func refCells(r *Reference) string {
	tps, p99 := "-", "-"
	if r != nil {
		tps, p99 = fmt.Sprintf("%.0f", r.TPS), ms(r.Latencies.P99)
	}
	return fmt.Sprintf("%10s %8s", tps, p99)
}

func memoryScope(cfg Config) string {
	if cfg.InProcess {
		return ": lockstep, the load generator and the fake Stripe in one process"
	}
	return ": the target, since it started"
}

func writeOutputs(dir string, rep *Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(Markdown(rep)), 0o644)
}

// Markdown renders the report.
func Markdown(rep *Report) string {
	var b strings.Builder
	cfg := rep.Config
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# lockstep-bench: %s\n\n", cfg.Mode())
	p("%s.\n\n", capitalize(describeLoad(cfg)))
	p("Run %s, %s.\n\n", rep.Started.UTC().Format("2006-01-02 15:04 UTC"), rep.Run)
	p("```\n%s\n```\n\n", cfg.Command)

	p("## Machine\n\n")
	p("| | |\n|---|---|\n")
	p("| CPUs | %d%s |\n", rep.Machine.CPUs, parenthesize(rep.Machine.CPUModel))
	if rep.Machine.MemTotal != "" {
		p("| memory | %s |\n", rep.Machine.MemTotal)
	}
	p("| Go | %s (%s) |\n", rep.Machine.Go, rep.Machine.OS)
	if rep.Machine.Postgres != "" {
		p("| database | %s, on the same machine |\n", rep.Machine.Postgres)
	}
	if rep.Machine.Pgbench != "" {
		p("| reference | %s |\n", rep.Machine.Pgbench)
	}
	where := cfg.TargetURL
	if cfg.InProcess {
		where = "in the bench process (lockstep, load generator and fake Stripe share it)"
	}
	p("| lockstep | %s |\n", where)
	if rep.Machine.Revision != "" {
		p("| source | %s |\n", rep.Machine.Revision)
	}
	p("\n")

	stepwise := hasStepwise(rep)
	p("## Results\n\n")
	p("Latencies in milliseconds. Ratio: %s at the same concurrency, pgbench sending the transaction in lockstep's round trips (BEGIN, the lock and the event's statements pipelined in one, then COMMIT).", ratioMeaning(cfg))
	head := "| concurrency | lockstep req/s | webhook p50 | p95 | p99 | success req/s | success p50 | p95 | p99 | pgbench tx/s | pgbench p50 | p95 | p99 |"
	if stepwise {
		p(" Ratio, one statement per round trip: the same against pgbench sending the same statements one per round trip (stepwise), as a plain client runs a transaction.")
		head += " stepwise tx/s | stepwise p50 | p95 | p99 |"
	}
	head += " ratio |"
	if stepwise {
		head += " ratio, one statement per round trip |"
	}
	head += " errors |"
	p("\n\n%s\n|%s\n", head, strings.Repeat("---:|", strings.Count(head, "|")-1))
	for _, l := range rep.Levels {
		succ := "- | - | - | -"
		if l.Success.N > 0 {
			succ = fmt.Sprintf("%.0f | %s | %s | %s", l.SuccessRPS, ms(l.Success.P50), ms(l.Success.P95), ms(l.Success.P99))
		}
		refs, ratios := mdRefCells(l.Reference), ratioString(l.Ratio)
		if stepwise {
			refs += " | " + mdRefCells(l.Stepwise)
			ratios += " | " + ratioString(l.StepwiseRatio)
		}
		p("| %d | %.0f | %s | %s | %s | %s | %s | %s | %d |\n", l.Concurrency, l.RPS,
			ms(l.Webhook.P50), ms(l.Webhook.P95), ms(l.Webhook.P99), succ, refs, ratios, l.Errors)
	}
	p("\n")

	for _, l := range rep.Levels {
		p("### Concurrency %d\n\n", l.Concurrency)
		p("| | |\n|---|---|\n")
		p("| duration | %.1f s, %d requests (%d webhooks: %d processed, %d duplicate; %d checkout-success) |\n",
			l.Elapsed.Seconds(), l.Requests, l.Webhook.N, l.Processed, l.Duplicate, l.Success.N)
		if l.Webhook.N > 0 {
			p("| webhook latency | %s (mean %s) |\n", latencyLine(l.Webhook), ms(l.Webhook.Mean))
		}
		if l.Success.N > 0 {
			p("| success latency | %s (mean %s) |\n", latencyLine(l.Success), ms(l.Success.Mean))
		}
		p("| answers | %s |\n", statusLine(&l))
		p("| lock wait p99 | %s ms (webhook %s, checkout %s), %.0f locks taken |\n",
			secondsMs(l.LockWaitP99[""]), secondsMs(l.LockWaitP99["webhook"]), secondsMs(l.LockWaitP99["checkout"]), l.LockWaits)
		p("| lock hold p99 | %s ms |\n", secondsMs(l.LockHoldP99[""]))
		p("| retries | %.0f |\n", l.Retries)
		p("| pool | %.0f acquires waited for a connection, %.3f s in all |\n", l.PoolEmptyAcquires, l.PoolAcquireWait)
		if l.DB != nil && l.Requests > 0 {
			p("| database work | %s |\n", dbLine(&l))
		}
		if l.Memory.RSS > 0 {
			p("| memory after the level | rss %s, peak %s |\n", mb(l.Memory.RSS), mb(l.Memory.Peak))
		}
		if l.CPU.Machine > 0 {
			p("| CPU time | %s |\n", cpuLine(cfg, &l))
		}
		refs := l.references()
		for _, lr := range refs {
			name := mdRefName(lr)
			if r := lr.ref; r != nil {
				p("| %s | %.0f tx/s, %s, %d transactions, %d failed |\n", name, r.TPS, latencyLine(r.Latencies), r.Transactions, r.Failed)
				p("| %s | %s (%s) |\n", mdRatioName(lr), ratioString(lr.ratio), lr.meaning(cfg))
			} else {
				p("| %s | failed: %s |\n", name, lr.err)
			}
			if lr.retries > 0 {
				p("| %s retries | %d run(s) failed (pgbench stops a client at its first error) and were run again |\n", name, lr.retries)
			}
		}
		p("\n")
		for _, lr := range refs {
			if r := lr.ref; r != nil {
				times := "once, after lockstep"
				if r.Rounds > 1 {
					times = fmt.Sprintf("%d times, after each round of lockstep", r.Rounds)
				}
				p("The %s ran %s:\n\n```\n%s\n```\n\n", mdRefName(lr), times, r.Command)
			}
		}
	}

	if rep.Memory.Peak > 0 {
		p("## Memory\n\n")
		p("Peak resident set %s (VmHWM of pid %d%s); %s at the end.\n\n", mb(rep.Memory.Peak), rep.PID, memoryScope(cfg), mb(rep.Memory.RSS))
		if s := decimate(rep.RSSSamples, 12); len(s) > 0 {
			p("| elapsed | requests done | rss |\n|---:|---:|---:|\n")
			for _, x := range s {
				p("| %s | %d | %s |\n", x.At.Round(time.Second), x.Requests, mb(x.RSS))
			}
			p("\n")
		}
	}

	p("## How to read this\n\n")
	p("- Each level is closed-loop: that many requests in flight at all times, the next sent when one is answered; pgbench's clients do the same.\n")
	p("- The reference runs scripts/pgbench/event.sql: the transaction a new customer.subscription.updated event costs in lockstep (begin; set_config ×3 and the customer's advisory lock; read the ledger row; insert the customer; upsert the subscription; insert the ledger row; commit), with prepared statements, in the round trips lockstep sends it in (everything but the commit pipelined in one, then the commit), against a scratch database with lockstep's schema on the same server. lockstep adds HTTP, the signature check, JSON parsing, a ledger read before the transaction (so a duplicate never waits for the lock), metrics and logging.\n")
	if stepwise {
		p("- The stepwise reference runs the same script without its \\startpipeline and \\endpipeline: the same statements, one per round trip, as a plain client and pgbench by default run a transaction; it runs right after the pipelined one in each round. Ratio is the strict comparison, against the same work in the same round trips; ratio, one statement per round trip, is against a client that does not pipeline.\n")
	}
	p("- A redelivered event costs lockstep one read (no transaction); a checkout-success call costs a read from Stripe (the fake) and one transaction that also takes the user's lock and reads the mapping (two round trips, three when the mapping changes).\n")
	if cfg.Mode() != "spread" {
		p("- One hot customer serializes on its advisory lock by design, in lockstep and in the reference alike: the rate is one transaction at a time, and adding writers adds waiting, not throughput.\n")
	}
	p("- The ratio is the figure to compare across machines; absolute rates depend on the CPU and on the disk's fsync time (synchronous_commit).\n")
	for _, n := range rep.Notes {
		p("- %s\n", n)
	}
	return b.String()
}

// mdRefCells are a reference's tx/s and percentiles in the results table.
func mdRefCells(r *Reference) string {
	if r == nil {
		return "- | - | - | -"
	}
	return fmt.Sprintf("%.0f | %s | %s | %s", r.TPS, ms(r.Latencies.P50), ms(r.Latencies.P95), ms(r.Latencies.P99))
}

// mdRefName names a reference in a level's table.
func mdRefName(lr levelRef) string {
	if lr.stepwise {
		return "stepwise reference"
	}
	return "reference"
}

// mdRatioName names a reference's ratio in a level's table.
func mdRatioName(lr levelRef) string {
	if lr.stepwise {
		return "ratio, one statement per round trip"
	}
	return "ratio"
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func parenthesize(s string) string {
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}

// decimate keeps at most n samples, evenly spread, always the last.
func decimate(s []RSSSample, n int) []RSSSample {
	if len(s) <= n {
		return s
	}
	out := make([]RSSSample, 0, n)
	for i := range n {
		out = append(out, s[int(math.Round(float64(i)*float64(len(s)-1)/float64(n-1)))])
	}
	return out
}
