//go:build faults

package integration_test

// Helpers for the fault tests that need a server of their own: a private
// PostgreSQL cluster the test may stop and restart (dbtest.Cluster; the
// shared test server is never touched), and a PgBouncer in transaction
// pooling mode. Both run as the postgres user when the tests run as root
// (initdb and pgbouncer refuse root), listen on a free loopback port only,
// and are stopped and removed when the test ends.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/lockmgr"
	schema "github.com/lockstep/lockstep/sql"
)

// pgBouncerPath finds the pgbouncer binary: LOCKSTEP_PGBOUNCER, PATH, then
// the usual places. A missing one fails the test: the PgBouncer guarantees
// are part of the suite and never skip.
func pgBouncerPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LOCKSTEP_PGBOUNCER"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("LOCKSTEP_PGBOUNCER=%s is not an executable; the PgBouncer tests never skip", p)
		}
		return p
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"} {
		if _, err := exec.LookPath(p); err == nil {
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

	owner, err := dbtest.ServerOwner()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := owner.MkdirTemp("lockstep-faults-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) }) // after pgbouncer stops: cleanups run last first
	b := &bouncer{t: t, user: userName}
	if err := owner.WriteFile(filepath.Join(dir, "userlist.txt"), fmt.Sprintf("%q %q\n", userName, "")); err != nil {
		t.Fatal(err)
	}
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
		if err := owner.WriteFile(iniPath, ini); err != nil {
			t.Fatal(err)
		}
		cmd = owner.Command(context.Background(), bin, iniPath)
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
func setupOnCluster(t testing.TB, c *dbtest.Cluster, maxConns int32) *bundle {
	t.Helper()
	if err := dbtest.CreateDatabase(c.URL("postgres"), "lockstep"); err != nil {
		t.Fatal(err)
	}
	dbURL := c.URL("lockstep")
	if err := schema.Up(dbURL); err != nil {
		t.Fatal(err)
	}
	pool := openPool(t, dbURL, maxConns)
	lc := lockmgr.DefaultConfig()
	return newBundle(t, &dbtest.DB{URL: dbURL, Name: "lockstep", Pool: pool}, lc.LockTimeout, lc.RetryBudget)
}
