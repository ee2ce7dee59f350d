package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/scripts/pgbench"
	schema "github.com/lockstep/lockstep/sql"
)

// Reference is what pgbench measured at one concurrency.
type Reference struct {
	Clients      int
	Duration     time.Duration
	Transactions int
	Failed       int
	TPS          float64
	LatencyAvg   time.Duration
	Latencies    Latencies // from pgbench's per-transaction log
	CPU          CPU       // per transaction; Process is pgbench's own
	Command      string    // the command line, database URL without password
	Rounds       int       // runs combined into this one

	samples []time.Duration
}

// CombineReferences merges the runs of one level's rounds: transactions and
// latencies pooled, the rate over the time they ran in all.
func CombineReferences(refs []*Reference) *Reference {
	if len(refs) == 1 {
		refs[0].Rounds = 1
		return refs[0]
	}
	out := &Reference{Clients: refs[0].Clients, Command: refs[0].Command, Rounds: len(refs)}
	var secs, machine, proc, db float64
	for _, r := range refs {
		out.Duration += r.Duration
		out.Transactions += r.Transactions
		out.Failed += r.Failed
		out.samples = append(out.samples, r.samples...)
		if r.TPS > 0 {
			secs += float64(r.Transactions) / r.TPS
		}
		machine += float64(r.CPU.Machine) * float64(r.Transactions)
		proc += float64(r.CPU.Process) * float64(r.Transactions)
		db += float64(r.CPU.DB) * float64(r.Transactions)
	}
	if secs > 0 {
		out.TPS = float64(out.Transactions) / secs
	}
	if out.Transactions > 0 {
		out.LatencyAvg = time.Duration(secs / float64(out.Transactions) * float64(out.Clients) * float64(time.Second))
		n := float64(out.Transactions)
		out.CPU = CPU{Machine: time.Duration(machine / n), Process: time.Duration(proc / n), DB: time.Duration(db / n)}
	}
	out.Latencies = Summarize(out.samples)
	return out
}

// ScratchDB is a database of its own, with lockstep's schema, created at the
// start of a run and dropped at its end: the reference's, and lockstep's
// under -scratch.
type ScratchDB struct {
	serverURL string
	name      string
	url       string
}

// Name is the database's name.
func (db *ScratchDB) Name() string { return db.name }

// URL connects to the database.
func (db *ScratchDB) URL() string { return db.url }

// CreateScratch creates a database named lockstep_bench_KIND_<8 hex>_<pid> on
// the server of serverURL (a URL of any of its databases) and migrates it.
func CreateScratch(ctx context.Context, serverURL, kind string) (*ScratchDB, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	db := &ScratchDB{serverURL: serverURL, name: fmt.Sprintf("lockstep_bench_%s_%s_%d", kind, hex.EncodeToString(b[:]), os.Getpid())}
	u, err := url.Parse(serverURL)
	if err != nil {
		return nil, fmt.Errorf("scratch database: parse DATABASE_URL: %w", err)
	}
	u.Path = "/" + db.name
	u.RawPath = ""
	db.url = u.String()
	if err := adminExec(ctx, serverURL, "CREATE DATABASE "+pgx.Identifier{db.name}.Sanitize()); err != nil {
		return nil, fmt.Errorf("scratch database: %w", err)
	}
	if err := schema.Up(db.url); err != nil {
		_ = db.Drop()
		return nil, fmt.Errorf("scratch database: migrate %s: %w", db.name, err)
	}
	return db, nil
}

// Drop removes the database, even when the run was interrupted.
func (db *ScratchDB) Drop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return adminExec(ctx, db.serverURL, "DROP DATABASE IF EXISTS "+pgx.Identifier{db.name}.Sanitize()+" WITH (FORCE)")
}

func adminExec(ctx context.Context, serverURL, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgxOnly(serverURL))
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// pgxOnly drops the pool options a single connection rejects.
func pgxOnly(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	q := u.Query()
	for k := range q {
		if strings.HasPrefix(k, "pool_") {
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// libpqParams are the URL parameters pgbench (libpq) understands; pgx's own
// (pool_max_conns, default_query_exec_mode, ...) would make it fail.
var libpqParams = map[string]bool{
	"sslmode": true, "sslcert": true, "sslkey": true, "sslrootcert": true, "sslpassword": true,
	"sslcrl": true, "connect_timeout": true, "options": true, "target_session_attrs": true,
	"host": true, "port": true, "user": true, "password": true, "dbname": true,
	"passfile": true, "sslnegotiation": true, "gssencmode": true,
}

// LibpqURL returns dbURL with only the parameters libpq understands.
func LibpqURL(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return dbURL
	}
	q := u.Query()
	for k := range q {
		if !libpqParams[k] {
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// refScript is a script a reference runs.
type refScript struct {
	file  string // its name in the run's temporary directory
	sql   string
	shown string // how the command line in the report names it
}

var (
	// mirrorScript is event.sql, pipelined as lockstep sends it.
	mirrorScript = refScript{file: "event.sql", sql: pgbench.EventSQL, shown: "scripts/pgbench/event.sql"}
	// stepwiseScript is event.sql without its pipeline: one statement per
	// round trip.
	stepwiseScript = refScript{file: "event-stepwise.sql", sql: pgbench.EventStepwiseSQL,
		shown: `<scripts/pgbench/event.sql without \startpipeline and \endpipeline>`}
)

// pgbenchRun is one run of an event script.
type pgbenchRun struct {
	Path      string // the pgbench binary
	Script    refScript
	DBURL     string
	Clients   int
	Threads   int
	Duration  time.Duration // rounded to whole seconds, at least 1
	Customers int
	Payload   []byte
}

// run starts pgbench, waits for it (it stops after Duration; ctx kills it
// sooner) and parses its summary and per-transaction log.
func (p pgbenchRun) run(ctx context.Context) (*Reference, error) {
	dir, err := os.MkdirTemp("", "lockstep-pgbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, p.Script.file)
	if err := os.WriteFile(script, []byte(p.Script.sql), 0o600); err != nil {
		return nil, err
	}
	secs := max(1, int((p.Duration+time.Second/2)/time.Second))
	args := []string{
		"-n", "-M", "prepared",
		"-c", strconv.Itoa(p.Clients), "-j", strconv.Itoa(max(1, min(p.Threads, p.Clients))),
		"-T", strconv.Itoa(secs),
		"-D", "customers=" + strconv.Itoa(p.Customers),
		"-D", "payload=" + string(p.Payload),
		"-f", script,
		"-l", "--log-prefix=" + filepath.Join(dir, "log"),
	}
	shown := append([]string{p.Path}, args...)
	for i, a := range shown {
		switch {
		case strings.HasPrefix(a, "payload="):
			shown[i] = fmt.Sprintf("payload=<event JSON, %d bytes>", len(p.Payload))
		case a == script:
			shown[i] = p.Script.shown
		case strings.HasPrefix(a, "--log-prefix="):
			shown[i] = "--log-prefix=<tmp>/log"
		}
	}
	shown = append(shown, config.RedactURL(LibpqURL(p.DBURL)))
	args = append(args, LibpqURL(p.DBURL))

	// A run never outlives its duration by much: kill it after a grace.
	rctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(rctx, p.Path, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	busy0, okBusy0 := machineBusy()
	bw := watchBackends(dbName(p.DBURL), 100*time.Millisecond)
	err = cmd.Run()
	dbCPU, okDB := bw.total()
	if err != nil {
		return nil, fmt.Errorf("pgbench: %w: %s", err, lastLines(stderr.String(), 5))
	}
	busy1, okBusy1 := machineBusy()
	ref, err := ParsePgbench(stdout.String())
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, lastLines(stderr.String(), 5))
	}
	if n := time.Duration(ref.Transactions); n > 0 {
		if okBusy0 && okBusy1 {
			ref.CPU.Machine = (busy1 - busy0) / n
		}
		if st := cmd.ProcessState; st != nil {
			ref.CPU.Process = (st.UserTime() + st.SystemTime()) / n
		}
		if okDB {
			ref.CPU.DB = dbCPU / n
		}
	}
	ref.Command = strings.Join(quoteArgs(shown), " ")
	logs, _ := filepath.Glob(filepath.Join(dir, "log.*"))
	var samples []time.Duration
	for _, f := range logs {
		if samples, err = readPgbenchLog(f, samples); err != nil {
			return nil, err
		}
	}
	ref.samples = samples
	ref.Latencies = Summarize(samples)
	return ref, nil
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " <>'\"&;|$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

var (
	reTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((without initial connection time|excluding connections establishing)\)`)
	reTPSAny    = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	reProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	reFailed    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	reLatency   = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reClients   = regexp.MustCompile(`(?m)^number of clients: (\d+)`)
	reDuration  = regexp.MustCompile(`(?m)^duration: (\d+) s`)
)

// ErrNoTPS means pgbench's output held no tps line.
var ErrNoTPS = errors.New("pgbench: no tps in its output")

// ParsePgbench reads pgbench's summary: tps (without connection time when
// it says so), transactions processed and failed, average latency.
func ParsePgbench(out string) (*Reference, error) {
	r := &Reference{}
	m := reTPS.FindStringSubmatch(out)
	if m == nil {
		m = reTPSAny.FindStringSubmatch(out)
	}
	if m == nil {
		return nil, ErrNoTPS
	}
	var err error
	if r.TPS, err = strconv.ParseFloat(m[1], 64); err != nil {
		return nil, fmt.Errorf("pgbench: tps %q: %w", m[1], err)
	}
	if m := reProcessed.FindStringSubmatch(out); m != nil {
		r.Transactions, _ = strconv.Atoi(m[1])
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		r.Failed, _ = strconv.Atoi(m[1])
	}
	if m := reLatency.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		r.LatencyAvg = time.Duration(math.Round(v * float64(time.Millisecond)))
	}
	if m := reClients.FindStringSubmatch(out); m != nil {
		r.Clients, _ = strconv.Atoi(m[1])
	}
	if m := reDuration.FindStringSubmatch(out); m != nil {
		s, _ := strconv.Atoi(m[1])
		r.Duration = time.Duration(s) * time.Second
	}
	return r, nil
}

// readPgbenchLog appends the latencies of a pgbench -l log to samples. Each
// line is "client_id transaction_no time script_no time_epoch time_us ...",
// time being the transaction's latency in microseconds; a failed
// transaction's time is "failed" (or "skipped") and is left out.
func readPgbenchLog(path string, samples []time.Duration) ([]time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return samples, err
	}
	defer f.Close()
	return parsePgbenchLog(f, samples)
}

func parsePgbenchLog(r io.Reader, samples []time.Duration) ([]time.Duration, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		us, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			continue
		}
		samples = append(samples, time.Duration(us)*time.Microsecond)
	}
	return samples, sc.Err()
}
