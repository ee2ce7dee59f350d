package lockmgr

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// LockInfo is one advisory lock held or awaited, as the
// stripe_customer_locks view shows it.
type LockInfo struct {
	Kind            string   `json:"lock_kind"`
	CustomerID      string   `json:"stripe_customer_id"`
	UserID          string   `json:"user_id,omitempty"`
	Key             *int64   `json:"lock_key"`
	PID             int32    `json:"pid"`
	Granted         bool     `json:"granted"`
	WaitSeconds     *float64 `json:"wait_seconds"`
	XactSeconds     *float64 `json:"xact_seconds"`
	BlockedBy       []int32  `json:"blocked_by"`
	ApplicationName string   `json:"application_name"`
	State           string   `json:"state"`
	Query           string   `json:"query"`
}

// listLocks reads the view, one lock after another: the lock whose waiter
// has waited longest first, and within a lock its holder, then its waiters,
// longest wait first.
const listLocks = `
SELECT lock_kind, stripe_customer_id, user_id, lock_key, pid, granted,
       extract(epoch FROM wait_duration)::float8, extract(epoch FROM xact_duration)::float8,
       blocked_by, coalesce(application_name, ''), coalesce(state, ''), coalesce(query, '')
FROM stripe_customer_locks
ORDER BY max(wait_duration) OVER (PARTITION BY lock_kind, lock_key) DESC NULLS LAST,
         lock_kind, lock_key, granted DESC, wait_duration DESC NULLS LAST, pid`

// ListLocks returns the advisory locks held or awaited in the database now.
func ListLocks(ctx context.Context, db interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) ([]LockInfo, error) {
	rows, err := db.Query(ctx, listLocks)
	if err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (LockInfo, error) {
		var l LockInfo
		err := r.Scan(&l.Kind, &l.CustomerID, &l.UserID, &l.Key, &l.PID, &l.Granted, &l.WaitSeconds,
			&l.XactSeconds, &l.BlockedBy, &l.ApplicationName, &l.State, &l.Query)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	if out == nil {
		out = []LockInfo{}
	}
	return out, nil
}

// Age is how long a lock has been held or awaited, for display.
func (l LockInfo) Age() time.Duration {
	s := l.XactSeconds
	if !l.Granted && l.WaitSeconds != nil {
		s = l.WaitSeconds
	}
	if s == nil || *s < 0 {
		// The view measures from the start of its own transaction, which
		// can be a moment before a wait it sees began.
		return 0
	}
	return time.Duration(*s * float64(time.Second)).Round(time.Millisecond)
}
