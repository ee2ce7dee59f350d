package dbtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Conn opens a side connection to url (another session than the code
// under test uses), closed when the test ends.
func Conn(t testing.TB, ctx context.Context, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// BackendPID is the server process of conn.
func BackendPID(t testing.TB, ctx context.Context, conn *pgx.Conn) int32 {
	t.Helper()
	var pid int32
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatalf("backend pid: %v", err)
	}
	return pid
}

// CustomerWithKeySign returns a fresh customer id (cus_<hex>) whose
// advisory-lock key, hashtext(id), is negative (or not), and that key.
func CustomerWithKeySign(t testing.TB, ctx context.Context, conn *pgx.Conn, negative bool) (id string, key int64) {
	t.Helper()
	for range 200 {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		id := "cus_" + hex.EncodeToString(b)
		if err := conn.QueryRow(ctx, `SELECT hashtext($1)`, id).Scan(&key); err != nil {
			t.Fatalf("hashtext: %v", err)
		}
		if (key < 0) == negative {
			return id, key
		}
	}
	t.Fatal("no customer id with the wanted hashtext sign in 200 tries")
	return "", 0
}

// HoldCustomerLock takes customer's advisory lock (lockmgr's key,
// hashtext) in a transaction on a side connection to url, named appName in
// pg_stat_activity, as another writer (or a stuck session) would. It
// returns the holder's server process and the function that ends the
// transaction and closes the connection; that also runs when the test ends.
func HoldCustomerLock(t testing.TB, url, customer, appName string) (pid int32, release func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	pid = BackendPID(t, ctx, conn)
	tx, err := conn.Begin(ctx)
	if err != nil {
		_ = conn.Close(context.Background())
		t.Fatalf("begin: %v", err)
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('application_name', $2, true), pg_advisory_xact_lock(hashtext($1))`, customer, appName); err != nil {
		_ = conn.Close(context.Background())
		t.Fatalf("hold lock of %s: %v", customer, err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			_ = tx.Commit(context.Background())
			_ = conn.Close(context.Background())
		})
	}
	t.Cleanup(release)
	return pid, release
}
