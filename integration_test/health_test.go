package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
	schema "github.com/lockstep/lockstep/sql"
)

// /healthz says the process is alive; /readyz says whether the database
// answers, failing promptly while it does not and recovering by itself.
func TestReadyzDatabaseDown(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	must200(t, "readyz", b.api(http.MethodGet, "/readyz", "", nil))
	must200(t, "healthz", b.api(http.MethodGet, "/healthz", "", nil))

	// The database goes "down": it refuses connections and loses its sessions.
	admin := dbtest.Conn(t, ctx, dbtest.ServerURL(t))
	dbName := pgx.Identifier{b.db.Name}.Sanitize()
	if _, err := admin.Exec(ctx, `ALTER DATABASE `+dbName+` ALLOW_CONNECTIONS false`); err != nil {
		t.Fatalf("refuse connections: %v", err)
	}
	restore := func() { _, _ = admin.Exec(context.Background(), `ALTER DATABASE `+dbName+` ALLOW_CONNECTIONS true`) }
	t.Cleanup(restore)
	var killed int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1`, b.db.Name).Scan(&killed); err != nil {
		t.Fatalf("terminate backends: %v", err)
	}
	t.Logf("terminated %d backends of %s", killed, b.db.Name)

	for i := range 3 { // the first may find a dead pooled connection, the next must connect
		start := time.Now()
		r := b.api(http.MethodGet, "/readyz", "", nil)
		took := time.Since(start)
		if r.code != http.StatusServiceUnavailable || took > 3*time.Second {
			t.Fatalf("readyz #%d while down: %d after %s, want 503 within 3s: %s", i, r.code, took, r.body)
		}
		t.Logf("readyz #%d while down: %d in %s: %s", i, r.code, took.Round(time.Millisecond), strings.TrimSpace(r.body))
		if body := r.json(t); body["status"] != "unavailable" || strings.Contains(r.body, b.db.Name) {
			t.Fatalf("readyz body %s: want status unavailable, without connection details", r.body)
		}
	}
	must200(t, "healthz while the database is down", b.api(http.MethodGet, "/healthz", "", nil))
	start := time.Now()
	if r := b.api(http.MethodGet, "/metrics", "", nil); r.code != http.StatusOK || time.Since(start) > 3*time.Second {
		t.Fatalf("metrics while the database is down: %d after %s", r.code, time.Since(start))
	}
	if !strings.Contains(b.logs.String(), `"msg":"not ready"`) {
		t.Errorf("no \"not ready\" log line")
	}

	restore()
	restored := time.Now()
	dbtest.WaitFor(t, "readyz back to 200", 15*time.Second, func() (bool, string) {
		r := b.api(http.MethodGet, "/readyz", "", nil)
		return r.code == http.StatusOK, fmt.Sprintf("%d %s", r.code, r.body)
	})
	t.Logf("readyz back to 200 %s after connections were allowed again", time.Since(restored).Round(time.Millisecond))
}

// A schema behind the binary's is not ready.
func TestReadyzSchemaBehind(t *testing.T) {
	t.Parallel()
	b := setup(t)
	must200(t, "readyz", b.api(http.MethodGet, "/readyz", "", nil))
	if err := schema.Down(b.db.URL, 1); err != nil {
		t.Fatalf("migrate down: %v", err)
	}
	r := b.api(http.MethodGet, "/readyz", "", nil)
	if want := fmt.Sprintf("schema version %d, want %d", schema.Latest-1, schema.Latest); r.code != http.StatusServiceUnavailable || r.json(t)["error"] != want {
		t.Fatalf("readyz on an old schema: %d %s, want 503 %q", r.code, r.body, want)
	}
	if err := schema.Up(b.db.URL); err != nil {
		t.Fatalf("migrate up: %v", err)
	}
	must200(t, "readyz after migrating", b.api(http.MethodGet, "/readyz", "", nil))
}
