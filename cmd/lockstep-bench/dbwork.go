package main

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DBCounters counts what a pgx pool sends to PostgreSQL: statements (pgx's
// tracer sees every Exec, Query and QueryRow, BEGIN and COMMIT included),
// the prepares of pgx's statement cache, and network round trips (a read
// that follows a write on a connection). The in-process bench puts it on
// lockstep's pool, so the report says how many statements, round trips and
// transactions a request costs.
type DBCounters struct {
	statements atomic.Int64
	begins     atomic.Int64
	commits    atomic.Int64
	rollbacks  atomic.Int64
	prepares   atomic.Int64
	roundTrips atomic.Int64
}

var (
	_ pgx.QueryTracer   = (*DBCounters)(nil)
	_ pgx.BatchTracer   = (*DBCounters)(nil)
	_ pgx.PrepareTracer = (*DBCounters)(nil)
)

// TraceQueryStart implements pgx.QueryTracer.
func (c *DBCounters) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	c.count(data.SQL)
	return ctx
}

func (c *DBCounters) count(sql string) {
	c.statements.Add(1)
	// Only the statement's start matters: lowering all of a long SELECT at
	// every read was bench work on lockstep's cores.
	s := strings.TrimSpace(sql)
	s = strings.ToLower(s[:min(len(s), 16)])
	switch {
	case s == "begin", strings.HasPrefix(s, "begin ") || strings.HasPrefix(s, "begin;"):
		c.begins.Add(1)
	case s == "commit":
		c.commits.Add(1)
	case s == "rollback":
		c.rollbacks.Add(1)
	}
}

// TraceBatchStart implements pgx.BatchTracer.
func (c *DBCounters) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer: each statement of a batch.
func (c *DBCounters) TraceBatchQuery(_ context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	c.count(data.SQL)
}

// TraceBatchEnd implements pgx.BatchTracer.
func (c *DBCounters) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// TraceQueryEnd implements pgx.QueryTracer.
func (c *DBCounters) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TracePrepareStart implements pgx.PrepareTracer.
func (c *DBCounters) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	c.prepares.Add(1)
	return ctx
}

// TracePrepareEnd implements pgx.PrepareTracer.
func (c *DBCounters) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// WrapDial returns a dialer whose connections count round trips.
func (c *DBCounters) WrapDial(dial pgconn.DialFunc) pgconn.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: conn, c: c}, nil
	}
}

type countingConn struct {
	net.Conn
	c     *DBCounters
	wrote atomic.Bool
}

func (cc *countingConn) Write(b []byte) (int, error) {
	cc.wrote.Store(true)
	return cc.Conn.Write(b)
}

func (cc *countingConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	if n > 0 && cc.wrote.Swap(false) {
		cc.c.roundTrips.Add(1)
	}
	return n, err
}

// DBWork is a snapshot of the counters, or a difference of two.
type DBWork struct {
	Statements, Begins, Commits, Rollbacks, Prepares, RoundTrips int64
}

// Snapshot reads the counters.
func (c *DBCounters) Snapshot() DBWork {
	return DBWork{
		Statements: c.statements.Load(), Begins: c.begins.Load(), Commits: c.commits.Load(),
		Rollbacks: c.rollbacks.Load(), Prepares: c.prepares.Load(), RoundTrips: c.roundTrips.Load(),
	}
}

// Sub returns w minus o.
func (w DBWork) Sub(o DBWork) DBWork {
	return DBWork{w.Statements - o.Statements, w.Begins - o.Begins, w.Commits - o.Commits,
		w.Rollbacks - o.Rollbacks, w.Prepares - o.Prepares, w.RoundTrips - o.RoundTrips}
}

var execLookPath = exec.LookPath

func execOutput(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	return string(out), err
}
