package dbtest_test

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/sql"
)

func TestNewGivesMigratedDatabaseAndDropsIt(t *testing.T) {
	t.Parallel()
	serverURL := dbtest.ServerURL(t)

	var name string
	t.Run("migrated", func(t *testing.T) {
		db := dbtest.New(t, dbtest.WithMaxConns(3))
		name = db.Name
		if !regexp.MustCompile(`^lockstep_test_[0-9a-f]{8}_[0-9]+$`).MatchString(db.Name) {
			t.Errorf("Name = %q, want lockstep_test_<8 hex>_<pid>", db.Name)
		}
		if got := db.Pool.Config().MaxConns; got != 3 {
			t.Errorf("Pool MaxConns = %d, want 3", got)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var current string
		var hasEvents bool
		err := db.Pool.QueryRow(ctx,
			`SELECT current_database(), to_regclass('public.stripe_events') IS NOT NULL`,
		).Scan(&current, &hasEvents)
		if err != nil {
			t.Fatalf("query: %v", err)
		}
		if current != db.Name {
			t.Errorf("pool is on database %q, want %q", current, db.Name)
		}
		if !hasEvents {
			t.Error("table stripe_events does not exist")
		}

		version, dirty, err := sql.Version(db.URL)
		if err != nil {
			t.Fatalf("sql.Version: %v", err)
		}
		if version != sql.Latest || dirty {
			t.Errorf("schema version = %d (dirty %v), want %d (clean)", version, dirty, sql.Latest)
		}
	})
	if name == "" {
		t.Fatal("subtest made no database")
	}

	// The subtest's cleanup has run: its database must be gone.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var exists bool
	if err := conn.QueryRow(ctx,
		`SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name,
	).Scan(&exists); err != nil {
		t.Fatalf("query pg_database: %v", err)
	}
	if exists {
		t.Errorf("database %s still exists after the test's cleanup", name)
	}
}

func TestNewGivesEachTestItsOwnDatabase(t *testing.T) {
	t.Parallel()
	a := dbtest.New(t, dbtest.WithMaxConns(1))
	b := dbtest.New(t, dbtest.WithMaxConns(1))
	if a.Name == b.Name {
		t.Fatalf("two databases named %s", a.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.Pool.Exec(ctx,
		`INSERT INTO stripe_customers (stripe_customer_id) VALUES ('cus_dbtest')`); err != nil {
		t.Fatalf("insert into a: %v", err)
	}
	var n int
	if err := b.Pool.QueryRow(ctx, `SELECT count(*) FROM stripe_customers`).Scan(&n); err != nil {
		t.Fatalf("count in b: %v", err)
	}
	if n != 0 {
		t.Errorf("b sees %d customers written to a, want 0", n)
	}
}

func TestURLFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		server, db, want string
	}{
		{
			"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "lockstep_test_x",
			"postgres://postgres@127.0.0.1:5432/lockstep_test_x?sslmode=disable",
		},
		{
			"postgres://u:p%40ss@db.example:6543/main?sslmode=require&application_name=ci", "t1",
			"postgres://u:p%40ss@db.example:6543/t1?sslmode=require&application_name=ci",
		},
		{"postgresql://localhost", "t2", "postgresql://localhost/t2"},
		{"postgres://localhost/", "t3", "postgres://localhost/t3"},
		{"host=localhost user=postgres dbname=postgres", "t4", "host=localhost user=postgres dbname=postgres dbname=t4"},
	}
	for _, tt := range tests {
		if got := dbtest.URLFor(tt.server, tt.db); got != tt.want {
			t.Errorf("URLFor(%q, %q) = %q, want %q", tt.server, tt.db, got, tt.want)
		}
	}
}
