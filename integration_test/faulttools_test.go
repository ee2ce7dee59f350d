//go:build faults

package integration_test

// The fault tests' tools: a connection killer (a pgx tracer that drops a
// writer's connection at a chosen point of its transaction, and a proxy
// that loses COMMIT's answer), and samplers of the pool, of /readyz and of
// the retry counter.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// poolWatch samples a pool's statistics until stopped.
type poolWatch struct {
	stop          chan struct{}
	done          chan struct{}
	maxAcquired   atomic.Int32
	maxLockWaits  atomic.Int32
	emptyAcquires int64
	acquireWait   time.Duration
}

// watchPool samples b.db.Pool every 20 ms: the most connections acquired at
// once and the most lockstep backends waiting at once on customer's lock.
func watchPool(b *bundle, customer string) *poolWatch {
	w := &poolWatch{stop: make(chan struct{}), done: make(chan struct{})}
	before := b.db.Pool.Stat()
	conn, err := pgx.Connect(context.Background(), b.db.URL)
	if err != nil {
		b.t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if n := b.db.Pool.Stat().AcquiredConns(); n > w.maxAcquired.Load() {
				w.maxAcquired.Store(n)
			}
			var waits int32
			// Only waits for this customer's lock: other customers' traffic
			// may briefly wait on their own locks at the same time.
			if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objsubid = 1
  AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext($1)
  AND a.datname = current_database() AND a.application_name LIKE 'lockstep %'`, customer).Scan(&waits); err == nil && waits > w.maxLockWaits.Load() {
				w.maxLockWaits.Store(waits)
			}
			select {
			case <-w.stop:
				after := b.db.Pool.Stat()
				w.emptyAcquires = after.EmptyAcquireCount() - before.EmptyAcquireCount()
				w.acquireWait = after.AcquireDuration() - before.AcquireDuration()
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *poolWatch) finish() *poolWatch {
	close(w.stop)
	<-w.done
	return w
}

func (w *poolWatch) String() string {
	return fmt.Sprintf("max acquired %d, max lockstep connections waiting on the stuck customer's lock %d, acquires that waited for a connection %d (total wait %s)",
		w.maxAcquired.Load(), w.maxLockWaits.Load(), w.emptyAcquires, w.acquireWait.Round(time.Millisecond))
}

// killPoint is where in a writer's transaction its connection is dropped.
type killPoint string

const (
	afterLock     killPoint = "after_lock"      // pg_terminate_backend once the customer's lock is granted
	afterWrites   killPoint = "after_writes"    // ... once the mutation and the processed mark are written
	duringCommit  killPoint = "during_commit"   // ... while the backend executes COMMIT (a deferred trigger widens it)
	commitAckLost killPoint = "commit_ack_lost" // COMMIT succeeds on the server; the connection drops before its answer
)

type sqlKey struct{}

// killer is a pgx tracer on the app's pool that drops the writer's
// connection at its kill point: once per event, or on every attempt for
// doomed events, so that their retry budget runs out and Stripe must
// redeliver them.
type killer struct {
	t      testing.TB
	point  killPoint
	admin  *pgxpool.Pool // direct connections for pg_terminate_backend
	proxy  *ackProxy
	doomed map[string]bool
	on     atomic.Bool

	mu      sync.Mutex
	running map[*pgx.Conn]string // the event whose transaction runs on conn
	hits    map[string]int       // kills so far, per event
	pending sync.WaitGroup

	kills, misses atomic.Int64
}

// noteWriter records the event whose transaction starts on conn, from
// lockmgr's lock statement (its third argument is the application_name).
func (k *killer) noteWriter(conn *pgx.Conn, sql string, args []any) {
	if !strings.Contains(sql, "pg_advisory_xact_lock(hashtext(") || len(args) < 3 {
		return
	}
	if name, ok := args[2].(string); ok && strings.HasPrefix(name, "lockstep webhook ") {
		k.mu.Lock()
		k.running[conn] = strings.TrimPrefix(name, "lockstep webhook ")
		k.mu.Unlock()
	}
}

// TraceBatchStart sees a transaction's first batch: BEGIN and the lock
// statement ride in front of its first statements.
func (k *killer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	if k.on.Load() && data.Batch != nil {
		for _, q := range data.Batch.QueuedQueries {
			k.noteWriter(conn, q.SQL, q.Arguments)
		}
	}
	return ctx
}

// TraceBatchQuery runs as each statement's answer of a batch is read: the
// lock granted, or the processed mark written (the statements after it in
// the batch may have run on the server too; COMMIT has not).
func (k *killer) TraceBatchQuery(_ context.Context, conn *pgx.Conn, data pgx.TraceBatchQueryData) {
	if k.on.Load() && data.Err == nil {
		k.hitAfter(conn, data.SQL)
	}
}

func (k *killer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

func (k *killer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	ctx = context.WithValue(ctx, sqlKey{}, data.SQL)
	if !k.on.Load() {
		return ctx
	}
	switch {
	case strings.Contains(data.SQL, "pg_advisory_xact_lock(hashtext("): // lockmgr's first statement
		k.noteWriter(conn, data.SQL, data.Args)
	case data.SQL == "commit":
		if !k.take(conn) {
			return ctx
		}
		pid := conn.PgConn().PID()
		switch k.point {
		case duringCommit:
			k.pending.Add(1)
			go func() {
				defer k.pending.Done()
				k.killWhenCommitting(pid)
			}()
		case commitAckLost:
			k.proxy.dropCommitAck(pid)
			k.kills.Add(1)
		}
	}
	return ctx
}

func (k *killer) TraceQueryEnd(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryEndData) {
	if !k.on.Load() || data.Err != nil {
		return
	}
	sql, _ := ctx.Value(sqlKey{}).(string)
	k.hitAfter(conn, sql)
}

// hitAfter drops conn's backend once sql, the statement of its kill point,
// has answered.
func (k *killer) hitAfter(conn *pgx.Conn, sql string) {
	switch {
	case k.point == afterLock && strings.Contains(sql, "pg_advisory_xact_lock(hashtext("):
	case k.point == afterWrites && strings.Contains(sql, "INSERT INTO stripe_events") && strings.Contains(sql, "'processed'"):
	default:
		return
	}
	if k.take(conn) {
		k.terminate(conn.PgConn().PID())
	}
}

// take reports whether the transaction on conn is to be hit now, and counts it.
func (k *killer) take(conn *pgx.Conn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	ev, ok := k.running[conn]
	if !ok {
		return false
	}
	delete(k.running, conn)
	if k.hits[ev] >= 1 && !k.doomed[ev] {
		return false
	}
	k.hits[ev]++
	return true
}

// terminate ends backend pid and waits until it is gone.
func (k *killer) terminate(pid uint32) {
	var ok, gone bool
	err := k.admin.QueryRow(context.Background(), `SELECT pg_terminate_backend($1, 5000),
NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)`, int32(pid)).Scan(&ok, &gone)
	switch {
	case err != nil:
		k.t.Errorf("pg_terminate_backend(%d): %v", pid, err)
	case ok:
		k.kills.Add(1)
	case gone: // it had already ended: a COMMIT that finished first
		k.misses.Add(1)
	default:
		k.t.Errorf("pg_terminate_backend(%d): backend still there after 5s", pid)
	}
}

// killWhenCommitting waits until backend pid executes COMMIT, then ends it.
func (k *killer) killWhenCommitting(pid uint32) {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var state, query string
		err := k.admin.QueryRow(context.Background(), `SELECT coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity WHERE pid = $1`,
			int32(pid)).Scan(&state, &query)
		switch {
		case err != nil || state == "idle": // gone, or the commit finished first
			k.misses.Add(1)
			return
		case state == "active" && strings.EqualFold(strings.TrimSpace(query), "commit"):
			k.terminate(pid)
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	k.misses.Add(1)
}

// ackProxy forwards PostgreSQL connections and, for a backend it is told
// about, drops the connection instead of forwarding COMMIT's answer: the
// transaction is committed, the client never learns it.
type ackProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	armed   map[uint32]bool
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
	dropped atomic.Int64
}

func startAckProxy(t testing.TB, target string) *ackProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackProxy{ln: ln, target: target, armed: map[uint32]bool{}, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *ackProxy) dropCommitAck(pid uint32) {
	p.mu.Lock()
	p.armed[pid] = true
	p.mu.Unlock()
}

func (p *ackProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.mu.Lock()
		p.conns[client], p.conns[server] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(server, client)
			_ = server.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.serverToClient(server, client)
			_ = client.Close()
			_ = server.Close()
			p.mu.Lock()
			delete(p.conns, client)
			delete(p.conns, server)
			p.mu.Unlock()
		}()
	}
}

// serverToClient forwards the server's messages (all typed: sslmode is
// disabled) and drops the connection at an armed backend's COMMIT answer.
func (p *ackProxy) serverToClient(server, client net.Conn) {
	r := bufio.NewReaderSize(server, 64<<10)
	w := bufio.NewWriterSize(client, 64<<10)
	var pid uint32
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			_ = w.Flush()
			return
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n < 4 || n > 1<<30 {
			return
		}
		body := make([]byte, n-4)
		if _, err := io.ReadFull(r, body); err != nil {
			_ = w.Flush()
			return
		}
		switch hdr[0] {
		case 'K': // BackendKeyData: the backend's pid
			if len(body) >= 4 {
				pid = binary.BigEndian.Uint32(body[:4])
			}
		case 'C': // CommandComplete
			if string(bytes.TrimRight(body, "\x00")) == "COMMIT" {
				p.mu.Lock()
				armed := p.armed[pid]
				delete(p.armed, pid)
				p.mu.Unlock()
				if armed {
					p.dropped.Add(1)
					return // the server committed; the client sees the connection drop
				}
			}
		}
		_, _ = w.Write(hdr)
		_, _ = w.Write(body)
		if r.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
	}
}

func dropped(p *ackProxy) int64 {
	if p == nil {
		return 0
	}
	return p.dropped.Load()
}

// withHostPort returns url with its host and port replaced, and sslmode
// disabled (the proxy reads the protocol in clear).
func withHostPort(t testing.TB, raw, hostPort string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = hostPort
	q := u.Query()
	q.Set("sslmode", "disable")
	u.RawQuery = q.Encode()
	return u.String()
}

// retriesCounted sums lockstep_tx_retries_total of a server.
func retriesCounted(t testing.TB, b *bundle) float64 {
	t.Helper()
	fams, err := b.app.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range fams {
		if f.GetName() == "lockstep_tx_retries_total" {
			for _, m := range f.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// readyWatch polls /readyz and records when its answer changes.
type readyWatch struct {
	mu      sync.Mutex
	code    int
	changes []string
	start   time.Time
	stop    chan struct{}
	done    chan struct{}
}

func watchReady(b *bundle) *readyWatch {
	w := &readyWatch{start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(w.done)
		for {
			code := -1
			if res, err := client.Get(b.srv.URL + "/readyz"); err == nil {
				code = res.StatusCode
				_ = res.Body.Close()
			}
			w.mu.Lock()
			if code != w.code {
				w.code = code
				w.changes = append(w.changes, fmt.Sprintf("%s:%d", time.Since(w.start).Round(10*time.Millisecond), code))
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *readyWatch) current() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.code
}

// finish stops the watch.
func (w *readyWatch) finish() {
	close(w.stop)
	<-w.done
}
