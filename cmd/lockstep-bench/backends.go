package main

import (
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs"
)

// proc is /proc, where the bench reads CPU times, memory and sockets.
// Without it (not Linux) the readings fail and the report leaves those
// figures out.
var proc, _ = procfs.NewDefaultFS()

// backendWatch adds up the CPU time of the PostgreSQL backends serving one
// database, read from /proc while a phase runs: with the database on this
// machine it tells what the database did for lockstep, or for pgbench,
// whatever else the machine runs. A backend that exits is counted up to the
// last poll before it went (at most one interval short).
type backendWatch struct {
	db    string
	every time.Duration
	mu    sync.Mutex
	base  map[int]time.Duration // CPU at the start, for backends already there
	last  map[int]time.Duration
	// seen remembers, by pid, whether a process is a backend of db, so a
	// poll reads the process title of new processes only: reading every
	// title of /proc at each poll cost the bench's process more CPU than
	// its readers, on the cores lockstep and pgbench share.
	seen map[int]bool
	stop chan struct{}
	done chan struct{}
}

// dbName returns the database a postgres:// URL names.
func dbName(dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(u.Path, "/")
}

func watchBackends(db string, every time.Duration) *backendWatch {
	w := &backendWatch{db: db, every: every, base: map[int]time.Duration{}, last: map[int]time.Duration{},
		seen: map[int]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	if db == "" {
		close(w.done)
		return w
	}
	w.base = backendCPU(db, w.seen)
	go func() {
		defer close(w.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				w.poll()
				return
			case <-t.C:
				w.poll()
			}
		}
	}()
	return w
}

func (w *backendWatch) poll() {
	now := backendCPU(w.db, w.seen)
	w.mu.Lock()
	defer w.mu.Unlock()
	for pid, cpu := range now {
		w.last[pid] = cpu
	}
}

// total stops the watch and returns the CPU the backends spent since it
// started, and whether any backend was seen.
func (w *backendWatch) total() (time.Duration, bool) {
	if w.db == "" {
		return 0, false
	}
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	var sum time.Duration
	for pid, cpu := range w.last {
		sum += cpu - w.base[pid]
	}
	return sum, len(w.last) > 0
}

// backendCPU reads the CPU time of every backend connected to db, found by
// the process title PostgreSQL sets: "postgres: CLUSTER: USER DB HOST(PORT) STATE"
// (or "postgres: USER DB HOST(PORT) STATE" without a cluster name). seen
// caches, by pid, whether a process is one (nil: no cache); a backend
// keeps its database for its life, and the watch of one phase is too short
// for a pid to be reused.
func backendCPU(db string, seen map[int]bool) map[int]time.Duration {
	out := map[int]time.Duration{}
	procs, _ := proc.AllProcs()
	for _, p := range procs {
		match, ok := seen[p.PID]
		if !ok {
			match = isBackendOf(p, db)
			if seen != nil {
				seen[p.PID] = match
			}
		}
		if !match {
			continue
		}
		if st, err := p.Stat(); err == nil {
			out[p.PID] = seconds(st.CPUTime())
		}
	}
	return out
}

func isBackendOf(p procfs.Proc, db string) bool {
	cmdline, err := p.CmdLine()
	if err != nil || len(cmdline) == 0 || !strings.HasPrefix(cmdline[0], "postgres: ") {
		return false
	}
	title := strings.Fields(strings.Join(cmdline, " "))
	for i := 2; i < len(title) && i <= 3; i++ {
		if title[i] == db && i+1 < len(title) && (strings.Contains(title[i+1], "(") || title[i+1] == "[local]") {
			return true
		}
	}
	return false
}
