//go:build faults

package integration_test

// Helpers for the fault tests that need a server of their own: a private
// PostgreSQL cluster the test may stop and restart (the shared test server
// is never touched), and a PgBouncer in transaction pooling mode. Both run
// as the postgres user when the tests run as root (initdb and pgbouncer
// refuse root), listen on a free loopback port only, and are stopped and
// removed when the test ends.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
	schema "github.com/lockstep/lockstep/sql"
)

// pgBin returns the directory holding initdb and pg_ctl: LOCKSTEP_PG_BIN,
// the one behind initdb on PATH, else the newest /usr/lib/postgresql/*/bin.
func pgBin(t testing.TB) string {
	t.Helper()
	var candidates []string
	if d := os.Getenv("LOCKSTEP_PG_BIN"); d != "" {
		candidates = append(candidates, d)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(r))
		}
	}
	installed, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	more, _ := filepath.Glob("/usr/pgsql-*/bin")
	installed = append(installed, more...)
	sort.Slice(installed, func(i, j int) bool { return versionOf(installed[i]) > versionOf(installed[j]) })
	candidates = append(candidates, installed...)
	for _, d := range candidates {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "pg_ctl")) {
			return d
		}
	}
	t.Fatal("no initdb/pg_ctl found (LOCKSTEP_PG_BIN, PATH, /usr/lib/postgresql/*/bin): " +
		"the restart tests need PostgreSQL's server binaries (Debian: apt-get install postgresql; the service need not run)")
	return ""
}

func versionOf(dir string) int {
	for _, part := range strings.Split(dir, "/") {
		part = strings.TrimPrefix(part, "pgsql-")
		if n, err := strconv.Atoi(part); err == nil {
			return n
		}
	}
	return 0
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// runAs says which user runs the private servers: nil when the tests are not
// root; the postgres user otherwise.
type runAs struct {
	uid, gid uint32
}

func serverUser(t testing.TB) *runAs {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("running as root, and initdb and pgbouncer refuse root, but there is no postgres user to run them as: %v", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &runAs{uid: uint32(uid), gid: uint32(gid)}
}

// command builds a command that runs as the server user.
func (r *runAs) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if r != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: r.uid, Gid: r.gid}
		cmd.Env = append(os.Environ(), "HOME=/tmp")
	}
	return cmd
}

// tempDirFor makes a directory under /tmp the server user owns. It is
// removed when the test ends (after the server is stopped: cleanups run in
// reverse order, and the servers register theirs later).
func tempDirFor(t testing.TB, r *runAs, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if r != nil {
		if err := os.Chown(dir, int(r.uid), int(r.gid)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// writeFileFor writes a file the server user owns.
func writeFileFor(t testing.TB, r *runAs, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if r != nil {
		if err := os.Chown(path, int(r.uid), int(r.gid)); err != nil {
			t.Fatal(err)
		}
	}
}

// privateCluster is a PostgreSQL cluster of the test's own, which it may
// stop, crash and restart.
type privateCluster struct {
	t       testing.TB
	bin     string
	data    string
	logFile string
	port    int
	as      *runAs
	// URL is the maintenance database (postgres) of the cluster.
	URL string
}

// startPrivateCluster runs initdb and starts the cluster on a free loopback
// port. It is stopped (immediate) and removed when the test ends.
func startPrivateCluster(t testing.TB) *privateCluster {
	t.Helper()
	as := serverUser(t)
	c := &privateCluster{t: t, bin: pgBin(t), as: as}
	dir := tempDirFor(t, as, "lockstep-faults-pg-")
	c.data = filepath.Join(dir, "data")
	c.logFile = filepath.Join(dir, "postgres.log")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := as.command(ctx, filepath.Join(c.bin, "initdb"), "-D", c.data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	for attempt := 0; ; attempt++ {
		c.port = freePort(t)
		conf := fmt.Sprintf(`
# written by the lockstep fault tests
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = ''
# fsync off is safe here: the tests crash PostgreSQL, never the machine.
# synchronous_commit stays on, so an acknowledged commit survives a crash.
fsync = off
full_page_writes = off
max_connections = 60
shared_buffers = 32MB
`, c.port)
		f, err := os.OpenFile(filepath.Join(c.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteString(conf)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		err = c.ctl("start", "-w", "-t", "60", "-l", c.logFile)
		if err == nil {
			break
		}
		if attempt < 5 && strings.Contains(c.serverLog(), "could not") {
			continue // the port was taken between freePort and the bind
		}
		t.Fatalf("start private cluster: %v\n%s", err, c.serverLog())
	}
	t.Cleanup(func() { _ = c.ctl("stop", "-m", "immediate", "-w", "-t", "30") })
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
	return c
}

// ctl runs pg_ctl on the cluster.
func (c *privateCluster) ctl(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args = append([]string{"-D", c.data}, args...)
	out, err := c.as.command(ctx, filepath.Join(c.bin, "pg_ctl"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// stop stops the cluster: mode fast (clients are disconnected, a clean
// shutdown) or immediate (a crash: recovery runs at the next start).
func (c *privateCluster) stop(mode string) {
	c.t.Helper()
	if err := c.ctl("stop", "-m", mode, "-w", "-t", "60"); err != nil {
		c.t.Fatalf("%v\n%s", err, c.serverLog())
	}
}

func (c *privateCluster) start() {
	c.t.Helper()
	if err := c.ctl("start", "-w", "-t", "60", "-l", c.logFile); err != nil {
		c.t.Fatalf("%v\n%s", err, c.serverLog())
	}
}

// restart is pg_ctl restart: stop in mode, start again at once.
func (c *privateCluster) restart(mode string) {
	c.t.Helper()
	if err := c.ctl("restart", "-m", mode, "-w", "-t", "60", "-l", c.logFile); err != nil {
		c.t.Fatalf("%v\n%s", err, c.serverLog())
	}
}

func (c *privateCluster) serverLog() string {
	b, _ := os.ReadFile(c.logFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// createDatabase creates a database on the cluster and returns its URL.
func (c *privateCluster) createDatabase(name string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.URL)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		c.t.Fatal(err)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, name)
}

// pgBouncerPath finds the pgbouncer binary: LOCKSTEP_PGBOUNCER, PATH, then
// the usual places. A missing one fails the test: the PgBouncer guarantees
// are part of the suite and never skip.
func pgBouncerPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LOCKSTEP_PGBOUNCER"); p != "" {
		if !isExec(p) {
			t.Fatalf("LOCKSTEP_PGBOUNCER=%s is not an executable; the PgBouncer tests never skip", p)
		}
		return p
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"} {
		if isExec(p) {
			return p
		}
	}
	t.Fatal("pgbouncer is not installed, and the PgBouncer tests never skip: " +
		"install it (Debian: apt-get install pgbouncer; .ci/run does) or put it on PATH")
	return ""
}

// bouncer is a PgBouncer the test started, in transaction pooling mode.
type bouncer struct {
	t    testing.TB
	port int
	user string
}

// bouncerOptions tune the generated pgbouncer.ini.
type bouncerOptions struct {
	poolSize int // default_pool_size; default 20
}

// startPgBouncer starts pgbouncer on a free loopback port in front of the
// server at serverURL (any database name is passed through), with
// pool_mode = transaction and trust authentication for the URL's user. It
// is shut down when the test ends.
func startPgBouncer(t testing.TB, serverURL string, o bouncerOptions) *bouncer {
	t.Helper()
	bin := pgBouncerPath(t)
	if o.poolSize == 0 {
		o.poolSize = 20
	}
	u, err := url.Parse(serverURL)
	if err != nil || u.Host == "" {
		t.Fatalf("pgbouncer needs a postgres:// server URL, got an unparseable one")
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5432"
	}
	userName := u.User.Username()
	if userName == "" {
		userName = "postgres"
	}
	password, _ := u.User.Password()
	backend := fmt.Sprintf("host=%s port=%s user=%s", host, port, userName)
	if password != "" {
		backend += " password=" + password
	}

	as := serverUser(t)
	dir := tempDirFor(t, as, "lockstep-faults-pgbouncer-")
	b := &bouncer{t: t, user: userName}
	writeFileFor(t, as, filepath.Join(dir, "userlist.txt"), fmt.Sprintf("%q %q\n", userName, ""))
	logFile := filepath.Join(dir, "pgbouncer.log")
	var cmd *exec.Cmd
	for attempt := 0; ; attempt++ {
		b.port = freePort(t)
		ini := fmt.Sprintf(`[databases]
* = %s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
admin_users = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = 500
max_db_connections = 40
server_login_retry = 1
ignore_startup_parameters = extra_float_digits
logfile = %s
pidfile = %s
`, backend, b.port, filepath.Join(dir, "userlist.txt"), userName, o.poolSize, logFile, filepath.Join(dir, "pgbouncer.pid"))
		iniPath := filepath.Join(dir, "pgbouncer.ini")
		writeFileFor(t, as, iniPath, ini)
		cmd = as.command(context.Background(), bin, iniPath)
		if err := cmd.Start(); err != nil {
			t.Fatalf("start pgbouncer: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if err := b.waitReady(exited); err == nil {
			proc := cmd.Process
			t.Cleanup(func() {
				_ = proc.Signal(syscall.SIGTERM)
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
					_ = proc.Kill()
					<-exited
				}
			})
			return b
		} else if attempt >= 5 {
			logText, _ := os.ReadFile(logFile)
			t.Fatalf("pgbouncer did not start: %v\n%s", err, logText)
		}
		_ = cmd.Process.Kill()
		<-exited
	}
}

// waitReady waits until pgbouncer answers a query, or exits.
func (b *bouncer) waitReady(exited <-chan error) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("pgbouncer exited: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, b.url("pgbouncer", "default_query_exec_mode=simple_protocol"))
		if err == nil {
			_, err = conn.Exec(ctx, "SHOW VERSION")
			_ = conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after 15s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// url is a URL to database db through pgbouncer, with extra query
// parameters (e.g. "default_query_exec_mode=exec").
func (b *bouncer) url(db string, params ...string) string {
	q := append([]string{"sslmode=disable"}, params...)
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?%s", url.User(b.user).String(), b.port, db, strings.Join(q, "&"))
}

// errorCode is an error's SQLSTATE, or the error's text when it has none.
func errorCode(err error) string {
	if err == nil {
		return "ok"
	}
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState()
	}
	return err.Error()
}

// setupOnCluster starts lockstep on a fresh, migrated database of a private
// cluster, with the pool lockstep opens in production (lockmgr.OpenPool),
// the default lock_timeout and retry budget, and a fake Stripe.
func setupOnCluster(t testing.TB, c *privateCluster, maxConns int32) *bundle {
	t.Helper()
	dbURL := c.createDatabase("lockstep")
	if err := schema.Up(dbURL); err != nil {
		t.Fatal(err)
	}
	pool := openPool(t, dbURL, maxConns)
	lc := lockmgr.DefaultConfig()
	return newBundle(t, &dbtest.DB{URL: dbURL, Name: "lockstep", Pool: pool}, lc.LockTimeout, lc.RetryBudget)
}
