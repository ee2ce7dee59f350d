package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A failed event is replayed through POST /admin/events/{id}/replay and
// processed once; replaying a processed event changes nothing.
func TestReplayAdminEndpoints(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	now := time.Now().Add(-time.Minute).Truncate(time.Second)
	fx := b.paidCheckout(uniqueUser("ops-replay"), now)
	must200(t, "session completed", b.postWebhook(sessionCompleted(fx, now)))
	ev := subEvent(fx, "customer.subscription.created", "active", now)
	id := eventID(t, ev)
	b.failEvent(fx.customer, ev)

	// The ledger lists it.
	if r := b.api(http.MethodGet, "/admin/events?status=failed", "", nil); r.code != http.StatusUnauthorized {
		t.Errorf("events without token: %d, want 401", r.code)
	}
	if r := b.api(http.MethodGet, "/admin/events?status=failed", "wrong-admin-token-000", nil); r.code != http.StatusUnauthorized {
		t.Errorf("events with a wrong token: %d, want 401", r.code)
	}
	if r := b.api(http.MethodGet, "/admin/events?status=exploded", adminToken, nil); r.code != http.StatusBadRequest {
		t.Errorf("events?status=exploded: %d, want 400", r.code)
	}
	r := b.api(http.MethodGet, "/admin/events?status=failed", adminToken, nil)
	must200(t, "events?status=failed", r)
	var listed struct {
		Events []struct {
			EventID    string `json:"event_id"`
			Status     string `json:"status"`
			Attempts   int    `json:"attempts"`
			LastError  string `json:"last_error"`
			CustomerID string `json:"stripe_customer_id"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(r.body), &listed); err != nil {
		t.Fatalf("events body: %v: %s", err, r.body)
	}
	if len(listed.Events) != 1 || listed.Events[0].EventID != id || listed.Events[0].Status != "failed" ||
		listed.Events[0].Attempts != 1 || listed.Events[0].LastError == "" || listed.Events[0].CustomerID != fx.customer {
		t.Fatalf("failed events = %+v, want %s failed once with its error", listed.Events, id)
	}
	if code, v := b.userBilling(fx.user); code != http.StatusOK || len(v.Subscriptions) != 0 {
		t.Fatalf("before replay: %d %+v, want no subscription", code, v)
	}

	// Replay it.
	if r := b.api(http.MethodPost, "/admin/events/"+id+"/replay", "", nil); r.code != http.StatusUnauthorized {
		t.Errorf("replay without token: %d, want 401", r.code)
	}
	r = b.api(http.MethodPost, "/admin/events/"+id+"/replay", adminToken, nil)
	must200(t, "replay", r)
	if got := r.json(t); got["outcome"] != "processed" || got["event_id"] != id {
		t.Fatalf("replay = %v, want processed", got)
	}
	if st := b.scalar(`SELECT status || ' ' || attempts FROM stripe_events WHERE event_id = $1`, id); st != "processed 2" {
		t.Fatalf("ledger after replay: %s, want processed 2", st)
	}
	code, v := b.userBilling(fx.user)
	if code != http.StatusOK || len(v.Subscriptions) != 1 || v.Subscriptions[0].ID != fx.subscription || v.Subscriptions[0].Status != "active" {
		t.Fatalf("after replay: %d %+v, want %s active", code, v, fx.subscription)
	}

	// Again: a processed event changes nothing.
	const rowQ = `SELECT row_to_json(e)::text FROM stripe_events e WHERE event_id = $1`
	const subQ = `SELECT row_to_json(s)::text FROM stripe_subscriptions s WHERE stripe_subscription_id = $1`
	evRow, subRow := b.scalar(rowQ, id), b.scalar(subQ, fx.subscription)
	r = b.api(http.MethodPost, "/admin/events/"+id+"/replay", adminToken, nil)
	must200(t, "second replay", r)
	if got := r.json(t)["outcome"]; got != "duplicate" {
		t.Fatalf("second replay: %v, want duplicate", got)
	}
	if b.scalar(rowQ, id) != evRow || b.scalar(subQ, fx.subscription) != subRow {
		t.Fatalf("replaying a processed event changed its rows")
	}
	if r := b.api(http.MethodGet, "/admin/events?status=failed", adminToken, nil); !strings.Contains(r.body, `"events":[]`) {
		t.Fatalf("failed events after replay: %s", r.body)
	}

	// Unknown and malformed ids.
	if r := b.api(http.MethodPost, "/admin/events/evt_nosuchevent123/replay", adminToken, nil); r.code != http.StatusNotFound {
		t.Errorf("replay of an unknown event: %d, want 404: %s", r.code, r.body)
	}
	if r := b.api(http.MethodPost, "/admin/events/not-an-event/replay", adminToken, nil); r.code != http.StatusBadRequest {
		t.Errorf("replay of a malformed id: %d, want 400", r.code)
	}
	m := scrapeMetrics(t, b)
	for outcome, want := range map[string]float64{"processed": 1, "duplicate": 1, "not_found": 1} {
		if got := m.val("lockstep_replay_events_total", "outcome", outcome); got != want {
			t.Errorf("lockstep_replay_events_total{outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
}

// `lockstep replay EVENT_ID` and `lockstep replay --failed` process failed
// events once, oldest first; an unknown id is one clear error line.
func TestReplayCommand(t *testing.T) {
	t.Parallel()
	b := setup(t, withLockTimeout(100*time.Millisecond), withRetryBudget(300*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	now := time.Now().Add(-time.Hour).Truncate(time.Second)
	var ids []string
	var fxs []fixture
	for i := range 3 {
		fx := b.paidCheckout(uniqueUser(fmt.Sprintf("ops-replay-cli-%d", i)), now)
		must200(t, "session completed", b.postWebhook(sessionCompleted(fx, now)))
		// Stripe times: the second event is the oldest.
		ev := subEvent(fx, "customer.subscription.created", "active", now.Add(time.Duration([]int{2, 1, 3}[i])*time.Minute))
		b.failEvent(fx.customer, ev)
		ids = append(ids, eventID(t, ev))
		fxs = append(fxs, fx)
	}
	if n := b.count(`SELECT count(*) FROM stripe_events WHERE status = 'failed'`); n != 3 {
		t.Fatalf("failed events = %d, want 3", n)
	}

	out, err := b.command(ctx, "replay", ids[0])
	if err != nil {
		t.Fatalf("replay %s: %v\n%s", ids[0], err, out)
	}
	if want := ids[0] + "\tprocessed\nreplayed 1 events, 0 failed\n"; out != want {
		t.Fatalf("replay output %q, want %q", out, want)
	}
	if st := b.scalar(`SELECT status || ' ' || attempts FROM stripe_events WHERE event_id = $1`, ids[0]); st != "processed 2" {
		t.Fatalf("ledger after replay: %s", st)
	}

	out, err = b.command(ctx, "replay", "--failed")
	if err != nil {
		t.Fatalf("replay --failed: %v\n%s", err, out)
	}
	if want := ids[1] + "\tprocessed\n" + ids[2] + "\tprocessed\nreplayed 2 events, 0 failed\n"; out != want {
		t.Fatalf("replay --failed output %q, want %q (oldest Stripe time first)", out, want)
	}
	for _, fx := range fxs {
		if code, v := b.userBilling(fx.user); code != http.StatusOK || len(v.Subscriptions) != 1 || v.Subscriptions[0].Status != "active" {
			t.Fatalf("%s after replay: %d %+v", fx.user, code, v)
		}
	}
	// Once more: nothing failed is left, and a processed event is a duplicate.
	if out, err := b.command(ctx, "replay", "--failed"); err != nil || out != "replayed 0 events, 0 failed\n" {
		t.Fatalf("second replay --failed: %v %q", err, out)
	}
	before := b.scalar(`SELECT string_agg(row_to_json(e)::text, ',' ORDER BY event_id) FROM stripe_events e`)
	if out, err := b.command(ctx, "replay", ids[1]); err != nil || out != ids[1]+"\tduplicate\nreplayed 1 events, 0 failed\n" {
		t.Fatalf("replay of a processed event: %v %q", err, out)
	}
	if after := b.scalar(`SELECT string_agg(row_to_json(e)::text, ',' ORDER BY event_id) FROM stripe_events e`); after != before {
		t.Fatalf("replaying a processed event changed the ledger")
	}

	_, err = b.command(ctx, "replay", "evt_nosuchevent123")
	if err == nil || err.Error() != "replay evt_nosuchevent123: event not found" {
		t.Fatalf("replay of an unknown event: %v, want one line naming it", err)
	}
}
