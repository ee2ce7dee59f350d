package integration_test

// A hostile Stripe (lists that never end, answers that never come, bad
// JSON, values Stripe added later, objects without a customer, 429s and
// 500s forever) against sync, verify and the sweeper: each ends, by itself,
// with a clear error or a finished run; nothing stored is lost or
// corrupted; every lease is handed back.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/internal/dbtest"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/stripeapi"
)

// hostileBulk is b's bulk writers reading Stripe through a client with
// short timeouts, a short 429 budget and a bound of pages, so that a
// hostile Stripe ends each run within a second or two.
func (b *bundle) hostileBulk() *billing.Bulk {
	api := stripeapi.NewClient(b.stripe.URL, stripeKey, stripeapi.Options{Share: stripeapi.Bulk,
		Timeout: 300 * time.Millisecond, RateLimitWait: 300 * time.Millisecond, MaxListPages: 200})
	return b.app.Billing.Bulk(api)
}

// leasesFree checks that no sync holds a lease and the sweeper's is free.
func (b *bundle) leasesFree() {
	b.t.Helper()
	if n := b.count(`SELECT count(*) FROM stripe_sweeper WHERE name LIKE 'sync:%'`); n != 0 {
		b.t.Fatalf("%d sync leases left behind", n)
	}
	if n := b.count(`SELECT count(*) FROM stripe_sweeper WHERE name = 'events' AND lease_until IS NOT NULL`); n != 0 {
		b.t.Fatalf("the sweeper's lease is still held")
	}
}

func TestCommandsUnderHostileStripe(t *testing.T) {
	t.Parallel()
	type want struct {
		err  error  // nil: the run finishes
		text string // in the error
	}
	stuck := want{stripeapi.ErrListStuck, "does not advance"}
	down := want{stripeapi.ErrUnavailable, "stripe api unavailable"}
	for _, tc := range []struct {
		name                string
		mode                stripefake.Hostile
		prefix              string
		sync, verify, sweep want
	}{
		{"endless", stripefake.Endless, "/v1/", stuck, stuck, stuck},
		{"empty page with more", stripefake.EmptyMore, "/v1/", stuck, stuck, stuck},
		{"hang", stripefake.Hang, "/v1/", down, down, down},
		{"slow", stripefake.Slow, "/v1/", want{}, want{}, want{}},
		{"bad JSON", stripefake.BadJSON, "/v1/", down, down, down},
		{"bad objects", stripefake.BadObject, "/v1/",
			want{billing.ErrUnreadable, "(each reported above, by id)"},
			want{billing.ErrUnreadable, "some objects"}, want{billing.ErrUnreadable, "some objects"}},
		{"unknown status", stripefake.UnknownEnum, "/v1/", want{}, want{}, want{}},
		{"no customer", stripefake.NoCustomer, "/v1/subscriptions", want{billing.ErrUnreadable, "some objects"},
			want{billing.ErrUnreadable, "some objects"}, want{}},
		{"no customer in events", stripefake.NoCustomer, "/v1/events", want{}, want{}, want{billing.ErrUnreadable, "some objects"}},
		{"429 forever", stripefake.RateLimited, "/v1/", down, down, down},
		{"500", stripefake.ServerError, "/v1/", down, down, down},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, withMaxConns(6))
			ctx := context.Background()
			a := seedAccount(b, 8)
			if _, err := b.app.Bulk.Sync(ctx, billing.SyncOptions{}); err != nil {
				t.Fatalf("sync before: %v", err)
			}
			fx := b.paidCheckout(uniqueUser("hostile"), b.stripe.Now().Add(-time.Hour).Truncate(time.Second))
			b.checkoutEvents(fx) // missed: the sweeper's to find
			b.stripe.SetSlowDelay(20 * time.Millisecond)
			b.stripe.SetHostile(tc.prefix, tc.mode)
			hb := b.hostileBulk()
			var unreadable []billing.Unreadable
			var mu sync.Mutex
			note := func(u billing.Unreadable) {
				mu.Lock()
				defer mu.Unlock()
				unreadable = append(unreadable, u)
			}
			check := func(what string, err error, w want) {
				t.Helper()
				switch {
				case w.err == nil && err != nil:
					t.Fatalf("%s: %v, want a finished run", what, err)
				case w.err != nil && (!errors.Is(err, w.err) || !strings.Contains(err.Error(), w.text)):
					t.Fatalf("%s: %v, want %v saying %q", what, err, w.err, w.text)
				}
				b.leasesFree()
			}
			_, err := hb.Sync(ctx, billing.SyncOptions{Unreadable: note})
			check("sync", err, tc.sync)
			_, err = hb.Verify(ctx, billing.VerifyOptions{Repair: true, Unreadable: note})
			check("verify", err, tc.verify)
			_, err = hb.Sweep(ctx, billing.SweepOptions{Owner: "hostile", Lease: 5 * time.Second, Unreadable: note})
			check("sweep", err, tc.sweep)
			for _, u := range unreadable {
				if u.ID == "" || u.Reason == "" {
					t.Fatalf("an unreadable object reported without its id or reason: %+v", u)
				}
			}
			if (tc.sync.err == billing.ErrUnreadable || tc.sweep.err == billing.ErrUnreadable) != (len(unreadable) > 0) {
				t.Fatalf("%d unreadable objects reported", len(unreadable))
			}
			if tc.mode == stripefake.UnknownEnum {
				if st := b.subStatus(fx.subscription); st != stripefake.UnknownStatus {
					t.Fatalf("a subscription Stripe says is %s is stored %s", stripefake.UnknownStatus, st)
				}
			}

			// Stripe behaves again: another owner takes the sweeper's lease,
			// and everything ends equal to Stripe.
			b.stripe.SetHostile(tc.prefix, stripefake.Behave)
			if _, err := b.app.Bulk.Sweep(ctx, billing.SweepOptions{Owner: "another", Since: 2 * time.Hour}); err != nil {
				t.Fatalf("sweep by another owner afterwards: %v", err)
			}
			if _, err := b.app.Bulk.Sync(ctx, billing.SyncOptions{}); err != nil {
				t.Fatalf("sync afterwards: %v", err)
			}
			b.assertStoredEquals(a)
			if st := b.subStatus(fx.subscription); st != "active" {
				t.Fatalf("the missed checkout's subscription is %q afterwards, want active", st)
			}
			if n := b.count(`SELECT count(*) FROM stripe_events WHERE attempts > 1`); n != 0 {
				t.Fatalf("%d events applied twice", n)
			}
			b.leasesFree()
		})
	}
}

// The commands say what happened in one place and exit non-zero only at
// the end of a run that skipped something.
func TestCommandsReportHostileStripe(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(6))
	ctx := context.Background()
	seedAccount(b, 6)
	b.stripe.SetHostile("/v1/", stripefake.Endless)
	for _, cmd := range []string{"sync", "verify", "sweep"} {
		out, code := b.cli(ctx, nil, cmd)
		if code != 1 || !strings.Contains(out, "list does not advance: GET /v1/") {
			t.Fatalf("%s over an endless list: exit %d:\n%s", cmd, code, out)
		}
	}
	b.stripe.SetHostile("/v1/", stripefake.Behave)
	b.stripe.SetHostile("/v1/subscriptions", stripefake.NoCustomer)
	out, code := b.cli(ctx, nil, "sync")
	if code != 1 || strings.Count(out, "sync: skipped: subscription \"sub_") != 6 || !strings.Contains(out, "customer") ||
		!strings.Contains(out, "sync done: read 18") /* 6 customers, 12 invoices; no entitlement sets: no subscription could be stored */ || !strings.Contains(out, "sync: done, but some objects stripe sent could not be read: 6") {
		t.Fatalf("sync with subscriptions without a customer: exit %d:\n%s", code, out)
	}
	out, code = b.cli(ctx, nil, "verify")
	if code != 1 || strings.Count(out, "verify: skipped: subscription") != 6 || !strings.Contains(out, "verify: compared the rest") {
		t.Fatalf("verify with subscriptions without a customer: exit %d:\n%s", code, out)
	}
	b.stripe.SetHostile("/v1/subscriptions", stripefake.UnknownEnum)
	if out, code := b.cli(ctx, nil, "sync"); code != 0 {
		t.Fatalf("sync with a status Stripe added later: exit %d:\n%s", code, out)
	}
	if n := b.count(`SELECT count(*) FROM stripe_subscriptions WHERE status = $1`, stripefake.UnknownStatus); n != 6 {
		t.Fatalf("%d subscriptions stored as %s, want 6", n, stripefake.UnknownStatus)
	}
	if out, code := b.cli(ctx, nil, "verify"); code != 0 || !strings.Contains(out, "equals") {
		t.Fatalf("verify with a status Stripe added later: exit %d:\n%s", code, out)
	}
	if v, ok := scrapeMetrics(t, b).get("lockstep_stripe_unknown_enum_total",
		map[string]string{"object": "subscription", "field": "status", "value": stripefake.UnknownStatus}); !ok || v < 6 {
		t.Fatalf("lockstep_stripe_unknown_enum_total = %v (exported: %v)", v, ok)
	}
}

// One sync per scope: a second one while the first runs refuses with one
// line and reads nothing; once the first is done, a sync runs again.
func TestOneSyncPerScope(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(6))
	ctx := context.Background()
	a := seedAccount(b, 30)
	b.stripe.SetSlowDelay(100 * time.Millisecond)
	b.stripe.SetHostile("/v1/", stripefake.Slow)
	first := make(chan error, 1)
	go func() {
		_, err := b.app.Bulk.Sync(ctx, billing.SyncOptions{PageSize: 5, Owner: "first"})
		first <- err
	}()
	dbtest.WaitFor(t, "the first sync to hold its lease", 10*time.Second, func() (bool, string) {
		return b.count(`SELECT count(*) FROM stripe_sweeper WHERE name = 'sync:all'`) == 1, ""
	})
	_, err := b.app.Bulk.Sync(ctx, billing.SyncOptions{Owner: "second"})
	var running *billing.SyncRunningError
	if !errors.As(err, &running) || running.Owner != "first" || running.Scope != "all" {
		t.Fatalf("a second sync of the same scope: %v, want SyncRunningError naming the first", err)
	}
	out, code := b.cli(ctx, nil, "sync")
	if code != 1 || strings.Count(strings.TrimSpace(out), "\n") != 0 ||
		!strings.Contains(out, "a sync of all is already running (first, started at ") || !strings.Contains(out, "wait for it") {
		t.Fatalf("lockstep sync while one runs: exit %d:\n%s", code, out)
	}
	// Another scope is another sync.
	var cus string
	for id := range a.customers {
		cus = id
		break
	}
	if _, err := b.app.Bulk.Sync(ctx, billing.SyncOptions{Customer: cus, Owner: "third"}); err != nil {
		t.Fatalf("a sync of one customer while the account's runs: %v", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first sync: %v", err)
	}
	if n := b.count(`SELECT count(*) FROM stripe_sync_runs WHERE scope = 'all'`); n != 1 {
		t.Fatalf("%d sync runs of the account, want 1", n)
	}
	b.stripe.SetHostile("/v1/", stripefake.Behave)
	b.assertStoredEquals(a)
	b.leasesFree()
	if out, code := b.cli(ctx, nil, "sync"); code != 0 {
		t.Fatalf("sync after the first finished: exit %d:\n%s", code, out)
	}
	// A lease whose holder died on this host is taken over at once; one
	// held elsewhere is waited for until it runs out.
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO stripe_sweeper (name, lease_owner, lease_until, last_run_at)
VALUES ('sync:all', $1, now() + interval '1 hour', now())`, fmt.Sprintf("%s:%d:sync", hostname(t), deadPID(t))); err != nil {
		t.Fatal(err)
	}
	if out, code := b.cli(ctx, nil, "sync"); code != 0 {
		t.Fatalf("sync after one died: exit %d:\n%s", code, out)
	}
	if _, err := b.db.Pool.Exec(ctx, `INSERT INTO stripe_sweeper (name, lease_owner, lease_until, last_run_at)
VALUES ('sync:all', 'elsewhere:1:sync', now() + interval '1 hour', now())`); err != nil {
		t.Fatal(err)
	}
	if out, code := b.cli(ctx, nil, "sync"); code != 1 || !strings.Contains(out, "elsewhere:1:sync") {
		t.Fatalf("sync while another host's holds the lease: exit %d:\n%s", code, out)
	}
}

// serve's sweeper through a list that never ends: the pass stops with the
// error, frees its lease (another owner takes it), and the next pass after
// Stripe behaves recovers the missed events; serve waits for its sweeper
// at shutdown.
func TestServeSweeperUnderHostileStripe(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(4))
	fx := b.paidCheckout(uniqueUser("serve-hostile"), b.stripe.Now().Add(-time.Hour).Truncate(time.Second))
	b.checkoutEvents(fx)
	b.stripe.SetHostile("/v1/events", stripefake.Endless)
	srv := b.serve()
	dbtest.WaitFor(t, "serve's sweeper to stop at the endless list", 30*time.Second, func() (bool, string) {
		return strings.Contains(b.scalar(`SELECT coalesce((SELECT last_error FROM stripe_sweeper WHERE name = 'events'), '')`), "does not advance"), ""
	})
	// The stuck pass gave its lease back: another owner takes it.
	dbtest.WaitFor(t, "another owner to take the sweeper's lease", 10*time.Second, func() (bool, string) {
		_, err := b.hostileBulk().Sweep(context.Background(), billing.SweepOptions{Owner: "another", Lease: time.Second})
		return errors.Is(err, stripeapi.ErrListStuck), fmt.Sprint(err)
	})
	// The first page was applied as it was listed, once; its repeats were
	// not.
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE attempts > 1`); n != 0 {
		t.Fatalf("%d events applied twice from a list that repeats its page", n)
	}
	b.stripe.SetHostile("/v1/events", stripefake.Behave)
	fx2 := b.paidCheckout(uniqueUser("serve-hostile"), b.stripe.Now().Add(-time.Minute).Truncate(time.Second))
	b.checkoutEvents(fx2)
	dbtest.WaitFor(t, "serve's sweeper to recover the missed events", 30*time.Second, func() (bool, string) {
		return b.count(`SELECT count(*) FROM stripe_subscriptions WHERE stripe_subscription_id IN ($1, $2) AND status = 'active'`,
			fx.subscription, fx2.subscription) == 2 && b.scalar(`SELECT coalesce((SELECT last_error FROM stripe_sweeper WHERE name = 'events'), '')`) == "", ""
	})
	// Shutdown waits for the sweeper: hang the next pass, then stop.
	b.stripe.SetHostile("/v1/events", stripefake.Hang)
	dbtest.WaitFor(t, "a pass to hang", 10*time.Second, func() (bool, string) {
		return b.stripe.HostileHits(stripefake.Hang) > 0, ""
	})
	if err := srv.stop(); err != nil {
		t.Fatalf("serve: %v\n%s", err, srv.logs.String())
	}
	b.leasesFree()
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// deadPID is the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// A pass over pages of events lockstep does not handle (an account's
// payment_intent.* and charge.*, which Stripe's types[] filter cannot
// leave out beside more than 20 handled types) still moves forward, so it
// keeps its lease: sampled while the slow list runs, the lease never runs
// out under it.
func TestSweepKeepsItsLeaseOverUnhandledEvents(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for range 600 {
		b.stripe.Emit("payment_intent.created", map[string]any{"id": stripefake.NewID("pi_"), "object": "payment_intent"})
	}
	b.stripe.SetSlowDelay(150 * time.Millisecond)
	b.stripe.SetHostile("/v1/events", stripefake.Slow)

	const lease = 500 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		_, err := b.hostileBulk().Sweep(context.Background(), billing.SweepOptions{Owner: "long", Lease: lease})
		done <- err
	}()
	samples, lapsed := 0, 0
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("sweep over 600 unhandled events: %v", err)
			}
			if samples < 5 {
				t.Fatalf("only %d samples of the lease while the pass ran; the list should take over a second", samples)
			}
			if lapsed > 0 {
				t.Fatalf("the lease had run out in %d of %d samples while the pass was still listing", lapsed, samples)
			}
			return
		case <-time.After(50 * time.Millisecond):
			held := b.scalar(`SELECT coalesce((SELECT (lease_until > now())::text FROM stripe_sweeper
WHERE name = 'events' AND lease_owner = 'long'), 'none')`)
			switch held {
			case "true":
				samples++
			case "false":
				samples++
				lapsed++
			}
		}
	}
}
