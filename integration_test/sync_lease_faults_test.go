//go:build faults

package integration_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// One sync per scope holds behind PgBouncer's transaction pooling, where
// both replicas' statements share one server connection (a session
// advisory lock would be granted to both).
func TestPgBouncerOneSyncPerScope(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(4))
	pgb := startPgBouncer(t, dbtest.ServerURL(t), bouncerOptions{poolSize: 1})
	via := pgb.url(b.db.Name, execMode)
	r1, r2 := b.replica(openPool(t, via, 2)), b.replica(openPool(t, via, 2))
	a := seedAccount(b, 10)
	b.stripe.SetSlowDelay(100 * time.Millisecond)
	b.stripe.SetHostile("/v1/", stripefake.Slow)
	ctx := context.Background()
	first := make(chan error, 1)
	go func() {
		_, err := r1.app.Bulk.Sync(ctx, billing.SyncOptions{PageSize: 2, Owner: "replica-1"})
		first <- err
	}()
	dbtest.WaitFor(t, "replica-1's sync to take its lease", 30*time.Second, func() (bool, string) {
		return b.count(`SELECT count(*) FROM stripe_sweeper WHERE name = 'sync:all' AND lease_owner = 'replica-1'`) == 1, ""
	})
	if _, err := r2.app.Bulk.Sync(ctx, billing.SyncOptions{Owner: "replica-2"}); !errors.Is(err, billing.ErrSyncRunning) {
		t.Fatalf("replica-2's sync while replica-1's runs: %v, want ErrSyncRunning", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("replica-1's sync: %v", err)
	}
	b.stripe.SetHostile("/v1/", stripefake.Behave)
	b.assertStoredEquals(a)
	if _, err := r2.app.Bulk.Sync(ctx, billing.SyncOptions{Owner: "replica-2"}); err != nil {
		t.Fatalf("replica-2's sync after replica-1's finished: %v", err)
	}
}
