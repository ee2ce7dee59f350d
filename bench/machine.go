package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
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
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if kb := procField(b, "MemTotal"); kb > 0 {
			m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
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

// procField returns a "Name:   1234 kB" field of a /proc status file, in kB.
func procField(b []byte, name string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != name {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		return n
	}
	return 0
}

// Memory is a process's resident set, from /proc/PID/status.
type Memory struct {
	RSS  int64 // VmRSS, bytes
	Peak int64 // VmHWM: the peak since the process started, bytes
}

func readMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	return Memory{RSS: procField(b, "VmRSS") << 10, Peak: procField(b, "VmHWM") << 10}, nil
}

// pidListening finds the process listening on a local TCP port, by the
// socket's inode in /proc/net/tcp{,6} and the file descriptors of every
// process it may read. It returns 0 when it cannot tell.
func pidListening(port int) int {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			// sl local_address rem_address st ... inode (field 9)
			if len(fields) < 10 || fields[3] != "0A" {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil && int(p) == port {
				inodes["socket:["+fields[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/fd")
	for _, dir := range procs {
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && inodes[link] {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
				return pid
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
