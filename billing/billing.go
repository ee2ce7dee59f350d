// Package billing holds lockstep's rules for Stripe billing state: the
// customer-to-user mapping, subscriptions and invoices, and the webhook
// event ledger. Every write goes through lockmgr, inside one transaction
// holding the customer's advisory lock; Stripe is only called before such a
// transaction begins.
package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

// Domain errors. handlers maps each to an HTTP status in one place.
var (
	ErrSessionNotFound  = errors.New("checkout session not found")
	ErrSessionOtherUser = errors.New("checkout session belongs to another user")
	ErrSessionExpired   = errors.New("checkout session expired")
	ErrCustomerClaimed  = errors.New("stripe customer belongs to another user")
	ErrUserNotFound     = errors.New("no billing record for user")
	ErrEventNotFound    = errors.New("event not found")
	ErrInvalidUser      = errors.New("invalid user id")
	// ErrUnsettled: a subscription's same-second snapshots kept changing
	// while lockstep asked Stripe to settle them. Trying again settles it.
	ErrUnsettled = errors.New("same-second subscription snapshots kept changing")
)

// DBTX is what repository functions need; *pgxpool.Pool, pgx.Tx and lockmgr.Tx
// all satisfy it, so the same code runs inside any transaction.
type DBTX interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	_ DBTX = (*pgxpool.Pool)(nil)
	_ DBTX = (pgx.Tx)(nil)
	_ DBTX = (*lockmgr.Tx)(nil)
)

// queueExec queues on b a statement whose answer is only whether it
// worked. A failure is reported as fmt.Errorf(what+": %w", ref, err), what
// naming the step with one %s for ref ("ensure customer %s").
func queueExec(b *pgx.Batch, what, ref, sql string, args ...any) {
	b.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf(what+": %w", ref, err)
		}
		return nil
	}
}

// Stripe is the part of Stripe's API the service reads. Each read returns
// Stripe's time of the answer (its Date header): the time the stored
// snapshot is dated with, so that Stripe's clock alone orders snapshots.
type Stripe interface {
	CheckoutSession(ctx context.Context, id string) (*stripeapi.CheckoutSession, time.Time, error)
	Subscription(ctx context.Context, id string) (*stripeapi.Subscription, time.Time, error)
	// The catalog a subscription names, and a customer's whole set of
	// active entitlements (every page), read outside any lock.
	Price(ctx context.Context, id string) (*stripeapi.Price, time.Time, error)
	Product(ctx context.Context, id string) (*stripeapi.Product, time.Time, error)
	ActiveEntitlements(ctx context.Context, customerID string) ([]stripeapi.Entitlement, time.Time, error)
}

// Service is lockstep's billing state and every writer of it: webhook
// events (ProcessEvent, and Replay from the ledger), the success page's
// call (SyncCheckout), the paywall's access read (Access), and, through
// Bulk, the bulk writers (Sync, Verify with repair, and Sweep, storing
// what they read through the Apply* functions). All of them write by the
// same rules, a customer's state under the customer's lock.
type Service struct {
	locks  *lockmgr.Manager
	db     *pgxpool.Pool
	stripe Stripe
	log    *slog.Logger
	// pastDueGrace is ACCESS_PAST_DUE_GRACE, for the access read.
	pastDueGrace time.Duration
	fills        *fillGate // shared by the Service's copies (Bulk)
}

// NewService returns a Service writing through locks and reading Stripe
// through api.
func NewService(locks *lockmgr.Manager, api Stripe, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{locks: locks, db: locks.Pool(), stripe: api, log: log, fills: &fillGate{}}
}

// Bulk is the Service's bulk writers (sync, verify, the sweeper): the same
// locks and rules, reading Stripe through a client of their own, which
// draws on the bulk share of the API budget so that neither their lists
// nor their reads to settle ties starve live traffic.
type Bulk struct {
	*Service
	api Lister
}

// Bulk returns the bulk writers reading Stripe through api.
func (s *Service) Bulk(api Lister) *Bulk {
	c := *s
	c.stripe = api
	return &Bulk{Service: &c, api: api}
}
