package billing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lockstep/lockstep/metrics"
	"github.com/lockstep/lockstep/stripeapi"
)

// ErrSyncRunning means a sync of the same scope is running: a second one
// would read everything a second time and clobber the first one's
// progress.
var ErrSyncRunning = errors.New("a sync of this scope is already running")

// syncLease is how long a sync's lease on its scope lasts unless renewed
// (after each page). A sync that dies frees its scope when it runs out.
const syncLease = 3 * time.Minute

// takeSyncLease takes the lease on scope for owner, as the sweeper takes
// its own: a row of stripe_sweeper (named sync:<scope>) taken and renewed
// by single statements, so it holds behind PgBouncer's transaction pooling
// and survives a crash (it runs out). It returns the function that frees
// it.
func (s *Service) takeSyncLease(ctx context.Context, scope, owner string) (release func(), err error) {
	name := "sync:" + scope
	const q = `
INSERT INTO stripe_sweeper AS w (name, lease_owner, lease_until, last_run_at) VALUES ($1, $2, now() + make_interval(secs => $3), now())
ON CONFLICT (name) DO UPDATE SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until, last_run_at = now()
WHERE w.lease_until IS NULL OR w.lease_until < now()
RETURNING true`
	var ok bool
	err = s.db.QueryRow(ctx, q, name, owner, syncLease.Seconds()).Scan(&ok)
	if isNoRows(err) {
		var holder string
		var started, until time.Time
		if err := s.db.QueryRow(ctx, `SELECT lease_owner, last_run_at, lease_until FROM stripe_sweeper WHERE name = $1`, name).
			Scan(&holder, &started, &until); err != nil {
			return nil, fmt.Errorf("%w (and reading its lease: %v)", ErrSyncRunning, err)
		}
		// A holder on this host whose process is gone died (kill -9, a
		// crash): its lease is taken over at once rather than run out.
		if !processGone(holder) {
			return nil, &SyncRunningError{Scope: scope, Owner: holder, Started: started, Until: until}
		}
		err = s.db.QueryRow(ctx, `UPDATE stripe_sweeper SET lease_owner = $3, lease_until = now() + make_interval(secs => $4),
    last_run_at = now() WHERE name = $1 AND lease_owner = $2 RETURNING true`, name, holder, owner, syncLease.Seconds()).Scan(&ok)
		if isNoRows(err) {
			return nil, fmt.Errorf("%w: another sync of %s took it over from a dead one just now", ErrSyncRunning, scope)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("sync: take the lease of %s: %w", scope, err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := s.db.Exec(ctx, `DELETE FROM stripe_sweeper WHERE name = $1 AND lease_owner = $2`, name, owner); err != nil {
			s.log.WarnContext(ctx, "sync: could not free its lease; it runs out by itself", "scope", scope, "error", err.Error())
		}
	}, nil
}

// SyncRunningError is ErrSyncRunning with the running sync's lease.
type SyncRunningError struct {
	Scope   string
	Owner   string // host:pid:sync
	Started time.Time
	Until   time.Time // when its lease runs out unless renewed
}

func (e *SyncRunningError) Error() string {
	return fmt.Sprintf("a sync of %s is already running (%s, started at %s); wait for it to finish, or if it died, run again after its lease runs out at %s",
		e.Scope, e.Owner, e.Started.UTC().Format(time.RFC3339), e.Until.UTC().Format(time.RFC3339))
}

func (e *SyncRunningError) Unwrap() error { return ErrSyncRunning }

// renewSyncLease extends owner's lease on scope; it fails when another
// sync took it (this one stalled past the lease).
func (s *Service) renewSyncLease(ctx context.Context, scope, owner string) error {
	held, err := s.renewLease(ctx, "sync:"+scope, owner, syncLease)
	switch {
	case err != nil:
		return fmt.Errorf("sync: renew the lease of %s: %w", scope, err)
	case !held:
		return fmt.Errorf("sync: another sync of %s took over (this one stalled past its lease)", scope)
	}
	return nil
}

// noteUnknownStatus counts and warns (once per value) of a subscription
// whose status Stripe added after lockstep was written; it is stored as
// Stripe names it.
func (s *Service) noteUnknownStatus(ctx context.Context, sub *stripeapi.Subscription) {
	if sub != nil && !stripeapi.KnownSubscriptionStatus(sub.Status) {
		metrics.UnknownEnum(ctx, s.log, "subscription", "status", sub.Status)
	}
}

// SyncOwner names a sync process in its scope's lease: host:pid:sync.
func SyncOwner() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d:sync", host, os.Getpid())
}

// processGone reports whether owner (host:pid:role) names a process of
// this host that no longer exists.
func processGone(owner string) bool {
	host, _ := os.Hostname()
	rest, ok := strings.CutPrefix(owner, host+":")
	if !ok {
		return false
	}
	pidText, _, _ := strings.Cut(rest, ":")
	pid, err := strconv.Atoi(pidText)
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
