package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/metrics"
)

// The -access load: the paywall's read, GET /api/users/{user_id}/access,
// by concurrent readers over -customers users seeded with a mix of states,
// beside pgbench running the same SELECT (billing.AccessQuery) at the same
// concurrency against a scratch database seeded alike. Every read is a
// user lockstep knows; one in ten asks about a feature.

// accessSeed writes n users, each with a customer, a subscription in a mix
// of states (70% active, 8% trialing, 6% set to cancel, 6% past_due with an
// open invoice, 5% canceled, 5% incomplete with its invoice), the two
// plans, and two entitlements for each customer that has access. prefix
// names the run's rows (user_<prefix>_N, cus_<prefix>_N, ...).
const accessSeed = `
WITH p AS (
  INSERT INTO stripe_products (stripe_product_id, name, source_time, source)
  VALUES ('prod_' || $1 || '_pro', 'Pro', now(), 'bench'), ('prod_' || $1 || '_team', 'Team', now(), 'bench')
  RETURNING 1),
pr AS (
  INSERT INTO stripe_prices (stripe_price_id, stripe_product_id, lookup_key, currency, unit_amount,
      recurring_interval, recurring_interval_count, source_time, source)
  VALUES ('price_' || $1 || '_pro', 'prod_' || $1 || '_pro', $1 || '_pro_monthly', 'usd', 2000, 'month', 1, now(), 'bench'),
         ('price_' || $1 || '_team', 'prod_' || $1 || '_team', $1 || '_team_yearly', 'usd', 90000, 'year', 1, now(), 'bench')
  RETURNING 1),
c AS (
  INSERT INTO stripe_customers (stripe_customer_id, user_id, linked_at)
  SELECT 'cus_' || $1 || '_' || i, 'user_' || $1 || '_' || i, now() FROM generate_series(1, $2::int) i
  RETURNING 1),
s AS (
  INSERT INTO stripe_subscriptions (stripe_subscription_id, stripe_customer_id, status, price_id,
      current_period_start, current_period_end, cancel_at_period_end, trial_end, latest_invoice, source_time, source)
  SELECT 'sub_' || $1 || '_' || i, 'cus_' || $1 || '_' || i,
         CASE WHEN m < 76 THEN 'active' WHEN m < 84 THEN 'trialing' WHEN m < 90 THEN 'past_due'
              WHEN m < 95 THEN 'canceled' ELSE 'incomplete' END,
         'price_' || $1 || CASE WHEN i % 3 = 0 THEN '_team' ELSE '_pro' END,
         now() - interval '10 days', now() + interval '20 days', m BETWEEN 70 AND 75,
         CASE WHEN m BETWEEN 76 AND 83 THEN now() + interval '4 days' END,
         CASE WHEN m >= 84 AND m < 90 OR m >= 95 THEN 'in_' || $1 || '_' || i END,
         now(), 'bench'
  FROM (SELECT i, i % 100 AS m FROM generate_series(1, $2::int) i) g
  RETURNING 1),
inv AS (
  INSERT INTO stripe_invoices (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status, amount_due,
      currency, hosted_invoice_url, source_time, source)
  SELECT 'in_' || $1 || '_' || i, 'cus_' || $1 || '_' || i, 'sub_' || $1 || '_' || i, 'open', 2000, 'usd',
         'https://invoice.stripe.com/i/acct_bench/in_' || $1 || '_' || i, now(), 'bench'
  FROM (SELECT i, i % 100 AS m FROM generate_series(1, $2::int) i) g WHERE m >= 84 AND m < 90 OR m >= 95
  RETURNING 1),
e AS (
  INSERT INTO stripe_entitlements (stripe_customer_id, stripe_feature_id, lookup_key)
  SELECT 'cus_' || $1 || '_' || i, 'feat_' || f, f
  FROM (SELECT i, i % 100 AS m FROM generate_series(1, $2::int) i) g, (VALUES ('export'), ('sso')) v(f) WHERE m < 84
  RETURNING 1)
SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM s), (SELECT count(*) FROM inv), (SELECT count(*) FROM e),
       (SELECT count(*) FROM p) + (SELECT count(*) FROM pr)`

// accessUnseed removes what accessSeed wrote.
var accessUnseed = []string{
	`DELETE FROM stripe_entitlements WHERE stripe_customer_id LIKE 'cus\_' || $1 || '\_%'`,
	`DELETE FROM stripe_invoices WHERE stripe_customer_id LIKE 'cus\_' || $1 || '\_%'`,
	`DELETE FROM stripe_subscriptions WHERE stripe_customer_id LIKE 'cus\_' || $1 || '\_%'`,
	`DELETE FROM stripe_customers WHERE stripe_customer_id LIKE 'cus\_' || $1 || '\_%'`,
	`DELETE FROM stripe_prices WHERE stripe_price_id LIKE 'price\_' || $1 || '\_%'`,
	`DELETE FROM stripe_products WHERE stripe_product_id LIKE 'prod\_' || $1 || '\_%'`,
}

func seedAccess(ctx context.Context, dbURL, prefix string, n int) error {
	conn, err := pgx.Connect(ctx, pgxOnly(dbURL))
	if err != nil {
		return fmt.Errorf("seed users: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var users, subs, invs, ents, plans int
	if err := conn.QueryRow(ctx, accessSeed, prefix, n).Scan(&users, &subs, &invs, &ents, &plans); err != nil {
		return fmt.Errorf("seed users: %w", err)
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE stripe_customers, stripe_subscriptions, stripe_invoices, stripe_entitlements, stripe_prices, stripe_products`); err != nil {
		return fmt.Errorf("seed users: analyze: %w", err)
	}
	return nil
}

func unseedAccess(dbURL, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgxOnly(dbURL))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, q := range accessUnseed {
		if _, err := conn.Exec(ctx, q, prefix); err != nil {
			return fmt.Errorf("remove the bench's users: %w", err)
		}
	}
	return nil
}

// accessScript is billing.AccessQuery for pgbench: the user id a random
// one of the seeded users, as a parameter (-M prepared).
func accessScript(prefix string) refScript {
	q := strings.TrimSpace(billing.AccessQuery)
	q = strings.ReplaceAll(q, "$1", "('user_"+prefix+"_' || CAST(:u AS text))")
	sql := "-- billing.AccessQuery for a random seeded user (generated by lockstep-bench -access)\n" +
		"\\set u random(1, :customers)\n" + q + ";\n"
	return refScript{file: "access.sql", sql: sql, shown: "<billing.AccessQuery, $1 a random seeded user>"}
}

// AccessLevel is one concurrency level of the -access load.
type AccessLevel struct {
	Concurrency int
	Elapsed     time.Duration
	Reads       Latencies
	ReadsPerSec float64
	Status      map[string]int
	Errors      int
	States      map[string]float64 // decisions by state, from lockstep's counter
	// CPU is per read: this process (lockstep and the readers) and
	// lockstep's database backends.
	CPU       CPU
	Reference *Reference
	RefErr    string
	Ratio     float64
}

// runAccess runs the -access load on lockstep at cfg.TargetURL, whose
// database is lockstepDB (a URL), and the reference on a scratch database
// of cfg.DatabaseURL's server.
func runAccess(ctx context.Context, cfg Config, lockstepDB string, keep bool) error {
	out := cfg.Stdout
	var rb [4]byte
	for i := range rb {
		rb[i] = byte(rand.IntN(256))
	}
	prefix := fmt.Sprintf("bench_%x", rb)
	n := cfg.Customers
	maxConc := 0
	for _, c := range cfg.Concurrency {
		maxConc = max(maxConc, c)
	}
	t := &target{base: cfg.TargetURL, token: cfg.AppToken, client: newHTTPClient(maxConc + 1)}
	defer t.client.CloseIdleConnections()
	if err := t.waitReady(ctx, 15*time.Second); err != nil {
		return err
	}
	pgbenchPath := ""
	if cfg.Reference {
		p, err := lookPath(cfg.Pgbench)
		if err != nil {
			return fmt.Errorf("bench: pgbench not found (%v); install the PostgreSQL client tools or run with -reference=false", err)
		}
		pgbenchPath = p
	}
	m := describeMachine(ctx, cfg.DatabaseURL, pgbenchPath)
	fmt.Fprintf(out, "lockstep-bench -access: GET /api/users/{user_id}/access over %d users (a mix of states; 1 read in 10 with ?feature=sso); concurrency %s; %s per level in %d rounds alternating with the reference\n",
		n, joinInts(cfg.Concurrency), cfg.Duration, max(1, cfg.Rounds))
	fmt.Fprintf(out, "machine: %s\n", m.String())

	start := time.Now()
	if err := seedAccess(ctx, lockstepDB, prefix, n); err != nil {
		return err
	}
	if !keep {
		defer func() {
			if err := unseedAccess(lockstepDB, prefix); err != nil {
				fmt.Fprintf(cfg.Progress, "bench: %v\n", err)
			}
		}()
	}
	var ref *ScratchDB
	if pgbenchPath != "" {
		var err error
		if ref, err = CreateScratch(ctx, cfg.DatabaseURL, "ref"); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
		defer func() {
			if err := ref.Drop(); err != nil {
				fmt.Fprintf(cfg.Progress, "bench: could not drop the reference database %s: %v\n", ref.name, err)
			}
		}()
		if err := seedAccess(ctx, ref.url, prefix, n); err != nil {
			return fmt.Errorf("reference: %w", err)
		}
	}
	fmt.Fprintf(out, "seeded %d users in lockstep's database%s in %s\n", n, map[bool]string{true: " and the reference's", false: ""}[ref != nil],
		time.Since(start).Round(time.Millisecond))

	script := accessScript(prefix)
	var levels []AccessLevel
	for _, c := range cfg.Concurrency {
		if ctx.Err() != nil {
			break
		}
		lvl, err := accessLevel(ctx, cfg, t, prefix, n, c, pgbenchPath, ref, script, m.CPUs, dbName(lockstepDB))
		if err != nil {
			return err
		}
		levels = append(levels, lvl)
		printAccessLevel(out, lvl)
	}
	printAccessSummary(out, levels)
	return ctx.Err()
}

func accessLevel(ctx context.Context, cfg Config, t *target, prefix string, n, c int, pgbenchPath string, ref *ScratchDB, script refScript, cpus int, lockstepDB string) (AccessLevel, error) {
	lvl := AccessLevel{Concurrency: c, Status: map[string]int{}, States: map[string]float64{}}
	before, err := scrapeMetrics(ctx, t.client, t.base, cfg.MetricsToken)
	if err != nil {
		return lvl, err
	}
	rounds := max(1, cfg.Rounds)
	var samples []time.Duration
	var refs []*Reference
	var cpu cpuSum
	// A warm-up, not counted, for both sides alike: lockstep's pool opens
	// its connections and prepares the statement, its heap grows to its
	// working size; pgbench (whose reported rate leaves out its own
	// connection time) and lockstep then read pages already in shared
	// buffers with their hint bits set, so the first measured round of
	// neither pays for what the other already paid.
	if warm := min(time.Second, cfg.Duration/time.Duration(2*rounds)); warm > 0 && ctx.Err() == nil {
		got, _, _ := readAccess(ctx, t, prefix, n, c, warm)
		msg := fmt.Sprintf("bench access c=%d warm-up: %d reads in %s", c, len(got), warm)
		if ref != nil {
			if r, err := (pgbenchRun{Path: pgbenchPath, Script: script, DBURL: ref.url, Clients: c, Threads: cpus,
				Duration: warm, Customers: n, Payload: []byte("{}")}).run(ctx); err == nil {
				msg += fmt.Sprintf("; pgbench %d transactions", r.Transactions)
			}
		}
		fmt.Fprintln(cfg.Progress, msg)
	}
	for i := range rounds {
		if ctx.Err() != nil {
			break
		}
		d := cfg.Duration / time.Duration(rounds)
		cpu0 := markCPU(os.Getpid())
		// Polled each second: the pool's backends live through the round,
		// and each poll is CPU taken from the reads it measures.
		bw := watchBackends(lockstepDB, time.Second)
		got, status, elapsed := readAccess(ctx, t, prefix, n, c, d)
		cpu.add(cpu0, markCPU(os.Getpid()))
		cpu.addDB(bw.total())
		samples = append(samples, got...)
		for k, v := range status {
			lvl.Status[k] += v
		}
		lvl.Elapsed += elapsed
		fmt.Fprintf(cfg.Progress, "bench access c=%d round %d/%d: %d reads in %s (%.0f/s)\n", c, i+1, rounds, len(got), elapsed.Round(time.Millisecond),
			float64(len(got))/elapsed.Seconds())
		if ref != nil && lvl.RefErr == "" && ctx.Err() == nil {
			r, err := pgbenchRun{Path: pgbenchPath, Script: script, DBURL: ref.url, Clients: c, Threads: cpus,
				Duration: elapsed, Customers: n, Payload: []byte("{}")}.run(ctx)
			if err != nil {
				lvl.RefErr = err.Error()
				continue
			}
			fmt.Fprintf(cfg.Progress, "bench access c=%d round %d/%d: pgbench %.0f tx/s\n", c, i+1, rounds, r.TPS)
			refs = append(refs, r)
		}
	}
	after, err := scrapeMetrics(context.WithoutCancel(ctx), t.client, t.base, cfg.MetricsToken)
	if err != nil {
		return lvl, err
	}
	for _, s := range append(billing.AccessStates, "other") {
		match := map[string]string{"state": metrics.AccessLabel(s)}
		if d := after.Sum("lockstep_access_decisions_total", match) - before.Sum("lockstep_access_decisions_total", match); d > 0 {
			lvl.States[metrics.AccessLabel(s)] = d
		}
	}
	lvl.Reads = Summarize(samples)
	lvl.CPU = cpu.perRequest(lvl.Reads.N)
	if secs := lvl.Elapsed.Seconds(); secs > 0 {
		lvl.ReadsPerSec = float64(lvl.Reads.N) / secs
	}
	for k, v := range lvl.Status {
		if k != "200" {
			lvl.Errors += v
		}
	}
	if len(refs) > 0 && lvl.RefErr == "" {
		lvl.Reference = CombineReferences(refs)
		lvl.Ratio = ratio(lvl.ReadsPerSec, lvl.Reference)
	}
	return lvl, nil
}

// readAccess runs c readers for d, each on its own keep-alive connection,
// and returns the latencies of the reads answered 200 and the answers by
// status.
func readAccess(ctx context.Context, t *target, prefix string, n, c int, d time.Duration) ([]time.Duration, map[string]int, time.Duration) {
	stop, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var all []time.Duration
	status := map[string]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := newHTTPConn(t.base)
			if err != nil {
				return
			}
			defer conn.Close()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			auth := "Bearer " + t.token
			mine := make([]time.Duration, 0, 4096)
			codes := map[string]int{}
			var path []byte
			for stop.Err() == nil {
				u := 1 + rng.IntN(n)
				path = append(path[:0], "/api/users/user_"...)
				path = append(path, prefix...)
				path = append(path, '_')
				path = strconv.AppendInt(path, int64(u), 10)
				path = append(path, "/access"...)
				if u%10 == 0 {
					path = append(path, "?feature=sso"...)
				}
				t0 := time.Now()
				code, _, err := conn.Get(stop, string(path), "Authorization", auth)
				lat := time.Since(t0)
				if err != nil {
					if stop.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
						break // the level's end interrupted it: not an answer
					}
					codes[statusKey(0)]++
					continue
				}
				codes[statusKey(code)]++
				if code == http.StatusOK {
					mine = append(mine, lat)
				}
			}
			mu.Lock()
			all = append(all, mine...)
			for k, v := range codes {
				status[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, status, time.Since(start)
}

func printAccessLevel(out io.Writer, l AccessLevel) {
	fmt.Fprintf(out, "\nconcurrency %d: %d reads in %s: %.0f reads/s; latency p50 %s p95 %s p99 %s max %s; answers %v; errors %d\n",
		l.Concurrency, l.Reads.N, l.Elapsed.Round(time.Millisecond), l.ReadsPerSec, msString(l.Reads.P50), msString(l.Reads.P95),
		msString(l.Reads.P99), msString(l.Reads.Max), l.Status, l.Errors)
	fmt.Fprintf(out, "  decisions by state: %v\n", l.States)
	fmt.Fprintf(out, "  CPU per read: lockstep and the readers %s, its database backends %s (machine %s)\n",
		usString(l.CPU.Process), usString(l.CPU.DB), usString(l.CPU.Machine))
	switch {
	case l.Reference != nil:
		r := l.Reference
		fmt.Fprintf(out, "  reference (pgbench, the same SELECT): %.0f tx/s, p50 %s p95 %s p99 %s, %d transactions, %d failed\n",
			r.TPS, msString(r.Latencies.P50), msString(r.Latencies.P95), msString(r.Latencies.P99), r.Transactions, r.Failed)
		fmt.Fprintf(out, "  reference CPU per transaction: pgbench %s, its database backends %s (machine %s)\n",
			usString(r.CPU.Process), usString(r.CPU.DB), usString(r.CPU.Machine))
		fmt.Fprintf(out, "  ratio (lockstep reads/s / pgbench tx/s): %s\n", ratioString(l.Ratio))
		if c := cpuRatio(l.CPU, r.CPU); c > 0 {
			// What the ratio would be with both sides held to the same CPU,
			// whatever else the machine runs meanwhile.
			fmt.Fprintf(out, "  CPU ratio (pgbench and its backends per transaction / lockstep, its readers and its backends per read): %s\n", ratioString(c))
		}
		fmt.Fprintf(out, "  reference command: %s\n", r.Command)
	case l.RefErr != "":
		fmt.Fprintf(out, "  reference failed: %s\n", l.RefErr)
	}
}

func printAccessSummary(out io.Writer, levels []AccessLevel) {
	if len(levels) == 0 {
		return
	}
	fmt.Fprintln(out, "\n| concurrency | reads/s | p50 ms | p95 ms | p99 ms | pgbench tx/s | pgbench p99 ms | ratio | errors |")
	fmt.Fprintln(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, l := range levels {
		tps, p99 := "-", "-"
		if l.Reference != nil {
			tps, p99 = fmt.Sprintf("%.0f", l.Reference.TPS), msString(l.Reference.Latencies.P99)
		}
		fmt.Fprintf(out, "| %d | %.0f | %s | %s | %s | %s | %s | %s | %d |\n", l.Concurrency, l.ReadsPerSec,
			msString(l.Reads.P50), msString(l.Reads.P95), msString(l.Reads.P99), tps, p99, ratioString(l.Ratio), l.Errors)
	}
}

// cpuRatio is the reference's CPU per transaction (pgbench and its
// backends) over lockstep's per read (this process and its backends): the
// ratio of the two rates when both are bound by the same cores. 0 when a
// side was not measured.
func cpuRatio(lockstep, ref CPU) float64 {
	l, r := lockstep.Process+lockstep.DB, ref.Process+ref.DB
	if l <= 0 || r <= 0 || lockstep.DB <= 0 || ref.DB <= 0 {
		return 0
	}
	return float64(r) / float64(l)
}

func msString(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

// errAccessTarget: -access seeds lockstep's database, which it knows only
// when it serves lockstep itself.
var errAccessTarget = errors.New("bench: -access runs lockstep in this process (it seeds its database) and its own load: drop -target, -hot and -storm")
