package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/procfs"
)

// Machine describes where the bench ran.
type Machine struct {
	CPUs     int
	CPUModel string
	MemTotal string
	Go       string
	OS       string
	Postgres string
	Pgbench  string
	// Revision is the lockstep source measured: the commit, and the files
	// changed since, when the working tree is a git checkout.
	Revision string
}

func describeMachine(ctx context.Context, dbURL, pgbenchPath string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
	if cpus, err := proc.CPUInfo(); err == nil && len(cpus) > 0 {
		m.CPUModel = cpus[0].ModelName
	}
	if mem, err := proc.Meminfo(); err == nil && mem.MemTotal != nil {
		m.MemTotal = fmt.Sprintf("%.1f GiB", float64(*mem.MemTotal)/(1<<20))
	}
	if dbURL != "" {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, pgxOnly(dbURL)); err == nil {
			var v, sc, fs string
			if conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync')`).Scan(&v, &sc, &fs) == nil {
				m.Postgres = fmt.Sprintf("PostgreSQL %s (synchronous_commit=%s, fsync=%s)", v, sc, fs)
			}
			_ = conn.Close(ctx)
		}
	}
	m.Revision = revision(ctx)
	if pgbenchPath != "" {
		if out, err := execOutput(ctx, pgbenchPath, "--version"); err == nil {
			m.Pgbench = strings.TrimSpace(out)
		}
	}
	return m
}

// Memory is a process's resident set, from /proc/PID/status.
type Memory struct {
	RSS  int64 // VmRSS, bytes
	Peak int64 // VmHWM: the peak since the process started, bytes
}

func readMemory(pid int) (Memory, error) {
	p, err := proc.Proc(pid)
	if err != nil {
		return Memory{}, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return Memory{}, err
	}
	return Memory{RSS: int64(st.VmRSS), Peak: int64(st.VmHWM)}, nil
}

// pidListening finds the process listening on a local TCP port, by the
// socket's inode in /proc/net/tcp{,6} and the file descriptors of every
// process it may read. It returns 0 when it cannot tell.
func pidListening(port int) int {
	const listen = 0x0A // TCP_LISTEN, the st column
	sockets := map[string]bool{}
	for _, read := range []func() (procfs.NetTCP, error){proc.NetTCP, proc.NetTCP6} {
		lines, _ := read()
		for _, l := range lines {
			if l.St == listen && l.LocalPort == uint64(port) {
				sockets[fmt.Sprintf("socket:[%d]", l.Inode)] = true
			}
		}
	}
	if len(sockets) == 0 {
		return 0
	}
	procs, _ := proc.AllProcs()
	for _, p := range procs {
		fds, _ := p.FileDescriptorTargets()
		for _, fd := range fds {
			if sockets[fd] {
				return p.PID
			}
		}
	}
	return 0
}

func mb(bytes int64) string {
	return fmt.Sprintf("%.1f MB", float64(bytes)/1e6)
}

// revision describes the source being measured, from the build's VCS stamp
// or else from git in the working directory ("" when neither knows).
func revision(ctx context.Context) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			if modified == "true" {
				rev += " with uncommitted changes"
			}
			return rev
		}
	}
	rev, err := execOutput(ctx, "git", "rev-parse", "--short", "HEAD")
	if err != nil {
		return ""
	}
	rev = strings.TrimSpace(rev)
	if st, err := execOutput(ctx, "git", "status", "--porcelain", "--untracked-files=no"); err == nil {
		var files []string
		for _, line := range strings.Split(st, "\n") {
			if len(line) > 3 {
				files = append(files, strings.TrimSpace(line[3:]))
			}
		}
		if len(files) > 0 {
			rev += " with uncommitted changes to " + strings.Join(files, ", ")
		}
	}
	return rev
}
