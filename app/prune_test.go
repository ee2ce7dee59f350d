package app_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/dbtest"
)

// Bad input to prune is one line and exit 2, before the database is touched.
func TestPruneUsage(t *testing.T) {
	t.Parallel()
	db, accepted := recordingListener(t)
	env := map[string]string{"DATABASE_URL": "postgres://lockstep@" + db + "/lockstep?sslmode=disable"}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"prune"}, "--older-than is required"},
		{[]string{"prune", "--dry-run"}, "--older-than is required"},
		{[]string{"prune", "--older-than", "90x"}, `got "90x"`},
		{[]string{"prune", "--older-than=-5d"}, `got "-5d"`},
		{[]string{"prune", "--older-than", "12h"}, "at least 1d"},
		{[]string{"prune", "--older-than", "0"}, "at least 1d"},
		{[]string{"prune", "--older-than", "90d", "--force"}, "flag provided but not defined: -force"},
		{[]string{"prune", "--older-than", "90d", "now"}, `unexpected argument "now"`},
		{[]string{"prune", "--older-than"}, "flag needs an argument"},
	} {
		var out bytes.Buffer
		err := app.Run(context.Background(), tc.args, envOf(env, &out))
		if code := app.ExitCode(err); code != 2 || !strings.Contains(err.Error(), tc.says) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: exit %d, error %v; want exit 2 and one line saying %q", tc.args, code, err, tc.says)
		}
		if out.Len() != 0 {
			t.Errorf("%q printed %q", tc.args, out.String())
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("usage errors connected to the database %d times", n)
	}
}

// prune --dry-run says what would go and deletes nothing; prune deletes the
// settled events past the cut, keeps failed and newer ones, and says so.
func TestPruneCommand(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	ctx := context.Background()
	const seed = `
INSERT INTO stripe_events (event_id, type, stripe_created, status, payload, received_at, processed_at)
SELECT 'evt_' || $1 || '_' || replace($3, ' ', '') || '_' || i, 'invoice.paid', now() - $3::interval, $1, '{}', now() - $3::interval,
       CASE WHEN $1 <> 'failed' THEN now() - $3::interval END
FROM generate_series(1, $2) i`
	for _, s := range []struct {
		status string
		n      int
		age    string
	}{{"processed", 25, "100 days"}, {"ignored", 5, "91 days"}, {"failed", 3, "300 days"}, {"processed", 4, "89 days"}} {
		if _, err := db.Pool.Exec(ctx, seed, s.status, s.n, s.age); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM stripe_events`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	if before != 37 {
		t.Fatalf("seeded %d events, want 37", before)
	}
	env := map[string]string{"DATABASE_URL": db.URL}

	var out bytes.Buffer
	if err := app.Run(ctx, []string{"prune", "--older-than", "90d", "--dry-run"}, envOf(env, &out)); err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if got := out.String(); !strings.HasPrefix(got, "would prune 30 events (25 processed, 5 ignored) settled before ") ||
		!strings.Contains(got, "(older than 90d); 3 failed events kept\n") {
		t.Errorf("dry run said %q", got)
	}
	if n := count(); n != before {
		t.Fatalf("dry run deleted %d rows", before-n)
	}

	out.Reset()
	start := time.Now()
	if err := app.Run(ctx, []string{"prune", "--older-than=2160h"}, envOf(env, &out)); err != nil {
		t.Fatalf("prune: %v", err)
	}
	if got := out.String(); !strings.HasPrefix(got, "pruned 30 events (25 processed, 5 ignored) settled before ") ||
		!strings.Contains(got, "(older than 2160h) in 1 batches") || !strings.HasSuffix(got, "; 3 failed events kept\n") {
		t.Errorf("prune said %q", got)
	}
	if n := count(); n != before-30 {
		t.Errorf("%d rows left, want %d", n, before-30)
	}
	t.Logf("%s: %s", time.Since(start).Round(time.Millisecond), out.String())
}
