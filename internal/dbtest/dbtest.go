// Package dbtest gives each test its own PostgreSQL database: created with a
// unique name on the server named by TEST_DATABASE_URL, migrated to the latest
// schema, and dropped when the test ends. It also runs private clusters
// (Cluster) with the system's initdb and pg_ctl, for the tests that stop and
// restart their server and for cmd/pgenv.
//
// `make test` runs the tests through cmd/pgenv, which finds or starts a
// server and sets TEST_DATABASE_URL. Without it, New fails the test: a test
// that needs a database never skips silently.
package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/sql"
)

// adminTimeout bounds each administrative step: connecting, CREATE DATABASE,
// migrating, DROP DATABASE.
const adminTimeout = 30 * time.Second

// DB is a migrated database that lives as long as the test that made it.
type DB struct {
	// URL connects to this database.
	URL string
	// Name is the database's name, lockstep_test_<8 hex>_<pid>.
	Name string
	// Pool is open on URL; it is closed when the test ends.
	Pool *pgxpool.Pool
}

type options struct {
	maxConns int32
}

// Option changes how New builds the database.
type Option func(*options)

// WithMaxConns sets the pool's maximum number of connections (default 10).
func WithMaxConns(n int32) Option {
	return func(o *options) { o.maxConns = n }
}

// ServerURL returns the URL of the server tests create their databases on:
// TEST_DATABASE_URL, else DATABASE_URL. When neither is set it fails the test.
func ServerURL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u
	}
	t.Fatal("TEST_DATABASE_URL is not set: run `make test`, which finds or starts PostgreSQL")
	return ""
}

// URLFor returns serverURL with its database replaced by dbName; query
// parameters such as sslmode are kept. A keyword/value connection string
// ("host=... user=...") gets dbname=dbName appended, which overrides any
// earlier dbname.
func URLFor(serverURL, dbName string) string {
	if !strings.Contains(serverURL, "://") {
		return strings.TrimSpace(serverURL) + " dbname=" + dbName
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return serverURL
	}
	u.Path = "/" + dbName
	u.RawPath = ""
	return u.String()
}

// New creates a database with a unique name, migrates it with sql.Up, opens a
// pool on it, and registers a cleanup that closes the pool and drops the
// database. Any failure fails the test.
func New(t testing.TB, opts ...Option) *DB {
	t.Helper()
	o := options{maxConns: 10}
	for _, opt := range opts {
		opt(&o)
	}
	serverURL := ServerURL(t)

	name, err := uniqueName()
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	db := &DB{URL: URLFor(serverURL, name), Name: name}

	if err := CreateDatabase(serverURL, name); err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	t.Cleanup(func() {
		if db.Pool != nil {
			db.Pool.Close()
		}
		if err := DropDatabase(serverURL, name); err != nil {
			t.Errorf("dbtest: %v", err)
		}
	})

	if err := sql.Up(db.URL); err != nil {
		t.Fatalf("dbtest: migrate %s: %v", name, err)
	}

	cfg, err := pgxpool.ParseConfig(db.URL)
	if err != nil {
		t.Fatalf("dbtest: parse database url: %v", err)
	}
	cfg.MaxConns = o.maxConns
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("dbtest: open pool on %s: %v", name, err)
	}
	db.Pool = pool
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("dbtest: ping %s: %v", name, err)
	}
	return db
}

// uniqueName returns lockstep_test_<8 hex>_<pid>: random so parallel tests
// never collide, with the pid so a leftover database names its process.
func uniqueName() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random database name: %w", err)
	}
	return fmt.Sprintf("lockstep_test_%s_%d", hex.EncodeToString(b[:]), os.Getpid()), nil
}

// CreateDatabase creates database name on the server at serverURL. The
// server's error is wrapped: 42P04 says the database exists.
func CreateDatabase(serverURL, name string) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("connect to test server: %w", err)
	}
	defer func() {
		if cerr := conn.Close(ctx); cerr != nil && err == nil {
			err = fmt.Errorf("close admin connection: %w", cerr)
		}
	}()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// DropDatabase drops database name, if it exists, ending its sessions.
func DropDatabase(serverURL, name string) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), adminTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return fmt.Errorf("connect to test server to drop %s: %w", name, err)
	}
	defer func() {
		if cerr := conn.Close(ctx); cerr != nil && err == nil {
			err = fmt.Errorf("close admin connection: %w", cerr)
		}
	}()
	// FORCE ends sessions a test left open (PostgreSQL 13 and later).
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// WaitFor polls cond every 20 ms until it holds, and fails the test when
// timeout passes first, with what it waited for and what cond last saw.
// It is the one way tests wait for something that happens on its own time
// (a lock to be awaited, a background pass to finish).
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() (ok bool, seen string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
