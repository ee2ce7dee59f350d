package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/lockmgr"
)

// sampleEvery is how often the sampler reads the stripe_customer_locks view.
const sampleEvery = 10 * time.Millisecond

// sampler reads the stripe_customer_locks view (through lockmgr.ListLocks,
// as `lockstep locks` does) on its own connection while a scenario runs,
// and prints each wait it has not printed yet: who waits, for which lock,
// behind whom.
type sampler struct {
	out    *printer
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex // guards conn and what follows
	conn     *pgx.Conn
	customer string // the watched customer ("" between scenarios)
	key      int64  // its lock key, hashtext(customer)
	printed  map[string]bool
	waiting  map[string]bool // application names seen waiting
	// behind counts the waits printed by who held the lock: "demo" (the
	// slow writer) or "lockstep" (one of its own writers).
	behind map[string]int
}

func startSampler(ctx context.Context, databaseURL string, out *printer) (*sampler, error) {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("lock sampler: %w", err)
	}
	cfg.RuntimeParams["application_name"] = "lockstep-demo lock sampler"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("lock sampler: connect: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{out: out, conn: conn, cancel: cancel, done: make(chan struct{})}
	go s.loop(ctx)
	return s, nil
}

func (s *sampler) stop() {
	s.cancel()
	<-s.done
	_ = s.conn.Close(context.Background())
}

// watch starts printing the waits for customer's lock (and the user locks
// its writers take).
func (s *sampler) watch(ctx context.Context, customer string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.conn.QueryRow(ctx, `SELECT hashtext($1)::bigint`, customer).Scan(&s.key); err != nil {
		return fmt.Errorf("lock sampler: %w", err)
	}
	s.customer = customer
	s.printed, s.waiting, s.behind = map[string]bool{}, map[string]bool{}, map[string]int{}
	return nil
}

// unwatch stops printing until the next watch and returns how many waits
// it printed behind the demo's slow writer and behind lockstep's writers.
func (s *sampler) unwatch() (behindDemo, behindLockstep int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.customer = ""
	return s.behind["demo"], s.behind["lockstep"]
}

// awaitWaiting reports whether the transaction named appName is seen
// waiting for a lock within timeout.
func (s *sampler) awaitWaiting(ctx context.Context, appName string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		seen := s.waiting[appName]
		s.mu.Unlock()
		if seen {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		sleep(ctx, sampleEvery/2)
	}
}

// awaitAnyWaiting reports whether any transaction is seen waiting for a
// lock within timeout.
func (s *sampler) awaitAnyWaiting(ctx context.Context, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		seen := len(s.waiting) > 0
		s.mu.Unlock()
		if seen {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		sleep(ctx, sampleEvery/2)
	}
}

func (s *sampler) loop(ctx context.Context) {
	defer close(s.done)
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.sample(ctx)
	}
}

func (s *sampler) sample(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.customer == "" {
		return
	}
	locks, err := lockmgr.ListLocks(ctx, s.conn)
	if err != nil {
		return // the next tick tries again; a scenario's end cancels ctx
	}
	byPID := map[int32]lockmgr.LockInfo{}
	for _, l := range locks {
		if _, ok := byPID[l.PID]; !ok || !l.Granted {
			byPID[l.PID] = l
		}
	}
	for _, l := range locks {
		if l.Granted || l.Kind == "other" {
			continue
		}
		s.waiting[l.ApplicationName] = true
		key := fmt.Sprintf("%d|%s|%v", l.PID, l.ApplicationName, l.BlockedBy)
		if s.printed[key] {
			continue
		}
		s.printed[key] = true
		var behind []string
		for _, pid := range l.BlockedBy {
			b, ok := byPID[pid]
			switch {
			case !ok:
				behind = append(behind, fmt.Sprintf("pid %d", pid))
			case b.Granted:
				behind = append(behind, fmt.Sprintf("%d %s (holds it)", pid, short(b.ApplicationName)))
				if b.ApplicationName == holderName {
					s.behind["demo"]++
				} else {
					s.behind["lockstep"]++
				}
			default:
				behind = append(behind, fmt.Sprintf("%d %s (waits ahead)", pid, short(b.ApplicationName)))
			}
		}
		s.out.line("lock", fmt.Sprintf("%d %s waits for %s, behind %s", l.PID, short(l.ApplicationName), s.lockName(l), strings.Join(behind, ", ")))
	}
}

// lockName names the lock l waits for: the view names a customer once its
// row exists; before that the sampler knows the watched one by its key.
func (s *sampler) lockName(l lockmgr.LockInfo) string {
	switch {
	case l.Kind == "user" && l.UserID != "":
		return "user " + l.UserID + "'s lock"
	case l.Kind == "user":
		return "a user's lock"
	case l.CustomerID != "":
		return l.CustomerID + "'s lock"
	case l.Key != nil && *l.Key == s.key:
		return s.customer + "'s lock"
	}
	return "customer lock " + fmt.Sprint(l.Key)
}

// short is an application name without lockstep's prefix.
func short(app string) string {
	if rest, ok := strings.CutPrefix(app, "lockstep "); ok {
		return rest
	}
	if rest, ok := strings.CutPrefix(app, "lockstep-demo "); ok {
		return "demo " + rest
	}
	return app
}
