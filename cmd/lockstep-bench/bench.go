package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// Options are the command's flags.
type Options struct {
	Customers    int
	Concurrency  []int
	Duration     time.Duration
	Events       int
	Dup          float64
	Success      float64
	Hot          bool
	Storm        bool
	Out          string
	Target       string
	StripeListen string
	Reference    bool
	Stepwise     bool
	Pgbench      string
	Rounds       int
	Scratch      bool
	Keep         bool
	ServerLog    string
	CPUProfile   string
	Access       bool
	// Scrapers scrape /metrics back to back while the load runs;
	// LedgerRows fills the in-process lockstep's ledger up to that many
	// rows first; LedgerMaxAge, when set, is how old its exported ledger
	// counts may be (metrics.LedgerMaxAge by default; 0s counts at every
	// scrape, as lockstep did before).
	Scrapers       int
	ScrapeInterval time.Duration
	Anonymous      bool // the scrapers send no METRICS_TOKEN
	LedgerRows     int
	LedgerMaxAge   string
}

// Usage is the text of -h, before the flags.
const Usage = `usage: lockstep-bench [flags]

Drives lockstep over loopback with signed webhooks (customer.subscription.updated,
a share of them redelivered) and checkout-success calls, one concurrency level
after another; each level stops at -duration or -events, whichever comes first.
After each level it runs the reference: scripts/pgbench/event.sql, the same SQL
transaction one event costs, driven by pgbench at the same concurrency against a
scratch database (lockstep's schema, created on the DATABASE_URL server and
dropped at the end). event.sql sends it in lockstep's round trips (BEGIN, the
lock and the event's statements pipelined in one, then COMMIT); with -stepwise
(the default) pgbench then runs the same statements again one per round trip, as
a plain client runs a transaction. It prints throughput, p50/p95/p99 latency of
webhooks and success calls, lock wait p99 (lockstep_lock_wait_seconds), errors
by status, peak memory, and lockstep's rate as a ratio of pgbench's: "ratio"
against the pipelined mirror, "ratio, one statement per round trip" against the
stepwise run.

Without -target (the default) it starts lockstep in this process on
127.0.0.1:0 against DATABASE_URL (migrating it first), with a fake Stripe API,
and removes the rows it wrote when done (-keep keeps them). With -scratch it
uses a database of its own on that server instead, dropped at the end.

With -target URL it drives a lockstep you started; that lockstep must read the
fake Stripe API this command serves on -stripe-listen, and share its secrets:
  LOCKSTEP_ENV=development STRIPE_API_BASE=http://127.0.0.1:12112 \
    DATABASE_URL=postgres://... lockstep serve &
  DATABASE_URL=postgres://... lockstep-bench -target http://127.0.0.1:8080
Webhooks are signed with the first STRIPE_WEBHOOK_SECRET (else the development
secret) and success calls carry APP_API_TOKEN (else the development token).
DATABASE_URL is then used only for the reference (unset: no reference).

flags:
`

// ParseArgs parses the command's flags. -h prints the usage to out and
// returns flag.ErrHelp.
func ParseArgs(args []string, out io.Writer) (*Options, error) {
	o := &Options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, Usage)
		fs.PrintDefaults()
	}
	var conc string
	fs.IntVar(&o.Customers, "customers", 1000, "number of customers the load spreads over")
	fs.StringVar(&conc, "concurrency", "16", "comma-separated concurrency levels (concurrent requests), e.g. 1,4,16")
	fs.DurationVar(&o.Duration, "duration", 10*time.Second, "how long each level runs")
	fs.IntVar(&o.Events, "events", 0, "stop each level after this many requests (0: no cap)")
	fs.Float64Var(&o.Dup, "dup", 0.2, "share of webhook deliveries that redeliver an event already sent")
	fs.Float64Var(&o.Success, "success", 0.1, "share of requests that are checkout-success calls")
	fs.BoolVar(&o.Hot, "hot", false, "put all traffic on one customer (it serializes on its lock by design)")
	fs.BoolVar(&o.Storm, "storm", false, "webhook storm: every worker sends webhooks for one hot customer while one more goroutine makes checkout-success calls for the other customers back to back")
	fs.StringVar(&o.Out, "out", "", "write report.md and report.json into this directory")
	fs.StringVar(&o.Target, "target", "", "base URL of a running lockstep (default: start one in this process)")
	fs.StringVar(&o.StripeListen, "stripe-listen", "127.0.0.1:12112", "with -target: address of the fake Stripe API the target must use as STRIPE_API_BASE")
	fs.BoolVar(&o.Reference, "reference", true, "run the pgbench reference after each level (false: neither event.sql run)")
	fs.BoolVar(&o.Stepwise, "stepwise", true, "with the reference: also run event.sql one statement per round trip (without its pipeline), and report lockstep's ratio to that too")
	fs.StringVar(&o.Pgbench, "pgbench", "pgbench", "pgbench binary")
	fs.IntVar(&o.Rounds, "rounds", 2, "split each level into this many rounds of lockstep then pgbench, alternating, so drifting machine load weighs on both")
	fs.BoolVar(&o.Scratch, "scratch", false, "in-process: run lockstep on a database of its own, created on the DATABASE_URL server and dropped at the end, as the reference's is")
	fs.BoolVar(&o.Keep, "keep", false, "in-process: keep the rows the bench wrote in DATABASE_URL")
	fs.StringVar(&o.ServerLog, "server-log", "", "in-process: write lockstep's log to this file (default: formatted and discarded)")
	fs.BoolVar(&o.Access, "access", false, "measure the paywall's read instead: GET /api/users/{user_id}/access by -concurrency readers over -customers users seeded in a mix of states, beside pgbench running the same SELECT (billing.AccessQuery) on a scratch database seeded alike")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of this process (in-process: lockstep and the load) to this file")
	fs.IntVar(&o.Scrapers, "scrapers", 0, "goroutines scraping /metrics back to back while the load runs (METRICS_TOKEN, when set, is sent)")
	fs.BoolVar(&o.Anonymous, "anonymous-scrapers", false, "with -scrapers: send no METRICS_TOKEN (with one set, lockstep answers them 401)")
	fs.DurationVar(&o.ScrapeInterval, "scrape-interval", 0, "with -scrapers: each scraper's pause between scrapes (0: back to back)")
	fs.IntVar(&o.LedgerRows, "ledger-rows", 0, "in-process: fill stripe_events up to this many rows before the load (removed after unless -keep)")
	fs.StringVar(&o.LedgerMaxAge, "ledger-max-age", "", "in-process: how old exported ledger counts may be, e.g. 0s to count at every scrape (default: lockstep's)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	var err error
	if o.Concurrency, err = ParseConcurrency(conc); err != nil {
		return nil, err
	}
	switch {
	case o.Customers < 1 || o.Customers > 1_000_000:
		return nil, errors.New("bench: -customers must be 1 to 1000000")
	case o.Storm && o.Customers < 2:
		return nil, errors.New("bench: -storm needs -customers of 2 or more (one hot, the others for success calls)")
	case o.Duration <= 0 || o.Duration > time.Hour:
		return nil, errors.New("bench: -duration must be positive and at most 1h")
	case o.Rounds < 1 || o.Rounds > 100:
		return nil, errors.New("bench: -rounds must be 1 to 100")
	case o.Events < 0:
		return nil, errors.New("bench: -events must be 0 or more")
	case o.Dup < 0 || o.Dup > 1:
		return nil, errors.New("bench: -dup must be between 0 and 1")
	case o.Success < 0 || o.Success > 1:
		return nil, errors.New("bench: -success must be between 0 and 1")
	case o.Scratch && o.Target != "":
		return nil, errors.New("bench: -scratch is for the in-process lockstep; a -target has its own database")
	case o.Access && (o.Target != "" || o.Hot || o.Storm):
		return nil, errAccessTarget
	case o.Scrapers < 0 || o.Scrapers > 256:
		return nil, errors.New("bench: -scrapers must be 0 to 256")
	case o.ScrapeInterval < 0 || o.ScrapeInterval > time.Hour:
		return nil, errors.New("bench: -scrape-interval must be 0 to 1h")
	case o.LedgerRows < 0 || o.LedgerRows > 10_000_000:
		return nil, errors.New("bench: -ledger-rows must be 0 to 10000000")
	case (o.LedgerRows > 0 || o.LedgerMaxAge != "") && o.Target != "":
		return nil, errors.New("bench: -ledger-rows and -ledger-max-age are for the in-process lockstep")
	case o.Hot && o.Storm:
		return nil, errors.New("bench: -hot and -storm exclude each other (-storm is hot webhooks plus success calls)")
	}
	if o.LedgerMaxAge != "" {
		if d, err := time.ParseDuration(o.LedgerMaxAge); err != nil || d < 0 {
			return nil, fmt.Errorf("bench: -ledger-max-age must be a duration such as 0s or 15s, got %q", o.LedgerMaxAge)
		}
	}
	if o.Target != "" {
		u, err := url.Parse(o.Target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("bench: -target must be an http(s) URL, got %q", o.Target)
		}
		o.Target = strings.TrimRight(o.Target, "/")
	}
	return o, nil
}

// ParseConcurrency reads a list such as "1,4,16".
func ParseConcurrency(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 1024 {
			return nil, fmt.Errorf("bench: -concurrency: %q is not a number from 1 to 1024", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("bench: -concurrency names no level")
	}
	return out, nil
}

// Config is a run: the options and what the caller set up.
type Config struct {
	Options
	// TargetURL is the lockstep to drive (Options.Target, or the in-process one).
	TargetURL string
	// InProcess says the target runs in this process.
	InProcess bool
	// Stripe is the fake Stripe API the target reads.
	Stripe *stripefake.Server `json:"-"`
	// WebhookSecret signs the webhooks; AppToken authorizes success calls.
	WebhookSecret, AppToken string `json:"-"`
	// DatabaseURL is the server of the reference's scratch database ("" for
	// no reference).
	DatabaseURL string `json:"-"`
	// LockstepDB is the database lockstep uses, to read its backends' CPU
	// ("" when unknown).
	LockstepDB string
	// PID is the target's process, for memory (0: found by its port).
	PID int
	// MetricsToken is sent to /metrics ("" when it is open).
	MetricsToken string `json:"-"`
	// DB counts the target's statements (in-process only; nil otherwise).
	DB *DBCounters `json:"-"`
	// Command is the command line, for the report.
	Command string
	// Stdout gets the results; Progress the line printed every second.
	Stdout, Progress io.Writer `json:"-"`
}

// Mode names the load's shape.
func (o Options) Mode() string {
	switch {
	case o.Storm:
		return "storm"
	case o.Hot:
		return "hot"
	}
	return "spread"
}

// Level is one concurrency level's results.
type Level struct {
	Concurrency int
	Elapsed     time.Duration
	Requests    int
	Errors      int
	// RPS is every request per second; WebhookRPS and SuccessRPS by kind.
	RPS, WebhookRPS, SuccessRPS float64
	Webhook, Success            Latencies
	Processed, Duplicate        int
	WebhookStatus               map[string]int
	SuccessStatus               map[string]int
	// LockWaitP99 and LockHoldP99 are seconds, by writer ("" for all),
	// from lockstep's histograms (NaN when no lock was taken).
	LockWaitP99, LockHoldP99 Seconds
	LockWaits                float64
	Retries                  float64
	PoolEmptyAcquires        float64
	PoolAcquireWait          float64 // seconds
	DB                       *DBWork
	Memory                   Memory
	// CPU is the CPU time per request while the level ran.
	CPU CPU
	// Reference is pgbench running event.sql as lockstep runs the
	// transaction: pipelined, in the same round trips.
	Reference    *Reference
	ReferenceErr string
	// ReferenceRetries counts reference runs that failed and were run again.
	ReferenceRetries int
	// Ratio is lockstep's rate over the reference's: every request in
	// spread and hot mode, webhooks only under -storm.
	Ratio float64
	// Stepwise is pgbench running the same statements one per round trip
	// (-stepwise); StepwiseErr, StepwiseRetries and StepwiseRatio are its
	// ReferenceErr, ReferenceRetries and Ratio.
	Stepwise        *Reference
	StepwiseErr     string
	StepwiseRetries int
	StepwiseRatio   float64
	// Scrapes are the -scrapers' scrapes of /metrics during the load.
	Scrapes      Latencies
	ScrapeErrors int
}

// Seconds are figures in seconds by name; NaN (no observation) is written
// to JSON as null.
type Seconds map[string]float64

// MarshalJSON implements json.Marshaler.
func (s Seconds) MarshalJSON() ([]byte, error) {
	m := make(map[string]*float64, len(s))
	for k, v := range s {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			m[k] = &v
		} else {
			m[k] = nil
		}
	}
	return json.Marshal(m)
}

// Report is a whole run.
type Report struct {
	Config     Config
	Run        string
	Started    time.Time
	Machine    Machine
	Levels     []Level
	PID        int
	Memory     Memory
	RSSSamples []RSSSample
	Notes      []string
}

// RSSSample is the target's resident set at a moment of the run.
type RSSSample struct {
	At       time.Duration // since the run started
	Requests int64         // requests completed by then, over all levels
	RSS      int64
}

// Run runs every level, printing as it goes, and returns the report (with
// the levels done so far when ctx ends it early, and ctx's error).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Stdout == nil {
		cfg.Stdout = io.Discard
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if cfg.Stripe == nil {
		return nil, errors.New("bench: no fake Stripe")
	}
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	rep := &Report{Config: cfg, Run: hex.EncodeToString(rb[:]), Started: time.Now()}
	maxConc := slices.Max(cfg.Concurrency)
	t := &target{base: cfg.TargetURL, secret: cfg.WebhookSecret, token: cfg.AppToken, metricsToken: cfg.MetricsToken, client: newHTTPClient(maxConc + 1)}
	defer t.client.CloseIdleConnections()
	if err := t.waitReady(ctx, 15*time.Second); err != nil {
		return rep, err
	}
	rep.PID = cfg.PID
	if rep.PID == 0 {
		if u, err := url.Parse(cfg.TargetURL); err == nil {
			if p, err := strconv.Atoi(u.Port()); err == nil && isLoopback(u.Hostname()) {
				rep.PID = pidListening(p)
			}
		}
	}

	useRef := cfg.Reference && cfg.DatabaseURL != ""
	pgbenchPath := ""
	if useRef {
		p, err := lookPath(cfg.Pgbench)
		if err != nil {
			return rep, fmt.Errorf("bench: pgbench not found (%v); install the PostgreSQL client tools or run with -reference=false", err)
		}
		pgbenchPath = p
	}
	rep.Machine = describeMachine(ctx, cfg.DatabaseURL, pgbenchPath)

	w := newWorkload(rep.Run, cfg.Customers, cfg.Hot, cfg.Storm, cfg.Dup, cfg.Success, cfg.Stripe)
	fmt.Fprintf(cfg.Stdout, "lockstep-bench: %s\n", describeLoad(cfg))
	fmt.Fprintf(cfg.Stdout, "target: %s; run id %s (customers cus_bench_%s_*)\n", describeTarget(cfg, rep.PID), rep.Run, rep.Run)
	fmt.Fprintf(cfg.Stdout, "machine: %s\n", rep.Machine.String())
	if rep.Machine.Revision != "" {
		fmt.Fprintf(cfg.Stdout, "source: %s\n", rep.Machine.Revision)
	}

	var ref *ScratchDB
	if useRef {
		var err error
		if ref, err = CreateScratch(ctx, cfg.DatabaseURL, "ref"); err != nil {
			return rep, fmt.Errorf("reference: %w", err)
		}
		defer func() {
			if err := ref.Drop(); err != nil {
				fmt.Fprintf(cfg.Progress, "bench: could not drop the reference database %s: %v\n", ref.name, err)
			}
		}()
		fmt.Fprintf(cfg.Stdout, "reference: pgbench on scratch database %s (dropped at the end): %s\n", ref.name, describeReferences(cfg))
	} else if cfg.Reference {
		rep.Notes = append(rep.Notes, "no reference: DATABASE_URL is not set")
		fmt.Fprintln(cfg.Stdout, "reference: none (DATABASE_URL is not set)")
	}

	var refRun *refRunner
	if ref != nil {
		// The reference's writers spread like lockstep's webhooks: over
		// every customer, or all on one (-hot, -storm).
		customers := len(w.customers)
		if cfg.Hot || cfg.Storm {
			customers = 1
		}
		refRun = &refRunner{path: pgbenchPath, url: ref.url, threads: rep.Machine.CPUs,
			customers: customers, payload: w.samplePayload(), stepwise: cfg.Stepwise}
	}
	mon := newMonitor(rep.PID, rep.Started)
	var total int64
	for _, c := range cfg.Concurrency {
		if ctx.Err() != nil {
			break
		}
		lvl, err := runLevel(ctx, cfg, w, t, c, mon, &total, refRun)
		if err != nil {
			return rep, err
		}
		printLevel(cfg.Stdout, cfg, &lvl)
		rep.Levels = append(rep.Levels, lvl)
	}
	rep.RSSSamples = mon.samples()
	if rep.PID > 0 {
		rep.Memory, _ = readMemory(rep.PID)
	}
	printSummary(cfg.Stdout, rep)
	if cfg.Out != "" && len(rep.Levels) > 0 {
		if err := writeOutputs(cfg.Out, rep); err != nil {
			return rep, err
		}
		fmt.Fprintf(cfg.Stdout, "wrote %s and %s\n", filepath.Join(cfg.Out, "report.md"), filepath.Join(cfg.Out, "report.json"))
	}
	return rep, ctx.Err()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func lookPath(name string) (string, error) {
	if strings.ContainsRune(name, os.PathSeparator) {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return name, nil
	}
	return execLookPath(name)
}

// refRunner runs the references after each round of a level.
type refRunner struct {
	path, url string
	threads   int
	customers int
	payload   []byte
	stepwise  bool // run stepwiseScript after mirrorScript
}

// levelRefs are the references of one level, nil when not run: the
// pipelined mirror and the stepwise run.
func (r *refRunner) levelRefs() (mirror, stepwise *refRounds) {
	if r == nil {
		return nil, nil
	}
	mirror = &refRounds{name: "reference", script: mirrorScript}
	if r.stepwise {
		stepwise = &refRounds{name: "stepwise reference", script: stepwiseScript}
	}
	return mirror, stepwise
}

// pgbench is a run of script with c clients for d.
func (r *refRunner) pgbench(script refScript, c int, d time.Duration) pgbenchRun {
	return pgbenchRun{Path: r.path, Script: script, DBURL: r.url, Clients: c, Threads: r.threads,
		Duration: d, Customers: r.customers, Payload: r.payload}
}

// refRounds gathers one reference's runs over a level's rounds.
type refRounds struct {
	name    string // for the progress lines
	script  refScript
	runs    []*Reference
	retries int    // runs that failed and were run again
	err     string // the run that failed twice; the reference stops there
}

// run runs the reference for a round, unless it has failed already.
func (rr *refRounds) run(ctx context.Context, progress io.Writer, pr pgbenchRun) {
	if rr == nil || rr.err != "" {
		return
	}
	r, err := pr.run(ctx)
	if err != nil && ctx.Err() == nil {
		// pgbench aborts a client on any error, a lock_timeout on a
		// machine that stalled included, where lockstep retries: try
		// the round once more before giving up on the reference.
		fmt.Fprintf(progress, "bench: %s failed, running it again: %v\n", rr.name, err)
		rr.retries++
		r, err = pr.run(ctx)
	}
	if err != nil {
		rr.err, rr.runs = err.Error(), nil
		return
	}
	rr.runs = append(rr.runs, r)
}

// result is the reference over the level's rounds (nil when it failed or
// never ran), its error and its retries.
func (rr *refRounds) result() (*Reference, string, int) {
	if rr == nil {
		return nil, "", 0
	}
	var ref *Reference
	if len(rr.runs) > 0 {
		ref = CombineReferences(rr.runs)
	}
	return ref, rr.err, rr.retries
}

// ratio is rate over the reference's (0 without one).
func ratio(rate float64, ref *Reference) float64 {
	if ref == nil || ref.TPS <= 0 {
		return 0
	}
	return rate / ref.TPS
}

// runLevel runs one concurrency level: Rounds rounds, each a share of the
// duration (and of the request cap) of lockstep and then as long of each
// reference, so that a machine whose load drifts (other tenants) weighs on
// both sides alike.
func runLevel(ctx context.Context, cfg Config, w *workload, t *target, c int, mon *monitor, total *int64, ref *refRunner) (Level, error) {
	lvl := Level{Concurrency: c}
	before, err := scrapeMetrics(ctx, t.client, t.base, t.metricsToken)
	if err != nil {
		return lvl, err
	}
	var db0 DBWork
	if cfg.DB != nil {
		db0 = cfg.DB.Snapshot()
	}
	rounds := max(1, cfg.Rounds)
	tl := newTally()
	var cpu cpuSum
	mirror, stepwise := ref.levelRefs()
	var scrapeTimes []time.Duration
	for i := range rounds {
		if ctx.Err() != nil {
			break
		}
		maxReq := int64(0)
		if cfg.Events > 0 {
			maxReq = int64(cfg.Events*(i+1)/rounds - cfg.Events*i/rounds)
		}
		r := &loadRun{w: w, t: t, concurrency: c, duration: cfg.Duration / time.Duration(rounds), maxRequests: maxReq}
		label := fmt.Sprintf("%s c=%d", cfg.Options.Mode(), c)
		if rounds > 1 {
			label += fmt.Sprintf(" round %d/%d", i+1, rounds)
		}
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			progress(cfg.Progress, label, r, mon, *total, done)
		}()
		cpu0 := markCPU(mon.pid)
		bw := watchBackends(cfg.LockstepDB, 200*time.Millisecond)
		token := t.metricsToken
		if cfg.Anonymous {
			token = ""
		}
		scr := startScrapers(ctx, t, token, cfg.Scrapers, cfg.ScrapeInterval)
		part, elapsed := r.run(ctx)
		took, scrapeErrs := scr.stop()
		scrapeTimes = append(scrapeTimes, took...)
		lvl.ScrapeErrors += scrapeErrs
		cpu.add(cpu0, markCPU(mon.pid))
		cpu.addDB(bw.total())
		close(done)
		wg.Wait()
		*total += r.live.requests.Load()
		tl.merge(part)
		lvl.Elapsed += elapsed

		for _, rr := range []*refRounds{mirror, stepwise} {
			if rr != nil && ctx.Err() == nil {
				rr.run(ctx, cfg.Progress, ref.pgbench(rr.script, c, elapsed))
			}
		}
	}
	if cfg.DB != nil {
		d := cfg.DB.Snapshot().Sub(db0)
		lvl.DB = &d
	}
	after, err := scrapeMetrics(context.WithoutCancel(ctx), t.client, t.base, t.metricsToken)
	if err != nil {
		return lvl, err
	}

	lvl.Scrapes = Summarize(scrapeTimes)
	lvl.Webhook = Summarize(tl.webhook)
	lvl.Success = Summarize(tl.success)
	lvl.Requests = lvl.Webhook.N + lvl.Success.N
	lvl.CPU = cpu.perRequest(lvl.Requests)
	if secs := lvl.Elapsed.Seconds(); secs > 0 {
		lvl.RPS = float64(lvl.Requests) / secs
		lvl.WebhookRPS = float64(lvl.Webhook.N) / secs
		lvl.SuccessRPS = float64(lvl.Success.N) / secs
	}
	lvl.Processed, lvl.Duplicate = tl.processed, tl.duplicate
	lvl.WebhookStatus, lvl.SuccessStatus = tl.webhookStatus, tl.successStatus
	for _, m := range []map[string]int{tl.webhookStatus, tl.successStatus} {
		for k, n := range m {
			if isError(k) {
				lvl.Errors += n
			}
		}
	}
	lvl.LockWaitP99, lvl.LockHoldP99 = Seconds{}, Seconds{}
	for _, writer := range []string{"", "webhook", "checkout"} {
		match := map[string]string{}
		if writer != "" {
			match["writer"] = writer
		}
		wait := DeltaBuckets(before.Histogram("lockstep_lock_wait_seconds", match), after.Histogram("lockstep_lock_wait_seconds", match))
		lvl.LockWaitP99[writer] = HistogramQuantile(0.99, wait)
		if writer == "" {
			lvl.LockWaits = Count(wait)
		}
		hold := DeltaBuckets(before.Histogram("lockstep_lock_hold_seconds", match), after.Histogram("lockstep_lock_hold_seconds", match))
		lvl.LockHoldP99[writer] = HistogramQuantile(0.99, hold)
	}
	lvl.Retries = after.Sum("lockstep_tx_retries_total", nil) - before.Sum("lockstep_tx_retries_total", nil)
	lvl.PoolEmptyAcquires = after.Sum("lockstep_db_pool_empty_acquires_total", nil) - before.Sum("lockstep_db_pool_empty_acquires_total", nil)
	lvl.PoolAcquireWait = after.Sum("lockstep_db_pool_acquire_wait_seconds_total", nil) - before.Sum("lockstep_db_pool_acquire_wait_seconds_total", nil)
	if mon.pid > 0 {
		lvl.Memory, _ = readMemory(mon.pid)
	}
	rate := lvl.RPS
	if cfg.Storm {
		rate = lvl.WebhookRPS
	}
	lvl.Reference, lvl.ReferenceErr, lvl.ReferenceRetries = mirror.result()
	lvl.Stepwise, lvl.StepwiseErr, lvl.StepwiseRetries = stepwise.result()
	lvl.Ratio, lvl.StepwiseRatio = ratio(rate, lvl.Reference), ratio(rate, lvl.Stepwise)
	return lvl, nil
}

// monitor samples the target's resident set once a second.
type monitor struct {
	pid   int
	start time.Time
	mu    sync.Mutex
	rss   []RSSSample
}

func newMonitor(pid int, start time.Time) *monitor { return &monitor{pid: pid, start: start} }

func (m *monitor) sample(requests int64) int64 {
	if m.pid <= 0 {
		return 0
	}
	mem, err := readMemory(m.pid)
	if err != nil {
		return 0
	}
	m.mu.Lock()
	m.rss = append(m.rss, RSSSample{At: time.Since(m.start), Requests: requests, RSS: mem.RSS})
	m.mu.Unlock()
	return mem.RSS
}

func (m *monitor) samples() []RSSSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.rss)
}

// progress prints a line every second until done.
func progress(out io.Writer, label string, r *loadRun, mon *monitor, before int64, done <-chan struct{}) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	var last int64
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		n := r.live.requests.Load()
		line := fmt.Sprintf("bench %s %4.0fs %9d requests %7d req/s  errors %d", label,
			time.Since(start).Seconds(), n, n-last, r.live.errors.Load())
		if rss := mon.sample(before + n); rss > 0 {
			line += "  rss " + mb(rss)
		}
		fmt.Fprintln(out, line)
		last = n
	}
}

func describeLoad(cfg Config) string {
	var load string
	switch cfg.Mode() {
	case "storm":
		load = fmt.Sprintf("webhook storm on one customer from every worker, plus one goroutine making checkout-success calls for the other %d customers", cfg.Customers-1)
	case "hot":
		load = "all traffic on one hot customer"
	default:
		load = fmt.Sprintf("spread over %d customers", cfg.Customers)
	}
	s := fmt.Sprintf("%s; %s redelivered", load, pct(cfg.Dup))
	if !cfg.Storm {
		s += fmt.Sprintf(", %s checkout-success calls", pct(cfg.Success))
	}
	s += fmt.Sprintf("; concurrency %s; %s per level", joinInts(cfg.Concurrency), cfg.Duration)
	if cfg.Events > 0 {
		s += fmt.Sprintf(" or %d requests", cfg.Events)
	}
	if cfg.Rounds > 1 {
		s += fmt.Sprintf(", in %d rounds alternating with the reference", cfg.Rounds)
	}
	return s
}

// describeReferences says what the reference runs.
func describeReferences(cfg Config) string {
	s := "event.sql pipelined as lockstep sends it"
	if cfg.Stepwise {
		s += ", then the same statements one per round trip"
	}
	return s
}

func describeTarget(cfg Config, pid int) string {
	s := cfg.TargetURL
	if cfg.InProcess {
		s = "lockstep in this process on " + strings.TrimPrefix(cfg.TargetURL, "http://")
	}
	s += ", fake Stripe on " + strings.TrimPrefix(cfg.Stripe.URL, "http://")
	if pid > 0 && !cfg.InProcess {
		s += fmt.Sprintf(" (target pid %d)", pid)
	}
	return s
}

func pct(f float64) string {
	return strconv.FormatFloat(f*100, 'f', -1, 64) + "%"
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func (m Machine) String() string {
	parts := []string{fmt.Sprintf("%d CPUs", m.CPUs)}
	if m.CPUModel != "" {
		parts[0] += " (" + m.CPUModel + ")"
	}
	if m.MemTotal != "" {
		parts = append(parts, m.MemTotal)
	}
	parts = append(parts, m.Go, m.OS)
	if m.Postgres != "" {
		parts = append(parts, m.Postgres)
	}
	return strings.Join(parts, ", ")
}

func ratioString(r float64) string {
	if r == 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2f", r)
}
