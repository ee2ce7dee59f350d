package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/internal/stripefake"
)

type ledgerRow struct {
	status    string
	attempts  int
	lastError string
}

func (b *bundle) ledger(eventID string) ledgerRow {
	b.t.Helper()
	var r ledgerRow
	var le *string
	err := b.db.Pool.QueryRow(context.Background(),
		`SELECT status, attempts, last_error FROM stripe_events WHERE event_id = $1`, eventID).Scan(&r.status, &r.attempts, &le)
	if err == pgx.ErrNoRows {
		return ledgerRow{status: "<none>"}
	}
	if err != nil {
		b.t.Fatal(err)
	}
	if le != nil {
		r.lastError = *le
	}
	return r
}

// A transient failure that outlives the retry budget answers 503 and is
// recorded as failed after the rollback; Stripe's redelivery processes it;
// a duplicate of a processed event changes nothing.
func TestLedgerFailedThenRedelivered(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(400*time.Millisecond))
	fx := b.paidCheckout(uniqueUser("ledger"), time.Now().Add(-time.Hour).Truncate(time.Second))
	ev := subEvent(fx, "customer.subscription.created", "active", fx.created)
	id := eventID(t, ev)

	_, release := b.holdLock(fx.customer)
	start := time.Now()
	r := b.postWebhook(ev)
	took := time.Since(start)
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("webhook while the customer is locked: %d %s, want 503", r.code, r.body)
	}
	t.Logf("gave up after %v (lock_timeout 100ms, budget 400ms)", took.Round(time.Millisecond))
	got := b.ledger(id)
	if got.status != "failed" || got.attempts != 1 || !strings.Contains(got.lastError, "55P03") {
		t.Fatalf("ledger after failure = %+v, want failed, 1 attempt, lock timeout error", got)
	}
	if n := b.count(`SELECT count(*) FROM stripe_subscriptions`); n != 0 {
		t.Fatalf("failed event left %d subscription rows", n)
	}
	// Still locked: the redelivery fails again and counts the attempt.
	if r := b.postWebhook(ev); r.code != http.StatusServiceUnavailable {
		t.Fatalf("second delivery while locked: %d", r.code)
	}
	if got := b.ledger(id); got.status != "failed" || got.attempts != 2 {
		t.Fatalf("ledger after second failure = %+v", got)
	}

	release()
	r = b.postWebhook(ev)
	must200(t, "redelivery", r)
	if !strings.Contains(r.body, `"processed"`) {
		t.Fatalf("redelivery answer %s, want processed", r.body)
	}
	if got := b.ledger(id); got.status != "processed" || got.attempts != 3 {
		t.Fatalf("ledger after redelivery = %+v, want processed after 3 attempts", got)
	}
	state := b.snapshot(fx.customer)
	updated := b.scalar(`SELECT updated_at::text FROM stripe_events WHERE event_id = $1`, id)

	r = b.postWebhook(ev)
	must200(t, "duplicate", r)
	if !strings.Contains(r.body, `"duplicate"`) {
		t.Fatalf("duplicate answer %s", r.body)
	}
	if b.snapshot(fx.customer) != state || b.scalar(`SELECT updated_at::text FROM stripe_events WHERE event_id = $1`, id) != updated {
		t.Fatal("a duplicate of a processed event changed something")
	}
	if got := b.ledger(id); got.attempts != 3 {
		t.Fatalf("duplicate counted an attempt: %+v", got)
	}
}

// Events lockstep does not act on answer 200 and are recorded as ignored,
// once.
func TestLedgerIgnoredTypes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ev := event(stripefake.NewID("evt_"), "payment_intent.created", time.Now(), map[string]any{"id": "pi_123", "object": "payment_intent"})
	for i := range 2 {
		r := b.postWebhook(ev)
		must200(t, "ignored type", r)
		want := []string{`"ignored"`, `"duplicate"`}[i]
		if !strings.Contains(r.body, want) {
			t.Fatalf("delivery %d: %s, want %s", i, r.body, want)
		}
	}
	if got := b.ledger(eventID(t, ev)); got.status != "ignored" || got.attempts != 1 {
		t.Fatalf("ledger = %+v, want ignored once", got)
	}
}

// injectFailure makes upserts of stripe_subscriptions fail with sqlstate for
// the first n attempts (a sequence counts them; it is not rolled back).
func (b *bundle) injectFailure(sqlstate string, n int) (attempts func() int) {
	b.t.Helper()
	_, err := b.db.Pool.Exec(context.Background(), fmt.Sprintf(`
CREATE SEQUENCE inject_seq;
CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('inject_seq') <= %d THEN
    RAISE EXCEPTION 'injected failure' USING ERRCODE = '%s';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER inject_failure BEFORE INSERT ON stripe_subscriptions
  FOR EACH ROW EXECUTE FUNCTION inject_failure();`, n, sqlstate))
	if err != nil {
		b.t.Fatal(err)
	}
	return func() int {
		return b.count(`SELECT last_value FROM inject_seq`)
	}
}

// Transient errors are retried within the budget, invisibly to the caller.
func TestTransientErrorsAreRetried(t *testing.T) {
	t.Parallel()
	for _, state := range []string{"40001", "40P01", "55P03", "57014"} {
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			attempts := b.injectFailure(state, 2)
			fx := b.paidCheckout(uniqueUser("retry"), time.Now().Add(-time.Hour).Truncate(time.Second))
			ev := subEvent(fx, "customer.subscription.created", "active", fx.created)
			r := b.postWebhook(ev)
			must200(t, "webhook with 2 transient failures", r)
			if got := attempts(); got != 3 {
				t.Fatalf("attempts = %d, want 3 (2 failures, 1 success)", got)
			}
			if got := b.ledger(eventID(t, ev)); got.status != "processed" || got.attempts != 1 {
				t.Fatalf("ledger = %+v, want processed on the first delivery", got)
			}
			// The success call retries the same way.
			if _, err := b.db.Pool.Exec(context.Background(), `ALTER SEQUENCE inject_seq RESTART WITH 1`); err != nil {
				t.Fatal(err)
			}
			must200(t, "success with transient failures", b.checkout(fx.session, fx.user))
			if got := attempts(); got != 3 {
				t.Fatalf("success call attempts = %d, want 3", got)
			}
		})
	}
}

// Permanent errors are never retried: one attempt, a clear status, and the
// event is recorded as failed for replay after a fix.
func TestPermanentErrorsAreNotRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	attempts := b.injectFailure("23514", 1000)
	fx := b.paidCheckout(uniqueUser("perm"), time.Now().Add(-time.Hour).Truncate(time.Second))
	ev := subEvent(fx, "customer.subscription.created", "active", fx.created)
	r := b.postWebhook(ev)
	if r.code != http.StatusUnprocessableEntity {
		t.Fatalf("webhook with a permanent error: %d %s, want 422", r.code, r.body)
	}
	if got := attempts(); got != 1 {
		t.Fatalf("attempts = %d, want 1: a permanent error was retried", got)
	}
	if got := b.ledger(eventID(t, ev)); got.status != "failed" || !strings.Contains(got.lastError, "23514") {
		t.Fatalf("ledger = %+v, want failed with the check violation", got)
	}
	r = b.checkout(fx.session, fx.user)
	if r.code != http.StatusInternalServerError {
		t.Fatalf("success call with a permanent error: %d %s, want 500", r.code, r.body)
	}
	if got := attempts(); got != 2 {
		t.Fatalf("attempts = %d, want 2: the success call retried a permanent error", got)
	}
	if n := b.count(`SELECT count(*) FROM stripe_customers WHERE user_id IS NOT NULL`); n != 0 {
		t.Fatal("the failed success call left a mapping behind")
	}
}
