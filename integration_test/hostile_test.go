package integration_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// rowsWritten counts every row lockstep writes, to show a rejected request
// wrote nothing.
func (b *bundle) rowsWritten() int {
	b.t.Helper()
	return b.count(`SELECT (SELECT count(*) FROM stripe_events) + (SELECT count(*) FROM stripe_customers)
 + (SELECT count(*) FROM stripe_subscriptions) + (SELECT count(*) FROM stripe_invoices)`)
}

// postSigned posts body signed with the primary secret, with the body
// streamed (chunked) when chunked is set.
func (b *bundle) postSigned(body []byte, chunked bool) response {
	b.t.Helper()
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // hides the length: Transfer-Encoding: chunked
	}
	req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/webhooks/stripe", r)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Stripe-Signature", stripefake.SignatureHeader(body, secretNew, time.Now()))
	return b.do(req)
}

// padTo pads a JSON body with trailing spaces to n bytes.
func padTo(body []byte, n int) []byte {
	return append(body, bytes.Repeat([]byte(" "), n-len(body))...)
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostileEvent is an event envelope around a raw data.object.
func hostileEvent(id, typ, object string) []byte {
	return []byte(`{"id":"` + id + `","object":"event","api_version":"2023-10-16","created":1700000000,"type":"` + typ +
		`","data":{"object":` + object + `}}`)
}

// Hostile webhooks, correctly signed (Stripe's account, or a leaked secret):
// oversized bodies answer 413, malformed ones 400, and both write nothing;
// valid oddities (a session without a customer, SQL metacharacters in a
// user id) answer 200. Nothing answers 5xx: none of this can ever succeed
// by retrying.
func TestHostileWebhooks(t *testing.T) {
	t.Parallel()
	b := setup(t, withMaxConns(4))
	long := strings.Repeat("a", 300)
	sub := func(customer string) string {
		return `{"id":"sub_h1","object":"subscription","customer":` + customer + `,"status":"active","items":{"data":[]}}`
	}
	okSub := string(mustJSON(t, stripefake.SubscriptionJSON(stripefake.Subscription{ID: "sub_hostile_ok", Customer: "cus_hostile_ok",
		Status: "active", PriceID: "price_1", Created: time.Unix(1700000000, 0)}, stripefake.DefaultAPIVersion)))
	session := func(customer, user string) string {
		return `{"id":"cs_h1","object":"checkout.session","customer":` + customer + `,"client_reference_id":` + user +
			`,"status":"complete","payment_status":"paid","mode":"subscription","metadata":{}}`
	}
	deep := strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000)
	sqlUser := `"x'); DELETE FROM stripe_customers; --\"; DROP TABLE stripe_events; /* ` + "`$1`" + ` */"`

	cases := []struct {
		name    string
		body    []byte
		chunked bool
		want    int
		status  string // the ledger status a 200 must leave ("" when nothing is written)
	}{
		{name: "10 MB body", body: bytes.Repeat([]byte("x"), 10<<20), want: 413},
		{name: "10 MB body, chunked", body: bytes.Repeat([]byte("x"), 10<<20), chunked: true, want: 413},
		{name: "10 MB valid-looking event", body: hostileEvent("evt_big", "customer.updated",
			`{"id":"cus_big","object":"customer","description":"`+strings.Repeat("z", 10<<20)+`"}`), want: 413},
		{name: "exactly 1 MiB (valid)", body: padTo(hostileEvent("evt_onemib", "customer.subscription.updated", okSub), 1<<20), want: 200, status: "processed"},
		{name: "1 MiB + 1 byte", body: padTo(hostileEvent("evt_overmib", "customer.subscription.updated", okSub), 1<<20+1), want: 413},
		{name: "empty body", body: nil, want: 400},
		{name: "JSON null", body: []byte(`null`), want: 400},
		{name: "truncated JSON", body: hostileEvent("evt_trunc", "customer.subscription.updated", okSub)[:120], want: 400},
		{name: "not an event", body: []byte(`{"id":"evt_x","object":"charge","type":"charge.succeeded","created":1700000000,"data":{"object":{}}}`), want: 400},
		{name: "created is a string", body: []byte(`{"id":"evt_x","object":"event","type":"customer.created","created":"yesterday","data":{"object":{}}}`), want: 400},
		{name: "created negative", body: []byte(`{"id":"evt_x","object":"event","type":"customer.created","created":-1,"data":{"object":{}}}`), want: 400},
		{name: "created in year 5138", body: []byte(`{"id":"evt_x","object":"event","type":"customer.created","created":99999999999,"data":{"object":{}}}`), want: 400},
		{name: "data.object is an array", body: hostileEvent("evt_arr", "customer.created", `[1,2]`), want: 400},
		{name: "customer is a number", body: hostileEvent("evt_num", "customer.subscription.updated", sub(`42`)), want: 400},
		{name: "amount_due 1e300", body: hostileEvent("evt_amt", "invoice.paid",
			`{"id":"in_1","object":"invoice","customer":"cus_1","amount_due":1e300}`), want: 400},
		{name: "null customer on a subscription", body: hostileEvent("evt_nullsub", "customer.subscription.updated", sub(`null`)), want: 400},
		{name: "missing customer on an invoice", body: hostileEvent("evt_noinv", "invoice.paid", `{"id":"in_1","object":"invoice","status":"paid"}`), want: 400},
		{name: "null customer on a paid session (valid: a payment without a customer)", body: hostileEvent("evt_nullsess",
			"checkout.session.completed", session(`null`, `null`)), want: 200, status: "ignored"},
		{name: "invalid UTF-8", body: []byte("{\"id\":\"evt_utf\",\"object\":\"event\",\"type\":\"customer.created\",\"created\":1700000000,\"data\":{\"object\":{\"id\":\"cus_\xff\xfe\",\"object\":\"customer\"}}}"), want: 400},
		{name: `\u0000 escape`, body: hostileEvent("evt_nul", "customer.created", `{"id":"cus_nul","object":"customer","description":"a\u0000b"}`), want: 400},
		{name: "raw NUL byte", body: hostileEvent("evt_nulraw", "customer.created", "{\"id\":\"cus_nul\",\"object\":\"customer\",\"description\":\"a\x00b\"}"), want: 400},
		{name: "control character in user id", body: hostileEvent("evt_ctl", "checkout.session.completed", session(`"cus_ctl"`, `"user\u0007x"`)), want: 400},
		{name: "300-character event id", body: hostileEvent("evt_"+long, "customer.created", `{"id":"cus_long","object":"customer"}`), want: 400},
		{name: "300-character customer id", body: hostileEvent("evt_longcus", "customer.created", `{"id":"cus_`+long+`","object":"customer"}`), want: 400},
		{name: "300-character subscription id", body: hostileEvent("evt_longsub", "customer.subscription.updated",
			`{"id":"sub_`+long+`","object":"subscription","customer":"cus_1","status":"active"}`), want: 400},
		{name: "300-character user id", body: hostileEvent("evt_longuser", "checkout.session.completed", session(`"cus_lu"`, `"`+long+`"`)), want: 400},
		{name: "300-character api_version", body: []byte(`{"id":"evt_longv","object":"event","api_version":"` + long + `","type":"customer.created","created":1700000000,"data":{"object":{"id":"cus_1","object":"customer"}}}`), want: 400},
		{name: "SQL metacharacters in the event type", body: hostileEvent("evt_sqlt", "customer.created'; DROP TABLE stripe_events; --", `{}`), want: 400},
		{name: "SQL metacharacters in the customer id", body: hostileEvent("evt_sqlc", "customer.created", `{"id":"cus_1' OR '1'='1","object":"customer"}`), want: 400},
		{name: "SQL metacharacters in the user id (valid: stored verbatim)", body: hostileEvent("evt_sqluser",
			"checkout.session.completed", session(`"cus_sqluser"`, sqlUser)), want: 200, status: "processed"},
		{name: "unicode user id (valid)", body: hostileEvent("evt_uniuser", "checkout.session.completed",
			session(`"cus_uniuser"`, `"ユーザー\u202eevil 🙂"`)), want: 200, status: "processed"},
		{name: "unknown event type (valid: ignored)", body: hostileEvent("evt_unknown", "radar.early_fraud_warning.created", `{"id":"issfr_1"}`), want: 200, status: "ignored"},
		{name: "nesting 20000 deep", body: hostileEvent("evt_deep", "customer.created", `{"id":"cus_deep","object":"customer","metadata":`+deep+`}`), want: 400},
		// jsonb cannot store these, though Go's JSON parser accepts them.
		{name: `lone surrogate escape \ud800`, body: hostileEvent("evt_surrogate", "customer.updated", `{"id":"cus_sur","object":"customer","description":"\ud800"}`), want: 400},
		{name: "number 1e1000000 in an unread field", body: hostileEvent("evt_exp", "customer.updated", `{"id":"cus_exp","object":"customer","balance":1e1000000}`), want: 400},
	}
	for _, c := range cases {
		before := b.rowsWritten()
		r := b.postSigned(c.body, c.chunked)
		after := b.rowsWritten()
		switch {
		case r.code >= 500:
			t.Errorf("%s: %d %.200s: 5xx for input that can never succeed", c.name, r.code, r.body)
		case r.code != c.want:
			t.Errorf("%s: %d %.200s, want %d", c.name, r.code, r.body, c.want)
		case c.status == "" && after != before:
			t.Errorf("%s: rejected with %d but wrote %d rows", c.name, r.code, after-before)
		case c.status != "":
			id := eventID(t, c.body)
			if got := b.scalar(`SELECT status FROM stripe_events WHERE event_id = $1`, id); got != c.status {
				t.Errorf("%s: ledger status %s, want %s", c.name, got, c.status)
			}
		}
		t.Logf("%-70s %d (%d bytes)", c.name, r.code, len(c.body))
	}

	// The SQL stayed data: the user id is stored verbatim, the tables stand.
	if got := b.scalar(`SELECT user_id FROM stripe_customers WHERE stripe_customer_id = 'cus_sqluser'`); `"`+got+`"` != strings.ReplaceAll(sqlUser, `\"`, `"`) {
		t.Errorf("user id stored as %q", got)
	}

	// A redelivered id with a different body changes nothing: the ledger
	// answers duplicate and keeps the first payload.
	first := hostileEvent("evt_samehostile", "customer.subscription.updated", okSub)
	must200(t, "first delivery", b.postSigned(first, false))
	other := hostileEvent("evt_samehostile", "customer.subscription.updated", strings.Replace(okSub, `"active"`, `"canceled"`, 1))
	r := b.postSigned(other, false)
	if r.code != http.StatusOK || !strings.Contains(r.body, `"duplicate"`) {
		t.Errorf("same id, other body: %d %s, want 200 duplicate", r.code, r.body)
	}
	if st := b.scalar(`SELECT status FROM stripe_subscriptions WHERE stripe_subscription_id = 'sub_hostile_ok'`); st != "active" {
		t.Errorf("same id, other body: subscription became %s", st)
	}
}
