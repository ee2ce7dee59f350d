// Package integration_test drives lockstep's HTTP handlers against a real
// PostgreSQL (a fresh database per test, see internal/dbtest) and a fake
// Stripe API (internal/stripefake), with real concurrency.
package integration_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/logging"
)

const (
	secretNew  = "whsec_test_primary_0123456789"
	secretOld  = "whsec_test_rotated_out_98765"
	appToken   = "test-app-token-0123456789"
	adminToken = "test-admin-token-0123456789"
	stripeKey  = "sk_test_integration_key"
)

// bundle is what a test gets from setup.
type bundle struct {
	t      testing.TB
	db     *dbtest.DB
	stripe *stripefake.Server
	app    *app.Server
	srv    *httptest.Server
	client *http.Client
	logs   *syncBuffer
	cfg    *config.Config
}

type options struct {
	lockTimeout time.Duration
	retryBudget time.Duration
	maxConns    int32
}

type option func(*options)

func withLockTimeout(d time.Duration) option { return func(o *options) { o.lockTimeout = d } }
func withRetryBudget(d time.Duration) option { return func(o *options) { o.retryBudget = d } }
func withMaxConns(n int32) option            { return func(o *options) { o.maxConns = n } }

// syncBuffer collects the server's logs, for tests that read them.
type syncBuffer = dbtest.SyncBuffer

// setup starts lockstep on a fresh database with a fake Stripe.
func setup(t testing.TB, opts ...option) *bundle {
	t.Helper()
	o := options{lockTimeout: 1500 * time.Millisecond, retryBudget: 4 * time.Second, maxConns: 10}
	for _, f := range opts {
		f(&o)
	}
	db := dbtest.New(t, dbtest.WithMaxConns(o.maxConns))
	return newBundle(t, db, o.lockTimeout, o.retryBudget)
}

// newBundle serves lockstep on db with a fresh fake Stripe, and prints the
// server's logs when the test fails.
func newBundle(t testing.TB, db *dbtest.DB, lockTimeout, retryBudget time.Duration) *bundle {
	t.Helper()
	fake := stripefake.New(t)
	cfg := &config.Config{
		DatabaseURL:     db.URL,
		WebhookSecrets:  []string{secretNew, secretOld},
		StripeSecretKey: stripeKey,
		StripeAPIBase:   fake.URL,
		AppAPIToken:     appToken,
		AdminToken:      adminToken,
		LockTimeout:     lockTimeout,
		RetryBudget:     retryBudget,
	}
	logs := &syncBuffer{}
	a := app.NewServer(cfg, db.Pool, logging.New(logs, slog.LevelDebug))
	srv := httptest.NewServer(a.Handler)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			out := logs.String()
			if len(out) > 20000 {
				out = "...\n" + out[len(out)-20000:]
			}
			t.Logf("server logs:\n%s", out)
		}
	})
	tr := &http.Transport{MaxIdleConnsPerHost: 256, MaxConnsPerHost: 256}
	t.Cleanup(tr.CloseIdleConnections)
	return &bundle{t: t, db: db, stripe: fake, app: a, srv: srv, logs: logs, cfg: cfg,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// response is an HTTP answer as a test reads it.
type response struct {
	code   int
	body   string
	header http.Header
}

func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(r.body), &m); err != nil {
		t.Fatalf("response %d is not JSON: %v: %s", r.code, err, r.body)
	}
	return m
}

func (b *bundle) do(req *http.Request) response {
	b.t.Helper()
	res, err := b.client.Do(req)
	if err != nil {
		b.t.Errorf("%s %s: %v", req.Method, req.URL.Path, err)
		return response{code: -1, body: err.Error()}
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return response{code: res.StatusCode, body: string(body), header: res.Header}
}

// postWebhook sends a signed event body as Stripe does.
func (b *bundle) postWebhook(payload []byte) response {
	b.t.Helper()
	return b.postWebhookHeader(payload, stripefake.SignatureHeader(payload, secretNew, time.Now()))
}

func (b *bundle) postWebhookHeader(payload []byte, sig string) response {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/webhooks/stripe", bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set("Stripe-Signature", sig)
	}
	return b.do(req)
}

// checkout is the web app's success-page call.
func (b *bundle) checkout(sessionID, userID string) response {
	b.t.Helper()
	body, _ := json.Marshal(map[string]string{"session_id": sessionID, "user_id": userID})
	return b.api(http.MethodPost, "/api/checkout/success", appToken, body)
}

func (b *bundle) api(method, path, token string, body []byte) response {
	b.t.Helper()
	req, _ := http.NewRequest(method, b.srv.URL+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return b.do(req)
}

// userBilling reads the paywall's view through HTTP.
func (b *bundle) userBilling(userID string) (int, billing.UserBillingView) {
	b.t.Helper()
	r := b.api(http.MethodGet, "/api/users/"+userID+"/billing", appToken, nil)
	var v billing.UserBillingView
	if r.code == http.StatusOK {
		if err := json.Unmarshal([]byte(r.body), &v); err != nil {
			b.t.Fatalf("billing body: %v: %s", err, r.body)
		}
	}
	return r.code, v
}

// count runs a count(*) style query on the test database.
func (b *bundle) count(q string, args ...any) int {
	b.t.Helper()
	var n int
	if err := b.db.Pool.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
		b.t.Fatalf("%s: %v", q, err)
	}
	return n
}

func (b *bundle) scalar(q string, args ...any) string {
	b.t.Helper()
	var s *string
	if err := b.db.Pool.QueryRow(context.Background(), q, args...).Scan(&s); err != nil {
		b.t.Fatalf("%s: %v", q, err)
	}
	if s == nil {
		return "<null>"
	}
	return *s
}

// fixture is one user's paid checkout as Stripe knows it.
type fixture struct {
	user, customer, subscription, session, price string
	created                                      time.Time
}

// paidCheckout puts a complete, paid subscription checkout for user into
// the fake Stripe and returns its ids.
func (b *bundle) paidCheckout(user string, created time.Time) fixture {
	fx := fixture{
		user:         user,
		customer:     stripefake.NewID("cus_"),
		subscription: stripefake.NewID("sub_"),
		session:      stripefake.NewID("cs_test_"),
		price:        "price_pro_monthly",
		created:      created,
	}
	b.stripe.PutSubscription(stripefake.Subscription{ID: fx.subscription, Customer: fx.customer, Status: "active",
		PriceID: fx.price, CurrentPeriodEnd: created.Add(30 * 24 * time.Hour), Created: created})
	b.stripe.PutSession(stripefake.Session{ID: fx.session, Customer: fx.customer, Subscription: fx.subscription,
		ClientReferenceID: user, Status: "complete", PaymentStatus: "paid", Mode: "subscription", Created: created})
	return fx
}

func (fx fixture) sessionObj() stripefake.Session {
	return stripefake.Session{ID: fx.session, Customer: fx.customer, Subscription: fx.subscription,
		ClientReferenceID: fx.user, Status: "complete", PaymentStatus: "paid", Mode: "subscription", Created: fx.created}
}

func (fx fixture) subObj(status string) stripefake.Subscription {
	return stripefake.Subscription{ID: fx.subscription, Customer: fx.customer, Status: status, PriceID: fx.price,
		CurrentPeriodEnd: fx.created.Add(30 * 24 * time.Hour), Created: fx.created}
}

// event builds a signed-ready event body.
func event(id, typ string, created time.Time, obj map[string]any) []byte {
	return stripefake.EventJSON(id, typ, created, stripefake.DefaultAPIVersion, obj)
}

func sessionCompleted(fx fixture, created time.Time) []byte {
	return event(stripefake.NewID("evt_"), "checkout.session.completed", created,
		stripefake.SessionJSON(fx.sessionObj(), nil, stripefake.DefaultAPIVersion))
}

func subEvent(fx fixture, typ, status string, created time.Time) []byte {
	return event(stripefake.NewID("evt_"), typ, created, stripefake.SubscriptionJSON(fx.subObj(status), stripefake.DefaultAPIVersion))
}

// concurrently runs fns at once, released together, and waits for all.
func concurrently(fns ...func()) {
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(len(fns))
	done.Add(len(fns))
	for _, f := range fns {
		go func() {
			defer done.Done()
			ready.Done()
			<-start
			f()
		}()
	}
	ready.Wait()
	close(start)
	done.Wait()
}

// userRow is the mapping as stored.
func (b *bundle) customerOf(user string) string {
	b.t.Helper()
	return b.scalar(`SELECT max(stripe_customer_id) FROM stripe_customers WHERE user_id = $1`, user)
}

func must200(t testing.TB, what string, r response) {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("%s: status %d, want 200: %s", what, r.code, r.body)
	}
}

func uniqueUser(prefix string) string {
	return fmt.Sprintf("%s-%s", prefix, strings.ToLower(stripefake.NewID("u")))
}

// holdLock takes customer's advisory lock in a transaction on a side
// connection, as another writer (or a stuck session) would. release commits
// it; it also runs when the test ends.
func (b *bundle) holdLock(customer string) (pid int32, release func()) {
	b.t.Helper()
	return dbtest.HoldCustomerLock(b.t, b.db.URL, customer, "ops-test holder")
}

// failEvent sends ev while customer's lock is held elsewhere, on a bundle
// whose lock timeout and retry budget are short: lockstep answers 503 and
// records the event as failed.
func (b *bundle) failEvent(customer string, ev []byte) {
	b.t.Helper()
	_, release := b.holdLock(customer)
	defer release()
	if r := b.postWebhook(ev); r.code != http.StatusServiceUnavailable {
		b.t.Fatalf("webhook under a held lock: %d, want 503: %s", r.code, r.body)
	}
}

// command runs a lockstep command (app.Run) on b's database and fake Stripe
// and returns what it printed.
func (b *bundle) command(ctx context.Context, args ...string) (string, error) {
	b.t.Helper()
	env := map[string]string{
		"DATABASE_URL":      b.db.URL,
		"STRIPE_API_BASE":   b.stripe.URL,
		"STRIPE_SECRET_KEY": stripeKey,
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err := app.Run(ctx, args, app.Env{Getenv: func(k string) string { return env[k] }, Stdout: &out, Stderr: io.Discard})
	return out.String(), err
}

// servedProcess is `lockstep serve` run through app.Run, as the binary
// runs it, against the bundle's database and fake Stripe.
type servedProcess struct {
	addr string
	logs *syncBuffer
	stop func() error // cancels serve and waits for it; later calls return nil
}

// serve starts `lockstep serve` on a free loopback port, with the sweeper
// every second, and stops it when the test ends if stop was not called.
func (b *bundle) serve() *servedProcess {
	b.t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(b.t))
	vars := map[string]string{
		"DATABASE_URL": b.db.URL, "LISTEN_ADDR": addr, "STRIPE_WEBHOOK_SECRET": secretNew,
		"STRIPE_SECRET_KEY": stripeKey, "STRIPE_API_BASE": b.stripe.URL, "APP_API_TOKEN": appToken,
		"ADMIN_TOKEN": adminToken, "STRIPE_SWEEP_INTERVAL": "1s", "LOG_LEVEL": "warn",
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, []string{"serve"}, app.Env{Getenv: func(k string) string { return vars[k] }, Stdout: logs, Stderr: logs})
	}()
	var once sync.Once
	var err error
	p := &servedProcess{addr: addr, logs: logs, stop: func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}}
	b.t.Cleanup(func() {
		if err := p.stop(); err != nil {
			b.t.Errorf("serve: %v\n%s", err, logs.String())
		}
	})
	return p
}
