package dbtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ErrPortTaken says another program listens on the port a cluster was to use.
var ErrPortTaken = errors.New("port taken by another program")

// throwawaySettings tune a cluster that lives as long as a test run. fsync
// off is safe there: the tests may crash PostgreSQL, never the machine.
// synchronous_commit stays on, so an acknowledged commit survives a crash
// (TestFaultDatabaseRestart relies on it). max_connections leaves room for
// test packages running in parallel.
const throwawaySettings = `fsync = off
full_page_writes = off
max_connections = 200
`

// Cluster is a private PostgreSQL cluster run with the system's initdb and
// pg_ctl: its data in Dir/pgdata, its log in Dir/postgres.log, listening on
// 127.0.0.1:Port only. The zero value with Dir set names a cluster that may
// or may not exist yet; the methods find the binaries (FindBin) and the
// user to run them as (ServerOwner) on first use.
type Cluster struct {
	// Dir holds the cluster: pgdata/ and postgres.log.
	Dir string
	// Port is where the cluster listens; 0 makes Start pick a free port.
	Port int

	bin   string
	owner Owner
}

// StartThrowaway creates a cluster in a new temporary directory, tuned for
// tests, and starts it on a free loopback port. Remove stops it and deletes
// the directory.
func StartThrowaway() (*Cluster, error) {
	owner, err := ServerOwner()
	if err != nil {
		return nil, err
	}
	dir, err := owner.MkdirTemp("lockstep-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir}
	if err := c.Init(throwawaySettings, "--no-sync"); err != nil {
		return nil, errors.Join(err, c.Remove())
	}
	if err := c.Start(); err != nil {
		return nil, errors.Join(err, c.Remove())
	}
	return c, nil
}

// StartCluster is StartThrowaway for a test that may stop, crash and
// restart its own server: a failure fails t, and the cluster is removed
// when the test ends.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	c, err := StartThrowaway()
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Remove(); err != nil {
			t.Errorf("dbtest: %v", err)
		}
	})
	return c
}

// URL is the URL of database db on the cluster, as user postgres.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// Bin is the directory of the initdb and pg_ctl the cluster runs with.
func (c *Cluster) Bin() string {
	_ = c.find()
	return c.bin
}

func (c *Cluster) data() string    { return filepath.Join(c.Dir, "pgdata") }
func (c *Cluster) logFile() string { return filepath.Join(c.Dir, "postgres.log") }

// Exists reports whether Dir holds an initialized cluster.
func (c *Cluster) Exists() bool {
	_, err := os.Stat(filepath.Join(c.data(), "PG_VERSION"))
	return err == nil
}

// Running reports whether the cluster's server is up.
func (c *Cluster) Running() bool {
	return c.Exists() && c.find() == nil && c.ctl("status") == nil
}

// Init runs initdb: user postgres with trust authentication, UTF8, locale
// C, listening on 127.0.0.1 only, with settings appended to
// postgresql.conf.
func (c *Cluster) Init(settings string, initdbArgs ...string) error {
	if err := c.prepare(); err != nil {
		return err
	}
	data := c.data()
	if entries, _ := os.ReadDir(data); len(entries) > 0 {
		return fmt.Errorf("%s exists but is not a PostgreSQL data directory; remove it and try again", data)
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	if err := c.owner.chown(data); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := append([]string{"-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"}, initdbArgs...)
	if out, err := c.owner.Command(ctx, filepath.Join(c.bin, "initdb"), args...).CombinedOutput(); err != nil {
		return fmt.Errorf("initdb %s: %w\n%s", data, err, out)
	}
	// Unix sockets live in the data directory, so clusters never collide in
	// /var/run/postgresql; a path too long for a socket (107 bytes) gets none.
	sockets := data
	if len(sockets) > 90 {
		sockets = ""
	}
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "\n# written by lockstep's internal/dbtest\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n%s",
		strings.ReplaceAll(sockets, "'", "''"), settings)
	return errors.Join(err, f.Close())
}

// Start starts the server and waits until it accepts connections. With Port
// 0 it picks a free loopback port (and another if that one is taken before
// the server binds it); with a Port set and taken, the error is
// ErrPortTaken.
func (c *Cluster) Start() error {
	if err := c.prepare(); err != nil {
		return err
	}
	if c.Port != 0 {
		return c.startOn(c.Port)
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		if err = c.startOn(port); !errors.Is(err, ErrPortTaken) || attempt == 4 {
			return err
		}
	}
}

func (c *Cluster) startOn(port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		_ = conn.Close()
		return fmt.Errorf("%s: %w", addr, ErrPortTaken)
	}
	// The log outlives the server (the development cluster's, across runs):
	// only what this start writes tells why it failed.
	seen, err := c.touchLog()
	if err != nil {
		return err
	}
	err = c.ctl("start", "-w", "-t", "60", "-l", c.logFile(), "-o", "-p "+strconv.Itoa(port))
	if err == nil {
		c.Port = port
		return nil
	}
	log := c.logSince(seen)
	if strings.Contains(log, "could not bind") || strings.Contains(log, "could not create any TCP/IP sockets") {
		return fmt.Errorf("%s: %w", addr, ErrPortTaken)
	}
	return fmt.Errorf("start the cluster in %s: %w\n%s", c.Dir, err, log)
}

// Stop stops the server: mode fast disconnects clients and shuts down
// cleanly; immediate is a crash, and recovery runs at the next start.
func (c *Cluster) Stop(mode string) error {
	if err := c.find(); err != nil {
		return err
	}
	if err := c.ctl("stop", "-m", mode, "-w", "-t", "60"); err != nil {
		return fmt.Errorf("%w\n%s", err, c.logTail())
	}
	return nil
}

// Restart is pg_ctl restart: stop in mode, start again at once on the same port.
func (c *Cluster) Restart(mode string) error {
	if err := c.find(); err != nil {
		return err
	}
	if err := c.ctl("restart", "-m", mode, "-w", "-t", "60", "-l", c.logFile(), "-o", "-p "+strconv.Itoa(c.Port)); err != nil {
		return fmt.Errorf("%w\n%s", err, c.logTail())
	}
	return nil
}

// Remove stops the server at once, if it runs, and deletes Dir.
func (c *Cluster) Remove() error {
	var err error
	if _, statErr := os.Stat(filepath.Join(c.data(), "postmaster.pid")); statErr == nil {
		err = c.Stop("immediate")
	}
	return errors.Join(err, os.RemoveAll(c.Dir))
}

// logTail is the end of the server's log, for error messages.
func (c *Cluster) logTail() string {
	return c.logSince(-4000)
}

// logSince reads the log from byte offset off; a negative off counts from the end.
func (c *Cluster) logSince(off int64) string {
	f, err := os.Open(c.logFile())
	if err != nil {
		return ""
	}
	defer f.Close()
	if off < 0 {
		if fi, err := f.Stat(); err == nil {
			off = max(0, fi.Size()+off)
		}
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// touchLog creates the log file for the server's user and returns its size.
func (c *Cluster) touchLog() (int64, error) {
	f, err := os.OpenFile(c.logFile(), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	fi, err := f.Stat()
	if err = errors.Join(err, f.Close()); err != nil {
		return 0, err
	}
	return fi.Size(), c.owner.chown(c.logFile())
}

// prepare finds the tools and makes Dir, which the server's user must reach.
func (c *Cluster) prepare() error {
	if err := c.find(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	if !c.owner.reaches(c.Dir) {
		return fmt.Errorf("user postgres cannot reach %s (a parent directory is closed to it)", c.Dir)
	}
	return nil
}

// find sets the binaries and the owner, and makes Dir absolute: pg_ctl runs in /.
func (c *Cluster) find() error {
	if c.bin != "" {
		return nil
	}
	abs, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	c.Dir = abs
	owner, err := ServerOwner()
	if err != nil {
		return err
	}
	bin, err := FindBin()
	if err != nil {
		return err
	}
	c.bin, c.owner = bin, owner
	return nil
}

// ctl runs pg_ctl on the cluster.
func (c *Cluster) ctl(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args = append([]string{"-D", c.data()}, args...)
	if out, err := c.owner.Command(ctx, filepath.Join(c.bin, "pg_ctl"), args...).CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// FindBin returns the directory holding initdb and pg_ctl: LOCKSTEP_PG_BIN,
// the one behind initdb on PATH, else the newest /usr/lib/postgresql/*/bin
// (Debian, Ubuntu) or /usr/pgsql-*/bin (RHEL).
func FindBin() (string, error) {
	var candidates []string
	if d := os.Getenv("LOCKSTEP_PG_BIN"); d != "" {
		candidates = append(candidates, d)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(r))
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	installed, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	more, _ := filepath.Glob("/usr/pgsql-*/bin")
	installed = append(installed, more...)
	slices.SortFunc(installed, func(a, b string) int { return versionOf(b) - versionOf(a) })
	for _, d := range append(candidates, installed...) {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "pg_ctl")) {
			return d, nil
		}
	}
	return "", errors.New("no initdb and pg_ctl found (LOCKSTEP_PG_BIN, PATH, /usr/lib/postgresql/*/bin, /usr/pgsql-*/bin): " +
		"install PostgreSQL's server binaries (Debian/Ubuntu: apt-get install postgresql; the service need not run)")
}

// versionOf is the major version in a path like /usr/lib/postgresql/16/bin.
func versionOf(dir string) int {
	for _, part := range strings.Split(dir, "/") {
		if n, err := strconv.Atoi(strings.TrimPrefix(part, "pgsql-")); err == nil {
			return n
		}
	}
	return 0
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
