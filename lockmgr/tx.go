package lockmgr

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// lockQuery sets the transaction's timeouts and name, then takes the
// customer's lock. The select list is evaluated in order: the set_config
// calls run first, so the wait already obeys lock_timeout, and the two clock
// readings around the lock give the time spent waiting for it.
const lockQuery = `
SELECT set_config('lock_timeout', $1, true),
       set_config('statement_timeout', $2, true),
       set_config('application_name', $3, true),
       clock_timestamp(),
       pg_advisory_xact_lock(hashtext($4))::text,
       clock_timestamp()`

// Tx is a customer transaction as InCustomerTx's fn sees it.
//
// BEGIN and the lock statement are not sent on their own: they go in front
// of fn's first statement or batch, in the same round trip, and that
// statement runs once the lock is granted. So a transaction costs no round
// trip for itself beyond COMMIT, and the lock is held from fn's first
// statement on. Go code in fn before that first statement runs before the
// lock is granted, while another writer may hold it; it has nothing from the
// database to work on yet. Like pgx.Tx, a Tx is not safe for concurrent use.
//
// A batch is the way to send several statements in one round trip. Errors
// returned by a batch callback make pgx forget the batch's prepared
// statements, so callbacks should report an expected outcome (no row, say)
// through their variables and keep errors for failures.
type Tx struct {
	m        *Manager
	customer string
	who      Who
	queued   time.Time // when the attempt began waiting for its turn

	tx     pgx.Tx    // nil until the first round trip
	locked bool      // the lock statement succeeded
	heldAt time.Time // when the lock was granted, by this process's clock
}

// Exec runs one statement.
func (t *Tx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.tx != nil {
		return t.tx.Exec(ctx, sql, args...)
	}
	var tag pgconn.CommandTag
	b := &pgx.Batch{}
	b.Queue(sql, args...).Exec(func(ct pgconn.CommandTag) error {
		tag = ct
		return nil
	})
	err := t.SendBatch(ctx, b)
	return tag, err
}

// QueryRow runs a query expected to return at most one row. As with pgx,
// errors, pgx.ErrNoRows included, are reported by Scan.
func (t *Tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.tx != nil {
		return t.tx.QueryRow(ctx, sql, args...)
	}
	return &firstRow{t: t, ctx: ctx, sql: sql, args: args}
}

// firstRow is a QueryRow that is the transaction's first statement: it is
// sent, behind BEGIN and the lock, when it is scanned.
type firstRow struct {
	t    *Tx
	ctx  context.Context
	sql  string
	args []any
}

func (r *firstRow) Scan(dest ...any) error {
	var scanErr error
	b := &pgx.Batch{}
	b.Queue(r.sql, r.args...).QueryRow(func(row pgx.Row) error {
		err := row.Scan(dest...)
		if errors.Is(err, pgx.ErrNoRows) {
			scanErr = err // an outcome, not a batch failure
			return nil
		}
		return err
	})
	if err := r.t.SendBatch(r.ctx, b); err != nil {
		return err
	}
	return scanErr
}

// Query runs a query returning rows. As the transaction's first statement
// it costs a round trip of its own for BEGIN and the lock; batch the first
// statements instead where it matters.
func (t *Tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.tx == nil {
		if err := t.SendBatch(ctx, &pgx.Batch{}); err != nil {
			return nil, err
		}
	}
	return t.tx.Query(ctx, sql, args...)
}

// SendBatch sends b's statements in one round trip, runs their callbacks in
// order and closes the batch. The first error, of a statement or a
// callback, is returned; the statements after a failed one do not run, and
// the transaction is then aborted (fn should return the error).
func (t *Tx) SendBatch(ctx context.Context, b *pgx.Batch) error {
	if t.tx != nil {
		return t.tx.SendBatch(ctx, b).Close()
	}
	return t.begin(ctx, b)
}

// begin sends BEGIN, the lock statement and rest in one round trip.
func (t *Tx) begin(ctx context.Context, rest *pgx.Batch) error {
	var before, after time.Time
	b := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, 2+rest.Len())}
	b.BeginTx(pgx.TxOptions{})
	b.Queue(lockQuery, t.m.lockTimeout, t.m.statementTimeout,
		t.who.applicationName(), t.customer).QueryRow(func(row pgx.Row) error {
		if err := row.Scan(nil, nil, nil, &before, nil, &after); err != nil {
			return err
		}
		t.locked = true
		return nil
	})
	b.QueuedQueries = append(b.QueuedQueries, rest.QueuedQueries...)

	sent := time.Now()
	br := t.m.pool.SendBatch(ctx, b)
	t.tx = br.Tx() // closed already if the batch failed before BEGIN
	err := br.Close()
	if !t.locked {
		if SQLState(err) == "55P03" {
			// A wait that ended in lock_timeout is the worst wait: count it too.
			t.m.obs.LockWaited(t.who.Writer, time.Since(t.queued))
		}
		if err == nil {
			err = errors.New("lock statement returned no row")
		}
		return fmt.Errorf("lock customer %s: %w", t.customer, err)
	}
	waited := after.Sub(before)
	t.heldAt = sent.Add(waited)
	t.m.obs.LockWaited(t.who.Writer, t.heldAt.Sub(t.queued))
	return err
}

// commit ends a transaction fn is done with. A transaction in which fn ran
// no statement still takes the lock first.
func (t *Tx) commit(ctx context.Context) error {
	if t.tx == nil {
		if err := t.SendBatch(ctx, &pgx.Batch{}); err != nil {
			return err
		}
	}
	if err := t.tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// rollback ends the transaction, even when the request's context is already
// cancelled. A failed rollback closes the connection; the pool replaces it.
func (t *Tx) rollback(ctx context.Context) {
	if t.tx == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = t.tx.Rollback(ctx) // ErrTxClosed when it never began
}

// observeHold reports how long the lock was held, once the transaction ended.
func (t *Tx) observeHold() {
	if t.locked {
		t.m.obs.LockHeld(t.who.Writer, time.Since(t.heldAt))
	}
}
