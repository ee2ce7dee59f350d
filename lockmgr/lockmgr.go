// Package lockmgr runs lockstep's writes: one transaction per customer
// mutation that first takes pg_advisory_xact_lock(hashtext(customer id)), so
// writers for the same customer serialize across goroutines, processes and
// machines, with transient database failures retried under a bounded budget.
//
// Waiting for a customer's lock pins a pool connection: PostgreSQL makes the
// waiter's session wait, for at most lock_timeout per attempt. So that a
// customer whose lock is held for long (a stuck session, a burst of events
// for one customer) cannot starve the pool, a Manager lets at most
// WritersPerCustomer writers per customer at a time take a connection for
// that customer: the one holding the lock and the next in line, already
// waiting in PostgreSQL so the lock passes on without a round trip. The
// others queue in memory, in arrival order and without a connection, for at
// most the retry budget. Writers for other customers never wait behind them.
// Across processes the advisory lock alone serializes, and each process pins
// at most WritersPerCustomer connections per contended customer.
//
// It is the only code in lockstep that begins a transaction.
package lockmgr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// UserLockClass is the first key of the two-int4 advisory lock that guards a
// user's mapping: pg_advisory_xact_lock(UserLockClass, hashtext(user_id)).
// It is 'LSTS' in ASCII; the stripe_customer_locks view knows it.
const UserLockClass = 1280529491

// WritersPerCustomer is how many of a Manager's writers for one customer
// may hold a pool connection at once (see the package comment).
const WritersPerCustomer = 2

// Config bounds how long a writer may wait and retry.
type Config struct {
	// LockTimeout is SET LOCAL lock_timeout for every transaction: how long
	// one attempt waits for a customer's lock (or any row lock) before it
	// fails with 55P03 and is retried.
	LockTimeout time.Duration
	// StatementTimeout is SET LOCAL statement_timeout for every transaction.
	StatementTimeout time.Duration
	// RetryBudget caps the total time spent on one transaction's attempts,
	// queueing in memory behind other writers for the same customer
	// included; the last attempt may then wait up to LockTimeout more. Zero
	// means no cap (the context alone ends the retries).
	RetryBudget time.Duration
	// InitialBackoff and MaxBackoff shape the exponential, jittered wait
	// between attempts.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
}

// DefaultConfig keeps a writer inside a few seconds: a customer's lock is
// awaited at most 1.5 s per attempt and retried for at most 4 s in all, so a
// writer gives up after 5.5 s at worst (answered 503; Stripe redelivers).
func DefaultConfig() Config {
	return Config{
		LockTimeout:      1500 * time.Millisecond,
		StatementTimeout: 5 * time.Second,
		RetryBudget:      4 * time.Second,
		InitialBackoff:   20 * time.Millisecond,
		MaxBackoff:       500 * time.Millisecond,
	}
}

// Observer is told what the transactions do; the metrics package implements
// it. Its methods must be cheap and safe for concurrent use.
type Observer interface {
	LockWaited(writer string, wait time.Duration)
	LockHeld(writer string, hold time.Duration)
	Retried(writer, sqlstate string)
}

type nopObserver struct{}

func (nopObserver) LockWaited(string, time.Duration) {}
func (nopObserver) LockHeld(string, time.Duration)   {}
func (nopObserver) Retried(string, string)           {}

// Manager runs customer transactions on a pool.
type Manager struct {
	pool *pgxpool.Pool
	cfg  Config
	obs  Observer
	log  *slog.Logger
	line line

	lockTimeout, statementTimeout string // as set_config takes them
}

// New returns a Manager. A nil observer or logger is allowed.
func New(pool *pgxpool.Pool, cfg Config, obs Observer, log *slog.Logger) *Manager {
	if obs == nil {
		obs = nopObserver{}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Manager{pool: pool, cfg: cfg, obs: obs, log: log, line: line{slots: map[string]*slot{}},
		lockTimeout: pgInterval(cfg.LockTimeout), statementTimeout: pgInterval(cfg.StatementTimeout)}
}

// Pool returns the pool the manager runs on, for reads that need no lock.
func (m *Manager) Pool() *pgxpool.Pool { return m.pool }

// Who names a transaction for pg_stat_activity: the writer ("webhook",
// "checkout", "replay", "sweeper", "sync", "verify") and what it works on
// (an event, session or customer id).
type Who struct {
	Writer string
	Ref    string
}

// applicationName is what the transaction sets as application_name, cut to
// PostgreSQL's 63 bytes on a rune boundary.
func (w Who) applicationName() string {
	s := "lockstep " + w.Writer
	if w.Ref != "" {
		s += " " + w.Ref
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
	for len(s) > 63 {
		_, size := utf8.DecodeLastRuneInString(s)
		s = s[:len(s)-size]
	}
	return s
}

// InCustomerTx runs fn in a transaction that holds customerID's advisory
// lock from fn's first statement on (see Tx: BEGIN and the lock ride in
// front of that statement, in its round trip). The transaction is committed
// when fn returns nil and rolled back otherwise (or on panic). Transient
// failures (see Classify) retry the whole transaction with exponential
// backoff and jitter until RetryBudget is spent or ctx is done; fn must
// therefore be safe to run again, and must not call out of the database.
// An error fn marks with backoff.Permanent, or any permanent error, stops
// at once.
//
// Each attempt first queues in memory behind this Manager's other writers
// for the same customer (see the package comment); a writer still queued
// when the budget is spent gets ErrCustomerBusy.
func (m *Manager) InCustomerTx(ctx context.Context, customerID string, who Who, fn func(ctx context.Context, tx *Tx) error) error {
	if customerID == "" {
		return ErrEmptyCustomer
	}
	var deadline time.Time
	if m.cfg.RetryBudget > 0 {
		deadline = time.Now().Add(m.cfg.RetryBudget)
	}
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(m.cfg.InitialBackoff),
		backoff.WithMaxInterval(m.cfg.MaxBackoff),
		backoff.WithMaxElapsedTime(m.cfg.RetryBudget),
		backoff.WithRandomizationFactor(0.5),
	)
	attempts := 0
	op := func() error {
		attempts++
		queued := time.Now()
		leave, err := m.line.enter(ctx, customerID, deadline)
		if err != nil {
			return backoff.Permanent(err)
		}
		err = m.attempt(ctx, customerID, who, fn, queued)
		leave()
		if err == nil {
			return nil
		}
		var perm *backoff.PermanentError
		if errors.As(err, &perm) || ctx.Err() != nil || !IsTransient(err) {
			return backoff.Permanent(err)
		}
		return err
	}
	notify := func(err error, wait time.Duration) {
		m.obs.Retried(who.Writer, retryLabel(err))
		m.log.LogAttrs(ctx, slog.LevelWarn, "transient database error, retrying",
			slog.String("customer", customerID), slog.String("writer", who.Writer),
			slog.String("ref", who.Ref), slog.Int("attempt", attempts),
			slog.String("sqlstate", retryLabel(err)), slog.Duration("backoff", wait),
			slog.String("error", err.Error()))
	}
	err := backoff.RetryNotify(op, backoff.WithContext(b, ctx), notify)
	if err == nil {
		return nil
	}
	if attempts > 1 && IsTransient(err) {
		return &RetryError{Attempts: attempts, Err: err}
	}
	return err
}

// attempt is one try: begin and lock (with fn's first statements), fn,
// commit. queued is when the attempt began to wait for its turn, for the
// lock-wait figure.
func (m *Manager) attempt(ctx context.Context, customerID string, who Who, fn func(ctx context.Context, tx *Tx) error, queued time.Time) (err error) {
	tx := &Tx{m: m, customer: customerID, who: who, queued: queued}
	defer func() {
		if p := recover(); p != nil {
			tx.rollback(ctx)
			tx.observeHold()
			panic(p)
		}
		if err != nil {
			tx.rollback(ctx)
		}
		tx.observeHold()
	}()
	if err = fn(ctx, tx); err != nil {
		return err
	}
	return tx.commit(ctx)
}

// QueueLockUser queues the statement that takes the user's advisory lock.
// Whoever rewrites a user's mapping takes it inside a customer transaction,
// always after the customer's lock, so two writers never wait on each other
// in opposite orders.
func QueueLockUser(b *pgx.Batch, userID string) {
	b.Queue(`SELECT pg_advisory_xact_lock($1, hashtext($2))`, UserLockClass, userID)
}

func pgInterval(d time.Duration) string {
	return fmt.Sprintf("%dms", d.Milliseconds())
}

// line queues a Manager's writers per customer, so that at most
// WritersPerCustomer of them at a time hold a pool connection for that
// customer, holding or awaiting its advisory lock in PostgreSQL.
type line struct {
	mu    sync.Mutex
	slots map[string]*slot
}

// slot is one customer's turns: token holds a value per writer that has one.
type slot struct {
	token chan struct{}
	users int // writers holding or awaiting the turn; the slot goes at 0
}

// enter waits for a turn at customerID until ctx is done or deadline (zero:
// no deadline) passes, and returns the function that ends the turn. Waiters
// get their turn in arrival order.
func (l *line) enter(ctx context.Context, customerID string, deadline time.Time) (leave func(), err error) {
	l.mu.Lock()
	s := l.slots[customerID]
	if s == nil {
		s = &slot{token: make(chan struct{}, WritersPerCustomer)}
		l.slots[customerID] = s
	}
	s.users++
	l.mu.Unlock()
	leave = func() {
		<-s.token
		l.drop(customerID, s)
	}
	select {
	case s.token <- struct{}{}:
		return leave, nil
	default:
	}
	var expired <-chan time.Time
	if !deadline.IsZero() {
		timer := time.NewTimer(time.Until(deadline))
		defer timer.Stop()
		expired = timer.C
	}
	select {
	case s.token <- struct{}{}:
		return leave, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-expired:
		err = ErrCustomerBusy
	}
	l.drop(customerID, s)
	return nil, err
}

func (l *line) drop(customerID string, s *slot) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s.users--; s.users == 0 {
		delete(l.slots, customerID)
	}
}
