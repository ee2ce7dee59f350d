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
	stop  chan struct{}
	done  chan struct{}
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
		stop: make(chan struct{}), done: make(chan struct{})}
	if db == "" {
		close(w.done)
		return w
	}
	w.base = backendCPU(db)
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
	now := backendCPU(w.db)
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
// (or "postgres: USER DB HOST(PORT) STATE" without a cluster name).
func backendCPU(db string) map[int]time.Duration {
	out := map[int]time.Duration{}
	procs, _ := proc.AllProcs()
	for _, p := range procs {
		cmdline, err := p.CmdLine()
		if err != nil || len(cmdline) == 0 || !strings.HasPrefix(cmdline[0], "postgres: ") {
			continue
		}
		title := strings.Fields(strings.Join(cmdline, " "))
		match := false
		for i := 2; i < len(title) && i <= 3; i++ {
			if title[i] == db && i+1 < len(title) && (strings.Contains(title[i+1], "(") || title[i+1] == "[local]") {
				match = true
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
