package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/logging"
)

// The try-it steps of `make run STRIPE=fake`, against lockstep in
// development mode on a database of the test's own: a checkout made in the
// fake, its events forwarded signed with the development secret, and the
// success call land the user on /dashboard with one customer and one
// subscription, each event processed once; the access read then gives the
// decision the success call answered. A checkout still unpaid answers 202
// with no access, and the access read agrees.
func TestTryItAgainstTheFake(t *testing.T) {
	db := dbtest.New(t)
	fake := stripefake.New(t)
	env := map[string]string{"DATABASE_URL": db.URL, "LOCKSTEP_ENV": "development", "STRIPE_API_BASE": fake.URL,
		"STRIPE_SECRET_KEY": config.DevSecretKey}
	cfg, err := config.Load(func(k string) string { return env[k] }, config.NeedDatabase|config.NeedServer)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(app.NewServer(cfg, db.Pool, logging.New(io.Discard, slog.LevelInfo)).Handler)
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f := &forwarder{fake: fake.URL, to: srv.URL + "/webhooks/stripe", secret: config.DevWebhookSecret, client: &http.Client{Timeout: 10 * time.Second},
			log: log.New(io.Discard, "", 0)}
		f.loop(ctx)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })

	// curl -u KEY: -d user_id=user_1 FAKE/_fake/checkout/sessions
	req, _ := http.NewRequest(http.MethodPost, fake.URL+"/_fake/checkout/sessions", strings.NewReader(url.Values{"user_id": {"user_1"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(config.DevSecretKey, "")
	var made struct {
		SessionID    string `json:"session_id"`
		Customer     string `json:"customer"`
		Subscription string `json:"subscription"`
	}
	if code := doJSON(t, req, &made); code != http.StatusOK || made.SessionID == "" {
		t.Fatalf("create checkout: %d %+v", code, made)
	}

	// The success call, racing the forwarded webhooks.
	body, _ := json.Marshal(map[string]string{"session_id": made.SessionID, "user_id": "user_1"})
	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/api/checkout/success", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+config.DevAppAPIToken)
	var success struct {
		Redirect string   `json:"redirect"`
		Access   decision `json:"access"`
	}
	if code := doJSON(t, req, &success); code != http.StatusOK || success.Redirect != "/dashboard" {
		t.Fatalf("success call: %d %+v, want 200 /dashboard", code, success)
	}
	if a := success.Access; a.State != "active" || !a.Access || a.Until == nil || a.Subscription == nil || *a.Subscription != made.Subscription || a.Action != "none" {
		t.Errorf("success call's access %+v, want active with access on %s, action none", a, made.Subscription)
	}
	// curl -H 'Authorization: Bearer TOKEN' LOCKSTEP/api/users/user_1/access
	access := func() decision {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/users/user_1/access", nil)
		req.Header.Set("Authorization", "Bearer "+config.DevAppAPIToken)
		var a decision
		if code := doJSON(t, req, &a); code != http.StatusOK {
			t.Fatalf("access read: %d %+v", code, a)
		}
		return a
	}
	if a := access(); !a.sameAs(success.Access) {
		t.Errorf("access read %+v, the success call answered %+v: they disagree", a, success.Access)
	}

	count := func(q string, args ...any) int {
		var n int
		if err := db.Pool.QueryRow(context.Background(), q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	dbtest.WaitFor(t, "both forwarded events processed", 20*time.Second, func() (bool, string) {
		n := count(`SELECT count(*) FROM stripe_events WHERE status = 'processed' AND attempts = 1 AND stripe_customer_id = $1`, made.Customer)
		return n == 2, strings.Repeat("processed ", n)
	})
	if n := count(`SELECT count(*) FROM stripe_customers WHERE user_id = 'user_1' AND stripe_customer_id = $1`, made.Customer); n != 1 {
		t.Errorf("user_1 maps to %s %d times, want once", made.Customer, n)
	}
	if n := count(`SELECT count(*) FROM stripe_subscriptions WHERE stripe_customer_id = $1 AND stripe_subscription_id = $2 AND status = 'active'`, made.Customer, made.Subscription); n != 1 {
		t.Errorf("%d active subscriptions %s, want 1", n, made.Subscription)
	}
	if n := count(`SELECT count(*) FROM stripe_events`); n != 2 {
		t.Errorf("%d events in the ledger, want 2", n)
	}

	// -d paid=false: a checkout whose payment is still processing.
	req, _ = http.NewRequest(http.MethodPost, fake.URL+"/_fake/checkout/sessions", strings.NewReader(url.Values{"user_id": {"user_2"}, "paid": {"false"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(config.DevSecretKey, "")
	if code := doJSON(t, req, &made); code != http.StatusOK || made.SessionID == "" {
		t.Fatalf("create unpaid checkout: %d %+v", code, made)
	}
	body, _ = json.Marshal(map[string]string{"session_id": made.SessionID, "user_id": "user_2"})
	req, _ = http.NewRequest(http.MethodPost, srv.URL+"/api/checkout/success", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+config.DevAppAPIToken)
	success.Access = decision{}
	if code := doJSON(t, req, &success); code != http.StatusAccepted || success.Redirect != "/checkout/processing" {
		t.Fatalf("success call, unpaid: %d %+v, want 202 /checkout/processing", code, success)
	}
	if a := success.Access; a.State != "incomplete" || a.Access || a.Action != "confirm_payment" {
		t.Errorf("unpaid checkout's access %+v, want incomplete, no access, confirm_payment", a)
	}
	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/api/users/user_2/access", nil)
	req.Header.Set("Authorization", "Bearer "+config.DevAppAPIToken)
	var a decision
	if code := doJSON(t, req, &a); code != http.StatusOK || !a.sameAs(success.Access) {
		t.Errorf("access read of user_2: %d %+v, the success call answered %+v", code, a, success.Access)
	}
}

// decision is what the try-it lines show of the paywall's decision.
type decision struct {
	State        string     `json:"state"`
	Access       bool       `json:"access"`
	Until        *time.Time `json:"until"`
	Subscription *string    `json:"subscription"`
	Action       string     `json:"action"`
}

// sameAs reports whether a and b agree on state, access, until and
// subscription.
func (a decision) sameAs(b decision) bool {
	return a.State == b.State && a.Access == b.Access &&
		(a.Until == nil) == (b.Until == nil) && (a.Until == nil || a.Until.Equal(*b.Until)) &&
		(a.Subscription == nil) == (b.Subscription == nil) && (a.Subscription == nil || *a.Subscription == *b.Subscription)
}

func doJSON(t *testing.T, req *http.Request, into any) int {
	t.Helper()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = res.Body.Close() }()
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatalf("%s %s: %d %s: %v", req.Method, req.URL.Path, res.StatusCode, b, err)
	}
	return res.StatusCode
}

// The wrapper runs its command with the fake's URL and the development key,
// passes on its exit status, and prints the try-it lines.
func TestRunsCommandAgainstTheFake(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	getenv := func(k string) string { return map[string]string{"LISTEN_ADDR": "127.0.0.1:18999"}[k] }
	code := run([]string{"-listen", "127.0.0.1:0", "-forward-to", "", "--", "sh", "-c",
		`case "$STRIPE_API_BASE,$STRIPE_SECRET_KEY" in http://127.0.0.1:*,` + config.DevSecretKey + `) exit 7;; esac; exit 1`}, getenv, &stderr)
	if code != 7 {
		t.Errorf("exit %d, want the command's 7 (it checks STRIPE_API_BASE and STRIPE_SECRET_KEY)", code)
	}
	for _, want := range []string{"fake Stripe API on http://127.0.0.1:", "/_fake/checkout/sessions", "http://127.0.0.1:18999/api/checkout/success",
		"http://127.0.0.1:18999/api/users/user_1/access", "Bearer " + config.DevAppAPIToken} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if code := run([]string{"-nope"}, getenv, io.Discard); code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", code)
	}
	stderr.Reset()
	if code := run([]string{"-listen", "0.0.0.0:12111"}, getenv, &stderr); code != 2 || !strings.Contains(stderr.String(), "-listen must be a loopback host:port") {
		t.Errorf("-listen 0.0.0.0:12111: exit %d, %q; want 2 and the reason", code, stderr.String())
	}
}
