package integration_test

// Convergence: what lockstep stores ends equal to what Stripe says, when
// webhooks are missed, when an account predates lockstep, and when Stripe's
// clock and lockstep's disagree. The fake Stripe serves the list endpoints
// with Stripe's pagination, the Events API, a skewed Date header and 429s;
// the commands run through app.Run as an operator runs them.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/internal/stripefake"
)

// cli runs a lockstep command against the bundle's database and fake
// Stripe, and returns what it printed and its exit code.
func (b *bundle) cli(ctx context.Context, env map[string]string, args ...string) (string, int) {
	b.t.Helper()
	vars := map[string]string{
		"DATABASE_URL":      b.db.URL,
		"STRIPE_API_BASE":   b.stripe.URL,
		"STRIPE_SECRET_KEY": stripeKey,
		"LOG_LEVEL":         "warn",
	}
	for k, v := range env {
		vars[k] = v
	}
	var out syncBuffer
	err := app.Run(ctx, args, app.Env{Getenv: func(k string) string { return vars[k] }, Stdout: &out, Stderr: &out})
	if err != nil && err.Error() != "" {
		fmt.Fprintln(&out, "lockstep:", err)
	}
	return out.String(), app.ExitCode(err)
}

// account is what a test put into the fake Stripe: the truth the stored
// state must end equal to.
type account struct {
	customers map[string]stripefake.Customer
	subs      map[string]stripefake.Subscription
	invoices  map[string]stripefake.Invoice
}

// seedAccount puts n customers into the fake Stripe, each with a user in
// its metadata, a subscription (every fifth canceled, every seventh
// past_due) and two invoices, created over the past days: an account that
// predates lockstep.
func seedAccount(b *bundle, n int) *account {
	b.t.Helper()
	a := &account{customers: map[string]stripefake.Customer{}, subs: map[string]stripefake.Subscription{},
		invoices: map[string]stripefake.Invoice{}}
	base := b.stripe.Now().Add(-time.Duration(n+10) * time.Minute).Truncate(time.Second)
	for i := range n {
		created := base.Add(time.Duration(i) * time.Minute)
		c := stripefake.Customer{ID: stripefake.NewID("cus_"), Created: created,
			Metadata: map[string]string{"user_id": uniqueUser("sync")}}
		status := "active"
		switch {
		case i%5 == 0:
			status = "canceled"
		case i%7 == 0:
			status = "past_due"
		}
		s := stripefake.Subscription{ID: stripefake.NewID("sub_"), Customer: c.ID, Status: status,
			PriceID: fmt.Sprintf("price_%d", i%3), Created: created, CancelAtPeriodEnd: i%4 == 0}
		b.stripe.PutCustomer(c)
		b.stripe.PutSubscription(s)
		a.customers[c.ID], a.subs[s.ID] = c, s
		for j, st := range []string{"paid", "open"} {
			inv := stripefake.Invoice{ID: stripefake.NewID("in_"), Customer: c.ID, Subscription: s.ID, Status: st,
				Currency: "usd", AmountDue: 1500, AmountPaid: map[bool]int64{true: 1500}[st == "paid"],
				Created: created.Add(time.Duration(j) * time.Second)}
			b.stripe.PutInvoice(inv)
			a.invoices[inv.ID] = inv
		}
	}
	return a
}

// assertStoredEquals checks every row against the account, field by field,
// with its own queries (not with verify, which is under test too).
func (b *bundle) assertStoredEquals(a *account) {
	b.t.Helper()
	ctx := context.Background()
	for id, c := range a.customers {
		var user *string
		var deleted bool
		if err := b.db.Pool.QueryRow(ctx, `SELECT user_id, deleted FROM stripe_customers WHERE stripe_customer_id = $1`, id).
			Scan(&user, &deleted); err != nil {
			b.t.Fatalf("customer %s: %v", id, err)
		}
		if want := c.Metadata["user_id"]; !c.Deleted && (user == nil || *user != want) {
			b.t.Fatalf("customer %s maps to %v, want the user in its metadata", id, user)
		}
		if deleted != c.Deleted {
			b.t.Fatalf("customer %s deleted=%v, Stripe says %v", id, deleted, c.Deleted)
		}
	}
	for id, s := range a.subs {
		var status, price, customer string
		var cancel bool
		if err := b.db.Pool.QueryRow(ctx, `SELECT status, coalesce(price_id, ''), cancel_at_period_end, stripe_customer_id
FROM stripe_subscriptions WHERE stripe_subscription_id = $1`, id).Scan(&status, &price, &cancel, &customer); err != nil {
			b.t.Fatalf("subscription %s: %v", id, err)
		}
		if status != s.Status || price != s.PriceID || cancel != s.CancelAtPeriodEnd || customer != s.Customer {
			b.t.Fatalf("subscription %s stored (%s %s %v %s), Stripe says (%s %s %v %s)", id, status, price, cancel, customer,
				s.Status, s.PriceID, s.CancelAtPeriodEnd, s.Customer)
		}
	}
	for id, inv := range a.invoices {
		if st := b.scalar(`SELECT status FROM stripe_invoices WHERE stripe_invoice_id = $1`, id); st != inv.Status {
			b.t.Fatalf("invoice %s stored %s, Stripe says %s", id, st, inv.Status)
		}
	}
}

// An account that predates lockstep: sync brings in every customer,
// mapping, subscription (canceled too) and invoice; the paywall answers for
// existing subscribers; a second sync changes nothing.
func TestSyncBackfillsAnAccount(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := seedAccount(b, 230) // more than two pages of every list
	user := ""
	for _, c := range a.customers {
		user = c.Metadata["user_id"]
		break
	}
	if code, _ := b.userBilling(user); code != 404 {
		t.Fatalf("before sync: billing answers %d, want 404", code)
	}

	out, code := b.cli(context.Background(), nil, "sync")
	if code != 0 || !strings.Contains(out, "sync done: read 1104, wrote 920") {
		t.Fatalf("sync: exit %d, want 0, 1104 read (230 customers, 230 subscriptions, 460 invoices, and the entitlement sets of the 184 customers whose subscription is not canceled) and 920 written (the sets are empty):\n%s", code, out)
	}
	b.assertStoredEquals(a)
	if code, v := b.userBilling(user); code != 200 || len(v.Subscriptions) != 1 || len(v.Invoices) != 2 {
		t.Fatalf("after sync: billing %d %+v, want the subscription and two invoices", code, v)
	}
	if n := b.count(`SELECT count(*) FROM stripe_sync_runs WHERE finished_at IS NULL`); n != 0 {
		t.Fatalf("%d unfinished sync runs left behind", n)
	}

	out, code = b.cli(context.Background(), nil, "sync")
	if code != 0 || !strings.Contains(out, "read 1104, wrote 0,") {
		t.Fatalf("second sync: exit %d, want 0 with nothing written:\n%s", code, out)
	}
}

// --dry-run says what would change and writes nothing; --customer syncs one
// customer; --since only what was created since.
func TestSyncDryRunCustomerAndSince(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := seedAccount(b, 12)

	out, code := b.cli(context.Background(), nil, "sync", "--dry-run")
	if code != 0 || strings.Count(out, "would write: ") != 12*5 || !strings.Contains(out, "would write 48") {
		t.Fatalf("dry run: exit %d, want 60 changes announced (12 customers and their mappings, 12 subscriptions, 24 invoices) in 48 objects:\n%s", code, out)
	}
	for _, table := range []string{"stripe_customers", "stripe_subscriptions", "stripe_invoices", "stripe_sync_runs"} {
		if n := b.count(`SELECT count(*) FROM ` + table); n != 0 {
			t.Fatalf("dry run wrote %d rows to %s", n, table)
		}
	}

	var one stripefake.Customer
	for _, c := range a.customers {
		one = c
		break
	}
	out, code = b.cli(context.Background(), nil, "sync", "--customer", one.ID)
	if code != 0 || b.count(`SELECT count(*) FROM stripe_customers`) != 1 || b.count(`SELECT count(*) FROM stripe_subscriptions`) != 1 ||
		b.count(`SELECT count(*) FROM stripe_invoices`) != 2 {
		t.Fatalf("sync --customer: exit %d, want one customer's rows only:\n%s", code, out)
	}

	// The newest three customers were created in the last 13 minutes, the
	// third exactly 13 minutes before the seeding: in or out depending on
	// the second the sync starts. Those well inside are stored, those well
	// before are not (but the one synced above).
	cut := time.Now().Add(-13 * time.Minute)
	out, code = b.cli(context.Background(), nil, "sync", "--since", "13m")
	if code != 0 {
		t.Fatalf("sync --since: exit %d:\n%s", code, out)
	}
	for id, c := range a.customers {
		stored := b.count(`SELECT count(*) FROM stripe_customers WHERE stripe_customer_id = $1`, id) == 1
		switch {
		case c.Created.After(cut.Add(30*time.Second)) && !stored:
			t.Fatalf("sync --since 13m did not store %s, created %s ago", id, time.Since(c.Created).Round(time.Second))
		case c.Created.Before(cut.Add(-30*time.Second)) && stored && id != one.ID:
			t.Fatalf("sync --since 13m stored %s, created %s ago", id, time.Since(c.Created).Round(time.Second))
		}
	}

	for _, cmd := range []string{"sync", "verify", "sweep"} {
		if out, code := b.cli(context.Background(), nil, cmd, "-h"); code != 0 || !strings.HasPrefix(out, "usage: lockstep "+cmd) {
			t.Fatalf("%s -h: exit %d, want 0 and its usage:\n%s", cmd, code, out)
		}
	}
	for _, args := range [][]string{{"sync", "--since", "yesterday"}, {"sync", "--customer", "bob"}, {"sync", "extra"},
		{"sync", "--invoices", "0"}, {"verify", "--customer", "x"}, {"sweep", "--since", "40d"}, {"sweep", "--nope"}} {
		out, code := b.cli(context.Background(), nil, args...)
		if code != 2 || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Fatalf("%v: exit %d, want 2 and one line:\n%s", args, code, out)
		}
	}
}

// An interrupted sync continues where it stopped, and ends equal to Stripe.
func TestSyncResumesAfterInterrupt(t *testing.T) {
	t.Parallel()
	b := setup(t)
	a := seedAccount(b, 250)

	// Interrupt the first run at its fourth list page (the subscriptions'
	// first), as SIGINT would. The cut is an age, which names another
	// moment when the run continues: it continues with its first cut.
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	lists := 0
	b.stripe.SetOnRequest(func(r *http.Request) {
		if !isList(r.URL.Path) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if lists++; lists == 4 {
			cancel()
		}
	})
	out, code := b.cli(ctx, nil, "sync", "--since", "30d")
	b.stripe.SetOnRequest(nil)
	if code != 130 || !strings.Contains(out, "run it again to continue") {
		t.Fatalf("interrupted sync: exit %d, want 130 and a hint:\n%s", code, out)
	}
	phase := b.scalar(`SELECT phase FROM stripe_sync_runs WHERE finished_at IS NULL`)
	if phase != "subscriptions" && phase != "customers" {
		t.Fatalf("the interrupted run stands in %s", phase)
	}
	before := b.stripe.Requests()
	time.Sleep(1100 * time.Millisecond) // "30d" is now a later second
	out, code = b.cli(context.Background(), nil, "sync", "--since", "30d")
	if code != 0 || !strings.Contains(out, "continued an interrupted run") {
		t.Fatalf("second sync: exit %d, want 0 and a resumed run:\n%s", code, out)
	}
	// A fresh full sync reads 1 + 1 + 3 + 3 + 5 pages (products, prices,
	// customers, subscriptions, invoices) and the entitlement sets of the
	// 200 customers whose subscription is not canceled; the resumed one
	// fewer.
	if n := b.stripe.Requests() - before; n >= 213 {
		t.Fatalf("the resumed sync made %d requests, want fewer than a full run's 213", n)
	}
	b.assertStoredEquals(a)
}

// isList reports whether path is one of the list endpoints sync reads.
func isList(path string) bool {
	switch path {
	case "/v1/customers", "/v1/subscriptions", "/v1/invoices", "/v1/events":
		return true
	}
	return false
}
