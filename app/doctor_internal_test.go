package app

import (
	"strings"
	"testing"

	"github.com/lockstep/lockstep/config"
)

// The PgBouncer check reads the URLs: a PgBouncer-looking DATABASE_URL
// needs exec or simple_protocol mode and a direct MIGRATE_DATABASE_URL.
func TestPgbouncerCheck(t *testing.T) {
	t.Parallel()
	const direct = "postgres://lockstep@db:5432/billing"
	for _, tc := range []struct {
		name, url, migrate, status, contains string
	}{
		{"direct", direct, "", checkOK, "not a PgBouncer port"},
		{"direct, keyword form", "host=db port=5432 user=lockstep dbname=billing", "", checkOK, "db:5432"},
		{"port 6432, default mode", "postgres://lockstep@db:6432/billing", direct, checkWarn, "default_query_exec_mode is cache_statement"},
		{"port 6432, exec", "postgres://lockstep@db:6432/billing?default_query_exec_mode=exec", direct, checkOK, "default_query_exec_mode=exec"},
		{"port 6432, simple protocol", "postgres://lockstep@db:6432/billing?default_query_exec_mode=simple_protocol", direct, checkOK, "simple_protocol"},
		{"pgbouncer host, cache_describe", "postgres://lockstep@pgbouncer.internal:5432/billing?default_query_exec_mode=cache_describe", direct, checkWarn, "cache_describe"},
		{"exec, no MIGRATE_DATABASE_URL", "postgres://lockstep@db:6432/billing?default_query_exec_mode=exec", "", checkWarn, "set MIGRATE_DATABASE_URL"},
		{"exec, migrations through PgBouncer too", "postgres://lockstep@db:6432/billing?default_query_exec_mode=exec", "postgres://lockstep@pgbouncer:5432/billing", checkWarn, "set MIGRATE_DATABASE_URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := pgbouncerCheck(&config.Config{DatabaseURL: tc.url, MigrateDatabaseURL: tc.migrate})
			if c.Status != tc.status || !strings.Contains(c.Detail, tc.contains) {
				t.Errorf("pgbouncerCheck = %s %q; want %s containing %q", c.Status, c.Detail, tc.status, tc.contains)
			}
		})
	}
}
