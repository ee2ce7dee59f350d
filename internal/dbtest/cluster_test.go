package dbtest_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/dbtest"
)

// The private-cluster path for real: initdb, start on a free port, connect,
// stop, start again, and Remove deletes the directory. A second cluster
// asked for the first one's port is told it is taken.
func TestClusterStartStopRemove(t *testing.T) {
	t.Parallel()
	if _, err := dbtest.FindBin(); err != nil {
		t.Skipf("no private cluster without PostgreSQL's server binaries: %v", err)
	}
	c, err := dbtest.StartThrowaway()
	if err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			_ = c.Remove()
		}
	})
	if c.Port == 0 || !c.Exists() || !c.Running() {
		t.Fatalf("after StartThrowaway: port %d, exists %v, running %v", c.Port, c.Exists(), c.Running())
	}

	query := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err != nil {
			return "", err
		}
		defer conn.Close(ctx)
		var fsync string
		err = conn.QueryRow(ctx, `SHOW fsync`).Scan(&fsync)
		return fsync, err
	}
	if fsync, err := query(); err != nil || fsync != "off" {
		t.Fatalf("query the throwaway cluster: fsync %q, %v; want off", fsync, err)
	}

	owner, err := dbtest.ServerOwner()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := owner.MkdirTemp("lockstep-pg-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	other := &dbtest.Cluster{Dir: dir, Port: c.Port}
	if err := other.Start(); !errors.Is(err, dbtest.ErrPortTaken) {
		t.Errorf("start on a taken port: %v, want ErrPortTaken", err)
	}

	if err := c.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	if c.Running() {
		t.Error("running after Stop")
	}
	if _, err := query(); err == nil {
		t.Error("a stopped cluster answers")
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := query(); err != nil {
		t.Fatalf("after a restart: %v", err)
	}

	removed = true
	if err := c.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Remove: %v", c.Dir, err)
	}
	if _, err := query(); err == nil {
		t.Error("a removed cluster answers")
	}
}
