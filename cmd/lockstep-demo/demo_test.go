package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/lockstep/lockstep/internal/dbtest"
)

// The demo's flow, as `make demo` runs it, on a database of the test's own:
// every scenario ends equal, the output tells the story, and the rows are
// what the verdicts say.
func TestDemoScenariosEndEqual(t *testing.T) {
	db := dbtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	verdicts, err := Play(ctx, Options{DatabaseURL: db.URL, Out: &out, Storm: 4, Hold: 300 * time.Millisecond})
	if err != nil {
		t.Fatalf("Play: %v\n%s", err, out.String())
	}
	if len(verdicts) != 3 {
		t.Fatalf("%d verdicts, want 3\n%s", len(verdicts), out.String())
	}
	for i, v := range verdicts {
		if want := string(rune('a' + i)); v.Scenario != want || !v.Equal || v.Landing != "/dashboard" {
			t.Errorf("verdict %d = %+v, want scenario %s equal, landing on /dashboard", i, v, want)
		}
	}
	story := out.String()
	for _, want := range []string{
		"── a) success page first, webhooks right behind",
		"── b) webhooks first, success page behind",
		"── c) duplicate storm: each event 4 times at once, plus the success call",
		`holds  cus_demo_a's lock: pid`,
		"checkout cs_test_demo_a waits for cus_demo_a's lock, behind",
		"webhook evt_demo_b_session_completed waits for cus_demo_b's lock, behind",
		"answers  checkout.session.completed    1 processed, 3 duplicate",
		"answers  customer.subscription.created 1 processed, 3 duplicate",
		"verdict  EQUAL: cus_demo_c is demo-user-c's only customer",
		"success page and paywall agree: active",
		"access   success call  active     access true  until ",
		"access   GET /access   active     access true  until ",
		"3 of 3 scenarios ended equal",
	} {
		if !strings.Contains(story, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(story, "NOT EQUAL") {
		t.Errorf("output says NOT EQUAL")
	}
	// In a) the success call wrote first and created the mapping; in b) the
	// webhook had, and the success call found it unchanged.
	if !strings.Contains(story, "200  redirect /dashboard, mapping created") || !strings.Contains(story, "200  redirect /dashboard, mapping unchanged") {
		t.Errorf("the success calls' mappings are not created (a) and unchanged (b)")
	}

	// The rows, read here rather than trusted from the demo.
	var customers, mapped, subs, activeSubs, events, processedOnce int
	if err := db.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM stripe_customers),
       (SELECT count(*) FROM stripe_customers WHERE user_id = 'demo-user-' || substr(stripe_customer_id, 10)),
       (SELECT count(*) FROM stripe_subscriptions),
       (SELECT count(*) FROM stripe_subscriptions WHERE status = 'active' AND stripe_subscription_id = 'sub_demo_' || substr(stripe_customer_id, 10)),
       (SELECT count(*) FROM stripe_events),
       (SELECT count(*) FROM stripe_events WHERE status = 'processed' AND attempts = 1)`).
		Scan(&customers, &mapped, &subs, &activeSubs, &events, &processedOnce); err != nil {
		t.Fatal(err)
	}
	if customers != 3 || mapped != 3 || subs != 3 || activeSubs != 3 || events != 6 || processedOnce != 6 {
		t.Errorf("rows: %d customers (%d mapped to their user), %d subscriptions (%d active, theirs), %d events (%d processed in one attempt); want 3, 3, 3, 3, 6, 6\n%s",
			customers, mapped, subs, activeSubs, events, processedOnce, story)
	}

	// Where the user lands in paywall terms: the success call's decision and
	// GET /access read afterwards agree, and both are what is stored.
	for _, v := range verdicts {
		var until time.Time
		if err := db.Pool.QueryRow(ctx, `SELECT current_period_end FROM stripe_subscriptions WHERE stripe_subscription_id = $1`,
			"sub_demo_"+v.Scenario).Scan(&until); err != nil {
			t.Fatal(err)
		}
		for name, a := range map[string]Decision{"success call": v.SuccessAccess, "GET /access": v.PaywallAccess} {
			if a.State != "active" || !a.Access || a.Until == nil || !a.Until.Equal(until) || strOr(a.Subscription, "") != "sub_demo_"+v.Scenario ||
				a.Plan == nil || strOr(a.Plan.Name, "") != "Pro" || a.Action != "none" {
				t.Errorf("scenario %s: %s decided %s; want active, access, until %s, sub_demo_%s, plan Pro, action none",
					v.Scenario, name, a, until.UTC().Format(time.RFC3339), v.Scenario)
			}
		}
		if diff := v.SuccessAccess.differs(v.PaywallAccess); diff != "" {
			t.Errorf("scenario %s: the success call and GET /access disagree: %s", v.Scenario, diff)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", story)
	}
}

// A scenario whose rows are wrong ends NOT EQUAL with the reason; the others
// are still judged.
func TestDemoSaysWhenNotEqual(t *testing.T) {
	db := dbtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	verdicts, err := Play(ctx, Options{DatabaseURL: db.URL, Out: &out, Storm: 2, Hold: 100 * time.Millisecond,
		afterScene: func(ctx context.Context, key string, pool *pgxpool.Pool) error {
			if key != "b" {
				return nil
			}
			_, err := pool.Exec(ctx, `INSERT INTO stripe_subscriptions (stripe_subscription_id, stripe_customer_id, status, source_time, source)
				VALUES ('sub_demo_b_twin', 'cus_demo_b', 'active', now(), 'test')`)
			return err
		}})
	if err != nil {
		t.Fatalf("Play: %v\n%s", err, out.String())
	}
	if len(verdicts) != 3 || !verdicts[0].Equal || verdicts[1].Equal || !verdicts[2].Equal {
		t.Fatalf("verdicts %+v, want only b not equal\n%s", verdicts, out.String())
	}
	if !strings.Contains(verdicts[1].Reason, "stripe_subscriptions has [sub_demo_b active sub_demo_b_twin active]") {
		t.Errorf("reason %q does not name the second subscription", verdicts[1].Reason)
	}
	if !strings.Contains(out.String(), "verdict  NOT EQUAL: stripe_subscriptions has") || !strings.Contains(out.String(), "2 of 3 scenarios ended equal") {
		t.Errorf("output does not say NOT EQUAL:\n%s", out.String())
	}
}

// When the paywall reads another decision than the success call answered
// (here: the period end moved after the writers), the scenario ends NOT
// EQUAL naming what differs, though its rows are otherwise right.
func TestDemoSaysWhenSuccessAndPaywallDisagree(t *testing.T) {
	db := dbtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	verdicts, err := Play(ctx, Options{DatabaseURL: db.URL, Out: &out, Storm: 2, Hold: 100 * time.Millisecond,
		afterScene: func(ctx context.Context, key string, pool *pgxpool.Pool) error {
			if key != "a" {
				return nil
			}
			_, err := pool.Exec(ctx, `UPDATE stripe_subscriptions SET current_period_end = current_period_end + interval '1 day'
				WHERE stripe_subscription_id = 'sub_demo_a'`)
			return err
		}})
	if err != nil {
		t.Fatalf("Play: %v\n%s", err, out.String())
	}
	if len(verdicts) != 3 || verdicts[0].Equal || !verdicts[1].Equal || !verdicts[2].Equal {
		t.Fatalf("verdicts %+v, want only a not equal\n%s", verdicts, out.String())
	}
	a := verdicts[0]
	want := fmt.Sprintf("the success page and the paywall disagree: until %s vs %s", timeText(a.SuccessAccess.Until), timeText(a.PaywallAccess.Until))
	if a.Reason != want || a.SuccessAccess.Until == nil || a.PaywallAccess.Until == nil ||
		a.PaywallAccess.Until.Sub(*a.SuccessAccess.Until) != 24*time.Hour {
		t.Errorf("reason %q, want %q with a day between", a.Reason, want)
	}
	if !strings.Contains(out.String(), "verdict  NOT EQUAL: the success page and the paywall disagree: until ") ||
		!strings.Contains(out.String(), "2 of 3 scenarios ended equal") {
		t.Errorf("output does not say NOT EQUAL:\n%s", out.String())
	}
}

// The command line: bad flags and a missing DATABASE_URL are usage errors
// (exit 2) that name the problem; -h is not an error.
func TestRunUsage(t *testing.T) {
	t.Parallel()
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	withDB := env(map[string]string{"DATABASE_URL": "postgres://127.0.0.1:1/x"})
	for _, tc := range []struct {
		args   []string
		getenv func(string) string
		code   int
		says   string
	}{
		{[]string{"-h"}, withDB, 0, "usage: DATABASE_URL="},
		{[]string{"-storm", "0"}, withDB, 2, "-storm must be from 1 to 50"},
		{[]string{"-hold", "5s"}, withDB, 2, "-hold must be from 50ms to 1s"},
		{[]string{"extra"}, withDB, 2, `unexpected argument "extra"`},
		{nil, env(nil), 2, "DATABASE_URL is required"},
	} {
		var stderr bytes.Buffer
		code := run(context.Background(), tc.args, tc.getenv, io.Discard, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.says) {
			t.Errorf("run %q: exit %d, stderr %q; want %d saying %q", tc.args, code, stderr.String(), tc.code, tc.says)
		}
	}
}

// The command as `make demo` runs it: a scratch database of its own on the
// server, created, played on and dropped; exit 0.
func TestRunPlaysOnAScratchDatabase(t *testing.T) {
	server := dbtest.ServerURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	getenv := func(k string) string { return map[string]string{"DATABASE_URL": server}[k] }
	if code := run(ctx, []string{"-storm", "2", "-hold", "100ms"}, getenv, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d\nstderr: %s\nstdout: %s", code, stderr.String(), stdout.String())
	}
	out := stdout.String()
	_, rest, ok := strings.Cut(out, "  database  ")
	name, _, _ := strings.Cut(rest, " ")
	if !ok || !strings.HasPrefix(name, "lockstep_demo_") || !strings.Contains(out, "3 of 3 scenarios ended equal") {
		t.Fatalf("output does not name its database or end equal:\n%s", out)
	}
	pool, err := pgxpool.New(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("scratch database %s is still there", name)
	}
}
