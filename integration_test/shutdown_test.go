package integration_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// Cancelling serve's context (what SIGTERM does in main) stops accepting,
// lets the request in flight finish with its normal answer, closes the
// pool, and returns nil.
func TestServeDrainsOnShutdown(t *testing.T) {
	t.Parallel()
	db := dbtest.New(t)
	fake := stripefake.New(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	env := map[string]string{
		"DATABASE_URL":          db.URL,
		"LISTEN_ADDR":           addr,
		"STRIPE_WEBHOOK_SECRET": secretNew,
		"STRIPE_SECRET_KEY":     stripeKey,
		"STRIPE_API_BASE":       fake.URL,
		"APP_API_TOKEN":         appToken,
		"ADMIN_TOKEN":           adminToken,
		"SHUTDOWN_TIMEOUT":      "10s",
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runErr := make(chan error, 1)
	go func() {
		runErr <- app.Run(ctx, []string{"serve"}, app.Env{Getenv: func(k string) string { return env[k] }, Stdout: io.Discard, Stderr: logs})
	}()
	defer func() {
		cancel()
		select {
		case <-runErr:
		case <-time.After(20 * time.Second):
		}
	}()
	base := "http://" + addr
	client := &http.Client{Timeout: 20 * time.Second}
	dbtest.WaitFor(t, "serve to be ready", 20*time.Second, func() (bool, string) {
		select {
		case err := <-runErr:
			t.Fatalf("serve returned early: %v\n%s", err, logs.String())
		default:
		}
		res, err := client.Get(base + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK, res.Status
	})
	poolConns := func() int {
		var n int
		if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name LIKE 'lockstep%'`).Scan(&n); err != nil {
			t.Fatalf("count lockstep connections: %v", err)
		}
		return n
	}
	if poolConns() == 0 {
		t.Fatal("serve's pool has no connection to count")
	}

	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	user := uniqueUser("ops-drain")
	cus, sub, cs := stripefake.NewID("cus_"), stripefake.NewID("sub_"), stripefake.NewID("cs_test_")
	fake.PutSubscription(stripefake.Subscription{ID: sub, Customer: cus, Status: "active", PriceID: "price_pro", Created: now})
	fake.PutSession(stripefake.Session{ID: cs, Customer: cus, Subscription: sub, ClientReferenceID: user,
		Status: "complete", PaymentStatus: "paid", Mode: "subscription", Created: now})
	const delay = 1500 * time.Millisecond
	fake.SetDelay(delay)
	reached := make(chan struct{})
	var once sync.Once
	fake.SetOnRequest(func(*http.Request) { once.Do(func() { close(reached) }) })

	type result struct {
		code int
		body string
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, base+"/api/checkout/success",
			strings.NewReader(fmt.Sprintf(`{"session_id":%q,"user_id":%q}`, cs, user)))
		req.Header.Set("Authorization", "Bearer "+appToken)
		res, err := client.Do(req)
		if err != nil {
			inflight <- result{err: err}
			return
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		inflight <- result{code: res.StatusCode, body: string(body)}
	}()
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the checkout request never reached Stripe")
	}
	cancel() // SIGTERM
	cancelled := time.Now()
	defer func() {
		t.Logf("in-flight request answered %s after cancel", time.Since(cancelled).Round(time.Millisecond))
	}()

	// It stops accepting while the request is still in flight.
	dbtest.WaitFor(t, "the listener to close", delay/2, func() (bool, string) {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return false, "connection accepted"
		}
		return true, ""
	})
	select {
	case r := <-inflight:
		t.Fatalf("the request finished %s after cancel, before the listener closed: %+v", time.Since(cancelled), r)
	default:
	}

	r := <-inflight
	if r.err != nil || r.code != http.StatusOK || !strings.Contains(r.body, `"redirect":"/dashboard"`) {
		t.Fatalf("in-flight request: %v %d %s, want 200 to /dashboard", r.err, r.code, r.body)
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("serve returned %v, want nil", err)
		}
		runErr <- nil // for the deferred wait
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return after draining")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the port still accepts connections after serve returned")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after shutdown: %v, want connection refused", err)
	}
	// The write happened, and the pool is closed.
	var mapped string
	if err := db.Pool.QueryRow(context.Background(), `SELECT stripe_customer_id FROM stripe_customers WHERE user_id = $1`, user).Scan(&mapped); err != nil || mapped != cus {
		t.Fatalf("mapping after the drained request: %q %v, want %s", mapped, err, cus)
	}
	dbtest.WaitFor(t, "serve's connections to close", 5*time.Second, func() (bool, string) {
		n := poolConns()
		return n == 0, fmt.Sprintf("%d open", n)
	})
	out := logs.String()
	for _, want := range []string{"shutting down: draining in-flight requests", `"msg":"stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("serve's logs lack %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{secretNew, stripeKey, appToken, adminToken} {
		if strings.Contains(out, secret) {
			t.Errorf("serve's logs contain the secret %q", secret)
		}
	}
}
