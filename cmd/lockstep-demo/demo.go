package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/config"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/logging"
)

// Options is what Play needs.
type Options struct {
	// DatabaseURL is a database at lockstep's latest schema that the demo
	// may write (its customers are cus_demo_*).
	DatabaseURL string
	// DatabaseName is shown in the header ("" to leave it out).
	DatabaseName string
	// Out gets the story.
	Out io.Writer
	// Storm is how many times the storm delivers each of its two events.
	Storm int
	// Hold is how long the demo's slow writer holds each customer's lock.
	Hold time.Duration
	// Log gets lockstep's own logs (nil: discarded).
	Log io.Writer

	// afterScene, when set, runs after a scenario's writers and before its
	// check (tests use it to spoil a scenario).
	afterScene func(ctx context.Context, key string, pool *pgxpool.Pool) error
}

// Verdict is how one scenario ended.
type Verdict struct {
	Scenario string // "a", "b", "c"
	Title    string
	Equal    bool
	// Reason says why the scenario did not end equal ("" when it did).
	Reason string
	// Landing is where the success call sent the user ("/dashboard").
	Landing string
	// SuccessAccess is the decision the success call answered with under
	// "access", PaywallAccess the one GET /api/users/{id}/access gave
	// afterwards (zero when not read).
	SuccessAccess, PaywallAccess Decision
}

// Decision is the part of the paywall's decision the demo shows and
// compares (billing.Access as its JSON reads).
type Decision struct {
	State        string     `json:"state"`
	Access       bool       `json:"access"`
	Until        *time.Time `json:"until"`
	Subscription *string    `json:"subscription"`
	Plan         *struct {
		Name *string `json:"name"`
	} `json:"plan"`
	Action    string  `json:"action"`
	ActionURL *string `json:"action_url"`
}

// differs names how b differs from a in what the two must agree on (state,
// access, until, subscription); "" when they agree.
func (a Decision) differs(b Decision) string {
	var d []string
	if a.State != b.State {
		d = append(d, fmt.Sprintf("state %s vs %s", orNone(a.State), orNone(b.State)))
	}
	if a.Access != b.Access {
		d = append(d, fmt.Sprintf("access %t vs %t", a.Access, b.Access))
	}
	if (a.Until == nil) != (b.Until == nil) || a.Until != nil && !a.Until.Equal(*b.Until) {
		d = append(d, fmt.Sprintf("until %s vs %s", timeText(a.Until), timeText(b.Until)))
	}
	if strOr(a.Subscription, "") != strOr(b.Subscription, "") {
		d = append(d, fmt.Sprintf("subscription %s vs %s", strOr(a.Subscription, "null"), strOr(b.Subscription, "null")))
	}
	return strings.Join(d, ", ")
}

// String is the decision on one aligned line.
func (a Decision) String() string {
	plan := "-"
	if a.Plan != nil {
		plan = strOr(a.Plan.Name, "-")
	}
	s := fmt.Sprintf("%-10s access %-5t until %-20s %-12s plan %-4s action %s",
		orNone(a.State), a.Access, timeText(a.Until), strOr(a.Subscription, "-"), plan, orNone(a.Action))
	if a.ActionURL != nil {
		s += " (" + *a.ActionURL + ")"
	}
	return s
}

func timeText(t *time.Time) string {
	if t == nil {
		return "null"
	}
	return t.UTC().Format(time.RFC3339)
}

func strOr(s *string, def string) string {
	if s == nil {
		return def
	}
	return *s
}

// demo is one run: lockstep, the fake Stripe, and what watches them.
type demo struct {
	o       Options
	out     *printer
	pool    *pgxpool.Pool
	fake    *stripefake.Server
	baseURL string
	secret  string
	token   string
	client  *http.Client
	locks   *sampler
}

// Play starts the fake Stripe and lockstep (in this process, on loopback
// ports, on o.DatabaseURL) and plays the three scenarios. An error means
// the demo could not run; a scenario that ran but did not end equal is a
// Verdict with Equal false.
func Play(ctx context.Context, o Options) ([]Verdict, error) {
	if o.Storm < 1 {
		o.Storm = 6
	}
	if o.Hold <= 0 {
		o.Hold = 600 * time.Millisecond
	}
	logOut := o.Log
	if logOut == nil {
		logOut = io.Discard
	}
	d := &demo{o: o, out: &printer{w: o.Out}}

	d.fake = stripefake.Start()
	defer d.fake.Close()

	// lockstep's configuration is serve's in development mode, read from
	// the same variables: development secrets, the fake's URL.
	env := map[string]string{
		"DATABASE_URL":          o.DatabaseURL,
		"LOCKSTEP_ENV":          "development",
		"STRIPE_API_BASE":       d.fake.URL,
		"LISTEN_ADDR":           "127.0.0.1:0",
		"STRIPE_SWEEP_INTERVAL": "0",
	}
	cfg, err := config.Load(func(k string) string { return env[k] }, config.NeedDatabase|config.NeedServer)
	if err != nil {
		return nil, err
	}
	d.secret, d.token = cfg.WebhookSecrets[0], cfg.AppAPIToken
	d.pool, err = lockmgr.OpenPool(ctx, cfg.DatabaseURL, cfg.MaxConns)
	if err != nil {
		return nil, err
	}
	defer d.pool.Close()
	if err := d.putCatalog(ctx); err != nil {
		return nil, err
	}
	log := logging.New(logOut, slog.LevelInfo)
	srv := app.NewServer(cfg, d.pool, log)
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	hs := app.NewHTTPServer(srv.Handler, log)
	go func() { _ = hs.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	d.baseURL = "http://" + ln.Addr().String()
	tr := &http.Transport{MaxIdleConnsPerHost: 128}
	defer tr.CloseIdleConnections()
	d.client = &http.Client{Transport: tr, Timeout: 20 * time.Second}

	d.locks, err = startSampler(ctx, o.DatabaseURL, d.out)
	if err != nil {
		return nil, err
	}
	defer d.locks.stop()

	d.header()
	var verdicts []Verdict
	for _, sc := range []struct {
		key, title string
		play       func(context.Context, *scene) error
	}{
		{"a", "success page first, webhooks right behind", d.successFirst},
		{"b", "webhooks first, success page behind", d.webhooksFirst},
		{"c", fmt.Sprintf("duplicate storm: each event %d times at once, plus the success call", o.Storm), d.storm},
	} {
		v, err := d.play(ctx, sc.key, sc.title, sc.play)
		if err != nil {
			return verdicts, fmt.Errorf("scenario %s: %w", sc.key, err)
		}
		verdicts = append(verdicts, v)
	}
	equal := 0
	for _, v := range verdicts {
		if v.Equal {
			equal++
		}
	}
	d.out.plain("")
	if equal == len(verdicts) {
		d.out.plain(fmt.Sprintf("%d of %d scenarios ended equal: whatever the order, one customer, one subscription, each event applied once; the success page and the paywall agree.", equal, len(verdicts)))
	} else {
		d.out.plain(fmt.Sprintf("%d of %d scenarios ended equal; NOT EQUAL: see the verdicts above.", equal, len(verdicts)))
	}
	return verdicts, nil
}

func (d *demo) header() {
	p := d.out
	p.plain("lockstep demo: Stripe's webhooks and your success page race to write one customer")
	if d.o.DatabaseName != "" {
		p.plain(fmt.Sprintf("  database  %s (scratch, lockstep's schema; dropped at the end)", d.o.DatabaseName))
	}
	p.plain(fmt.Sprintf("  lockstep  %s (this process, development secrets)", d.baseURL))
	p.plain(fmt.Sprintf("  stripe    %s (the built-in fake; nothing leaves this machine)", d.fake.URL))
	p.plain(fmt.Sprintf("  locks     the stripe_customer_locks view, sampled every %s", sampleEvery))
	p.plain(fmt.Sprintf("  catalog   plan %q (%s, %s) in the fake only: lockstep reads it from Stripe when a subscription names it", demoPlanName, demoProduct, demoPrice))
	p.plain("")
	p.plain("To make the waits visible, the demo itself plays a slow writer: at the start of each scenario it")
	p.plain(fmt.Sprintf("holds the customer's advisory lock for about %s in a side transaction (%q),", d.o.Hold, holderName))
	p.plain("as a writer on another machine would. Everything else is lockstep as `lockstep serve` runs it.")
	p.plain(fmt.Sprintf("lockstep lets %d writers per customer wait in PostgreSQL; the others queue in its memory, in order.", lockmgr.WritersPerCustomer))
	p.plain("")
	p.plain("Reading it: \"lock\" lines are waits seen in the view (pid, who, whose lock, behind whom); a webhook")
	p.plain("answers processed (applied now) or duplicate (already applied: nothing changed); the success call")
	p.plain("answers where the success page sends the user and the paywall's decision. Then the rows lockstep")
	p.plain("left, the decision the success call answered and the one GET /access reads afterwards (they must")
	p.plain("agree: state, access, until, subscription), and a verdict.")
}

// The plan every scenario's user pays for.
const (
	demoProduct  = "prod_demo_pro"
	demoPrice    = "price_demo_pro_monthly"
	demoPlanName = "Pro"
)

// putCatalog puts the demo's plan in the fake Stripe only: lockstep has
// never seen it, so the first writer that stores a subscription on it reads
// the price and product from Stripe after its commit, outside the lock, as
// it does for a plan created before it was deployed.
func (d *demo) putCatalog(context.Context) error {
	d.fake.PutProduct(stripefake.Product{ID: demoProduct, Name: demoPlanName})
	d.fake.PutPrice(stripefake.Price{ID: demoPrice, Product: demoProduct, LookupKey: "pro_monthly",
		Currency: "usd", UnitAmount: 2000, Interval: "month"})
	return nil
}

// scene is one scenario's customer, its objects in the fake, and its
// writers' results.
type scene struct {
	key                                 string
	user, customer, sub, session, price string
	sessionEvent, subEvent              string // event ids
	sessionPayload, subPayload          []byte

	mu      sync.Mutex
	results []result
}

// result is one writer's answer.
type result struct {
	writer  string // "success" or "webhook"
	event   string // the webhook's event type
	code    int
	outcome string // webhook: processed / duplicate / ...; success: the redirect
	body    map[string]any
	raw     []byte
	err     error
}

func (d *demo) newScene(key string) *scene {
	sc := &scene{
		key:          key,
		user:         "demo-user-" + key,
		customer:     "cus_demo_" + key,
		sub:          "sub_demo_" + key,
		session:      "cs_test_demo_" + key,
		price:        demoPrice,
		sessionEvent: "evt_demo_" + key + "_session_completed",
		subEvent:     "evt_demo_" + key + "_subscription_created",
	}
	created := time.Now().Add(-2 * time.Second).Truncate(time.Second)
	sub := stripefake.Subscription{ID: sc.sub, Customer: sc.customer, Status: "active", PriceID: sc.price,
		CurrentPeriodEnd: created.AddDate(0, 1, 0), Created: created}
	sess := stripefake.Session{ID: sc.session, Customer: sc.customer, Subscription: sc.sub, ClientReferenceID: sc.user,
		Status: "complete", PaymentStatus: "paid", Mode: "subscription", Created: created}
	d.fake.PutCustomer(stripefake.Customer{ID: sc.customer, Created: created})
	d.fake.PutSubscription(sub)
	d.fake.PutSession(sess)
	sc.sessionPayload = stripefake.EventJSON(sc.sessionEvent, "checkout.session.completed", created, stripefake.DefaultAPIVersion,
		stripefake.SessionJSON(sess, nil, stripefake.DefaultAPIVersion))
	sc.subPayload = stripefake.EventJSON(sc.subEvent, "customer.subscription.created", created, stripefake.DefaultAPIVersion,
		stripefake.SubscriptionJSON(sub, stripefake.DefaultAPIVersion))
	return sc
}

// play runs one scenario and checks how it ended.
func (d *demo) play(ctx context.Context, key, title string, body func(context.Context, *scene) error) (Verdict, error) {
	sc := d.newScene(key)
	d.out.plain("")
	d.out.plain(fmt.Sprintf("── %s) %s", key, title))
	d.out.plain(fmt.Sprintf("   user %s pays; Stripe makes customer %s, subscription %s, session %s", sc.user, sc.customer, sc.sub, sc.session))
	d.out.start()
	if err := d.locks.watch(ctx, sc.customer); err != nil {
		return Verdict{}, err
	}
	err := body(ctx, sc)
	behindDemo, behindLockstep := d.locks.unwatch()
	if err == nil {
		d.out.fact("waits", fmt.Sprintf("%d seen in stripe_customer_locks: %d behind the demo's slow writer, %d behind another lockstep writer",
			behindDemo+behindLockstep, behindDemo, behindLockstep))
	}
	if err == nil && d.o.afterScene != nil {
		err = d.o.afterScene(ctx, key, d.pool)
	}
	if err != nil {
		return Verdict{}, err
	}
	v := Verdict{Scenario: key, Title: title}
	problems := d.check(ctx, sc, &v)
	if len(problems) == 0 {
		v.Equal = true
		d.out.fact("verdict", fmt.Sprintf("EQUAL: %s is %s's only customer, %s its only subscription; each event applied once; user on %s; success page and paywall agree: %s",
			sc.customer, sc.user, sc.sub, v.Landing, v.PaywallAccess.State))
	} else {
		v.Reason = strings.Join(problems, "; ")
		d.out.fact("verdict", "NOT EQUAL: "+v.Reason)
	}
	return v, nil
}

// writer is one request the scenario sends.
type writer struct {
	what    string // "success" or "webhook"
	event   string // webhook: the event type
	request string // what it sends, for the story
	appName string // what lockstep names its transaction in pg_stat_activity
	send    func(ctx context.Context) result
}

func (d *demo) successWriter(sc *scene) writer {
	return writer{what: "success", request: "POST /api/checkout/success  " + sc.session, appName: "lockstep checkout " + sc.session, send: func(ctx context.Context) result {
		body, _ := json.Marshal(map[string]string{"session_id": sc.session, "user_id": sc.user})
		r := d.post(ctx, "/api/checkout/success", body, map[string]string{"Authorization": "Bearer " + d.token})
		r.writer = "success"
		if s, ok := r.body["redirect"].(string); ok {
			r.outcome = s
		}
		return r
	}}
}

func (d *demo) webhookWriter(sc *scene, typ, id string, payload []byte) writer {
	return writer{what: "webhook", event: typ, request: "POST /webhooks/stripe  " + typ, appName: "lockstep webhook " + id, send: func(ctx context.Context) result {
		sig := stripefake.SignatureHeader(payload, d.secret, time.Now())
		r := d.post(ctx, "/webhooks/stripe", payload, map[string]string{"Stripe-Signature": sig})
		r.writer, r.event = "webhook", typ
		if s, ok := r.body["status"].(string); ok {
			r.outcome = s
		}
		return r
	}}
}

func (d *demo) post(ctx context.Context, path string, body []byte, headers map[string]string) result {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.baseURL+path, bytes.NewReader(body))
	if err != nil {
		return result{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := d.client.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := result{code: res.StatusCode, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	if res.StatusCode >= 300 {
		r.err = fmt.Errorf("%d %s", res.StatusCode, strings.TrimSpace(string(raw)))
	}
	return r
}

// launch sends w in the background; its answer is printed and kept when
// it comes.
func (d *demo) launch(ctx context.Context, sc *scene, w writer, wg *sync.WaitGroup) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := w.send(ctx)
		sc.mu.Lock()
		sc.results = append(sc.results, r)
		sc.mu.Unlock()
		d.out.line(w.what, describe(sc, r))
	}()
}

// describe is one answer on one line.
func describe(sc *scene, r result) string {
	if r.code == 0 {
		return fmt.Sprintf("no answer: %v", r.err)
	}
	if r.code >= 300 {
		msg, _ := r.body["error"].(string)
		if msg == "" && r.err != nil {
			msg = r.err.Error()
		}
		return fmt.Sprintf("%d  %s", r.code, msg)
	}
	if r.writer == "webhook" {
		s := fmt.Sprintf("%d  %-9s %s", r.code, r.outcome, r.event)
		if note, _ := r.body["note"].(string); note != "" {
			s += " (" + note + ")"
		}
		return s
	}
	s := fmt.Sprintf("%d  redirect %s", r.code, r.outcome)
	if m, _ := r.body["mapping"].(string); m != "" {
		s += ", mapping " + m
	}
	if sub, ok := r.body["subscription"].(map[string]any); ok {
		s += fmt.Sprintf(", subscription %v", sub["status"])
	}
	if acc, ok := r.body["access"].(map[string]any); ok {
		s += fmt.Sprintf(", access %v (%v)", acc["access"], acc["state"])
	}
	return s
}

// inOrder sends writers one after another, each once it is seen waiting for
// the lock the demo holds (or, for one lockstep queues in memory, after a
// moment), then releases the lock and waits for every answer.
func (d *demo) inOrder(ctx context.Context, sc *scene, writers ...writer) error {
	release, err := d.hold(ctx, sc)
	if err != nil {
		return err
	}
	defer release()
	held := time.Now()
	var wg sync.WaitGroup
	for i, w := range writers {
		d.out.line(w.what, "sent   "+w.request)
		d.launch(ctx, sc, w, &wg)
		switch {
		case i < lockmgr.WritersPerCustomer:
			// The lock is released only once the first writer is seen
			// waiting for it (or after seenWithin, on a machine too busy
			// to tell), so that the wait shows whatever the load.
			if !d.locks.awaitWaiting(ctx, w.appName, seenWithin) {
				d.out.line("", fmt.Sprintf("       (not seen waiting within %s)", seenWithin))
			}
		default:
			sleep(ctx, 100*time.Millisecond)
			d.out.line("", fmt.Sprintf("       (lockstep queues it in memory behind the %d waiting in PostgreSQL)", lockmgr.WritersPerCustomer))
		}
	}
	if rest := d.o.Hold - time.Since(held); rest > 0 {
		sleep(ctx, rest)
	}
	release()
	wg.Wait()
	return ctx.Err()
}

func (d *demo) successFirst(ctx context.Context, sc *scene) error {
	return d.inOrder(ctx, sc,
		d.successWriter(sc),
		d.webhookWriter(sc, "checkout.session.completed", sc.sessionEvent, sc.sessionPayload),
		d.webhookWriter(sc, "customer.subscription.created", sc.subEvent, sc.subPayload))
}

func (d *demo) webhooksFirst(ctx context.Context, sc *scene) error {
	return d.inOrder(ctx, sc,
		d.webhookWriter(sc, "checkout.session.completed", sc.sessionEvent, sc.sessionPayload),
		d.webhookWriter(sc, "customer.subscription.created", sc.subEvent, sc.subPayload),
		d.successWriter(sc))
}

// storm sends every delivery and the success call at once.
func (d *demo) storm(ctx context.Context, sc *scene) error {
	release, err := d.hold(ctx, sc)
	if err != nil {
		return err
	}
	defer release()
	held := time.Now()
	writers := []writer{d.successWriter(sc)}
	for range d.o.Storm {
		writers = append(writers,
			d.webhookWriter(sc, "checkout.session.completed", sc.sessionEvent, sc.sessionPayload),
			d.webhookWriter(sc, "customer.subscription.created", sc.subEvent, sc.subPayload))
	}
	d.out.line("storm", fmt.Sprintf("sent   %d writers at once: the success call, %d× checkout.session.completed, %d× customer.subscription.created",
		len(writers), d.o.Storm, d.o.Storm))
	var wg sync.WaitGroup
	for _, w := range writers {
		d.launch(ctx, sc, w, &wg)
	}
	if !d.locks.awaitAnyWaiting(ctx, seenWithin) {
		d.out.line("", fmt.Sprintf("       (no writer seen waiting within %s)", seenWithin))
	}
	if rest := d.o.Hold - time.Since(held); rest > 0 {
		sleep(ctx, rest)
	}
	release()
	wg.Wait()
	return ctx.Err()
}

// seenWithin bounds how long the demo waits to see a writer wait for the
// lock before it goes on: the slow writer then holds the lock for at most
// about 2 s, well inside lockstep's retry budget (4 s), so a busy machine
// makes the story shorter, never a writer fail.
const seenWithin = time.Second

// holderName is the demo's slow writer as pg_stat_activity shows it.
const holderName = "lockstep-demo slow writer"

// hold takes sc's customer lock in a side transaction, as a slow writer on
// another machine would, and returns the function that commits it.
func (d *demo) hold(ctx context.Context, sc *scene) (release func(), err error) {
	conn, err := pgx.Connect(ctx, d.o.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("slow writer: connect: %w", err)
	}
	var pid int32
	tx, err := conn.Begin(ctx)
	if err == nil {
		err = tx.QueryRow(ctx, `SELECT pg_backend_pid() FROM (SELECT set_config('application_name', $1, true), pg_advisory_xact_lock(hashtext($2))) l`,
			holderName, sc.customer).Scan(&pid)
	}
	if err != nil {
		_ = conn.Close(context.Background())
		return nil, fmt.Errorf("slow writer: take the lock of %s: %w", sc.customer, err)
	}
	start := time.Now()
	d.out.line("demo", fmt.Sprintf("holds  %s's lock: pid %d, %q, for about %s", sc.customer, pid, holderName, d.o.Hold))
	var once sync.Once
	return func() {
		once.Do(func() {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = tx.Commit(cctx)
			_ = conn.Close(cctx)
			d.out.line("demo", fmt.Sprintf("commits: releases %s's lock after %s", sc.customer, time.Since(start).Round(time.Millisecond)))
		})
	}, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// check compares what the writers answered and what is stored with what
// Stripe says, prints the rows and the landing, and returns what differs.
func (d *demo) check(ctx context.Context, sc *scene, v *Verdict) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	outcomes := map[string]map[string]int{} // event type -> outcome -> count
	var successAccess *Decision
	for _, r := range sc.results {
		switch {
		case r.writer == "success":
			v.Landing = r.outcome
			if r.code != http.StatusOK || r.outcome != "/dashboard" {
				bad("success call answered %d %q, want 200 /dashboard", r.code, r.outcome)
			}
			var body struct{ Access *Decision }
			if json.Unmarshal(r.raw, &body) == nil {
				successAccess = body.Access
			}
		case r.code != http.StatusOK:
			bad("a %s delivery answered %d", r.event, r.code)
		default:
			if outcomes[r.event] == nil {
				outcomes[r.event] = map[string]int{}
			}
			outcomes[r.event][r.outcome]++
		}
	}
	for _, typ := range []string{"checkout.session.completed", "customer.subscription.created"} {
		c := outcomes[typ]
		var sum []string
		for _, o := range []string{"processed", "duplicate"} {
			if c[o] > 0 {
				sum = append(sum, fmt.Sprintf("%d %s", c[o], o))
			}
		}
		d.out.fact("answers", fmt.Sprintf("%-29s %s", typ, strings.Join(sum, ", ")))
		total := 0
		for _, n := range c {
			total += n
		}
		if c["processed"] != 1 || c["duplicate"] != total-1 {
			bad("%s answered %v, want 1 processed and the rest duplicate", typ, c)
		}
	}

	// The rows: one customer mapped to the user, one subscription, each
	// event processed in one attempt.
	var customers []string
	rows, err := d.pool.Query(ctx, `SELECT stripe_customer_id FROM stripe_customers WHERE user_id = $1 OR stripe_customer_id = $2 ORDER BY 1`, sc.user, sc.customer)
	if err == nil {
		customers, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return append(problems, fmt.Sprintf("read customers: %v", err))
	}
	var mapped string
	_ = d.pool.QueryRow(ctx, `SELECT coalesce(user_id, '') FROM stripe_customers WHERE stripe_customer_id = $1`, sc.customer).Scan(&mapped)
	d.out.fact("rows", fmt.Sprintf("stripe_customers      %s -> %s", strings.Join(customers, ", "), orNone(mapped)))
	if len(customers) != 1 || customers[0] != sc.customer || mapped != sc.user {
		bad("stripe_customers has %v mapped to %q, want only %s mapped to %s", customers, mapped, sc.customer, sc.user)
	}

	type subRow struct{ ID, Status string }
	rows, err = d.pool.Query(ctx, `SELECT stripe_subscription_id, status FROM stripe_subscriptions WHERE stripe_customer_id = $1 ORDER BY 1`, sc.customer)
	var subs []subRow
	if err == nil {
		subs, err = pgx.CollectRows(rows, pgx.RowToStructByPos[subRow])
	}
	if err != nil {
		return append(problems, fmt.Sprintf("read subscriptions: %v", err))
	}
	var subText []string
	for _, s := range subs {
		subText = append(subText, s.ID+" "+s.Status)
	}
	d.out.fact("rows", fmt.Sprintf("stripe_subscriptions  %s", orNone(strings.Join(subText, ", "))))
	if len(subs) != 1 || subs[0].ID != sc.sub || subs[0].Status != "active" {
		bad("stripe_subscriptions has %v, want only %s active", subText, sc.sub)
	}

	type eventRow struct {
		ID, Status string
		Attempts   int
	}
	rows, err = d.pool.Query(ctx, `SELECT event_id, status, attempts FROM stripe_events WHERE stripe_customer_id = $1 OR event_id = ANY($2) ORDER BY stripe_created, event_id`,
		sc.customer, []string{sc.sessionEvent, sc.subEvent})
	var events []eventRow
	if err == nil {
		events, err = pgx.CollectRows(rows, pgx.RowToStructByPos[eventRow])
	}
	if err != nil {
		return append(problems, fmt.Sprintf("read events: %v", err))
	}
	for i, e := range events {
		label := "stripe_events"
		if i > 0 {
			label = ""
		}
		d.out.fact("rows", fmt.Sprintf("%-21s %s %s, attempts %d", label, e.ID, e.Status, e.Attempts))
		if e.Status != "processed" || e.Attempts != 1 {
			bad("event %s is %s after %d attempts, want processed in 1", e.ID, e.Status, e.Attempts)
		}
	}
	if len(events) != 2 {
		bad("stripe_events has %d events of %s, want 2", len(events), sc.customer)
	}

	// Where the user lands: the success call's redirect, and the paywall's
	// read of what is stored.
	landing := fmt.Sprintf("the success call redirects to %s", orNone(v.Landing))
	var bv struct {
		CustomerID    string `json:"customer_id"`
		Subscriptions []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
		} `json:"subscriptions"`
	}
	code, err := d.get(ctx, "/api/users/"+sc.user+"/billing", &bv)
	switch {
	case err != nil:
		bad("paywall read: %v", err)
	case code != http.StatusOK:
		bad("paywall read answered %d, want 200", code)
	default:
		landing += fmt.Sprintf("; GET /billing reads %s", bv.CustomerID)
		for _, s := range bv.Subscriptions {
			landing += fmt.Sprintf(", %s %s", s.ID, s.Status)
		}
		if bv.CustomerID != sc.customer || len(bv.Subscriptions) != 1 || bv.Subscriptions[0].Status != "active" {
			bad("the paywall reads %+v, want %s with one active subscription", bv, sc.customer)
		}
	}
	d.out.fact("lands", landing)

	// The paywall's decision: what the success call answered under
	// "access", and what GET /access answers afterwards. They must agree.
	var pv Decision
	code, err = d.get(ctx, "/api/users/"+sc.user+"/access", &pv)
	switch {
	case err != nil:
		bad("access read: %v", err)
	case code != http.StatusOK:
		bad("access read answered %d, want 200", code)
	}
	if successAccess == nil {
		d.out.fact("access", fmt.Sprintf("%-13s %s", "success call", "(no decision in its answer)"))
		bad("the success call's answer carries no access decision")
	} else {
		v.SuccessAccess = *successAccess
		d.out.fact("access", fmt.Sprintf("%-13s %s", "success call", successAccess))
	}
	if err == nil && code == http.StatusOK {
		v.PaywallAccess = pv
		d.out.fact("access", fmt.Sprintf("%-13s %s", "GET /access", pv))
		if successAccess != nil {
			if diff := successAccess.differs(pv); diff != "" {
				bad("the success page and the paywall disagree: %s", diff)
			}
		}
		if !pv.Access || pv.State != "active" || strOr(pv.Subscription, "") != sc.sub {
			bad("the paywall decides %s with access %t on %s, want active with access on %s", orNone(pv.State), pv.Access, strOr(pv.Subscription, "null"), sc.sub)
		}
	}
	return problems
}

func (d *demo) get(ctx context.Context, path string, into any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.baseURL+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+d.token)
	res, err := d.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, nil
	}
	if err := json.NewDecoder(res.Body).Decode(into); err != nil {
		return res.StatusCode, fmt.Errorf("GET %s: body is not the JSON it should be", path)
	}
	return res.StatusCode, nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// printer writes the story: short aligned lines, each with the time since
// its scenario began.
type printer struct {
	mu sync.Mutex
	w  io.Writer
	t0 time.Time
}

// start begins a scenario's clock.
func (p *printer) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.t0 = time.Now()
}

func (p *printer) plain(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, s)
}

func (p *printer) line(who, what string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "  %7s  %-8s %s\n", fmt.Sprintf("+%dms", time.Since(p.t0).Milliseconds()), who, what)
}

// fact is a line of the outcome, without a time.
func (p *printer) fact(who, what string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "  %7s  %-8s %s\n", "", who, what)
}
