package stripeapi_test

import (
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/stripeapi"
)

// benchEvent is a customer.subscription.updated event as Stripe sends it
// (indented, about 3.3 KB), the event the load command sends.
func benchEvent(b *testing.B) []byte {
	b.Helper()
	created := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	sub := stripefake.SubscriptionJSON(stripefake.Subscription{ID: "sub_bench1", Customer: "cus_bench1", Status: "active",
		PriceID: "price_bench", Created: created}, stripefake.DefaultAPIVersion)
	return stripefake.EventJSON("evt_bench1", "customer.subscription.updated", created, "", sub)
}

const (
	benchSecret    = "whsec_bench_primary_0123456789"
	benchRotatedIn = "whsec_bench_rotated_in_987654"
)

// BenchmarkVerify checks a Stripe-Signature header: one configured secret,
// and two where the event is signed with the second (a rotation in progress,
// the worst case: the first secret's HMAC is computed and fails first).
func BenchmarkVerify(b *testing.B) {
	payload := benchEvent(b)
	for _, bc := range []struct {
		name    string
		secrets []string
		signer  string
	}{
		{"1secret", []string{benchSecret}, benchSecret},
		{"2secrets_second_matches", []string{benchRotatedIn, benchSecret}, benchSecret},
	} {
		b.Run(bc.name, func(b *testing.B) {
			v := stripeapi.NewVerifier(bc.secrets)
			header := stripefake.SignatureHeader(payload, bc.signer, time.Now())
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(payload, header); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseEvent parses the envelope (data.object is kept raw).
func BenchmarkParseEvent(b *testing.B) {
	payload := benchEvent(b)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := stripeapi.ParseEvent(payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseSubscription parses the event's data.object.
func BenchmarkParseSubscription(b *testing.B) {
	ev, err := stripeapi.ParseEvent(benchEvent(b))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(ev.Object)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := stripeapi.ParseSubscription(ev.Object); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseObjects parses the other objects lockstep reads, as
// Stripe renders them in webhooks.
func BenchmarkParseObjects(b *testing.B) {
	created := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	sub := stripefake.Subscription{ID: "sub_bench1", Customer: "cus_bench1", Status: "active", PriceID: "price_bench", Created: created}
	for _, bc := range []struct {
		name  string
		obj   map[string]any
		parse func([]byte) error
	}{
		{"checkout_session", stripefake.SessionJSON(stripefake.Session{ID: "cs_bench1", Customer: "cus_bench1", Subscription: "sub_bench1",
			ClientReferenceID: "user-1", Status: "complete", PaymentStatus: "paid", Created: created}, nil, ""),
			func(b []byte) error { _, err := stripeapi.ParseCheckoutSession(b); return err }},
		{"checkout_session_expanded", stripefake.SessionJSON(stripefake.Session{ID: "cs_bench1", Customer: "cus_bench1", Subscription: "sub_bench1",
			ClientReferenceID: "user-1", Status: "complete", PaymentStatus: "paid", Created: created}, &sub, ""),
			func(b []byte) error { _, err := stripeapi.ParseCheckoutSession(b); return err }},
		{"customer", stripefake.CustomerJSON(stripefake.Customer{ID: "cus_bench1", Email: "a@example.com",
			Metadata: map[string]string{"user_id": "user-1"}, Created: created}),
			func(b []byte) error { _, err := stripeapi.ParseCustomer(b); return err }},
		{"invoice_basil", stripefake.InvoiceJSON(stripefake.Invoice{ID: "in_bench1", Customer: "cus_bench1", Subscription: "sub_bench1",
			Status: "paid", AmountDue: 1500, AmountPaid: 1500, Created: created}, stripefake.BasilAPIVersion),
			func(b []byte) error { _, err := stripeapi.ParseInvoice(b); return err }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ev, err := stripeapi.ParseEvent(stripefake.EventJSON("evt_bench1", "x.y", created, "", bc.obj))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(ev.Object)))
			b.ReportAllocs()
			for b.Loop() {
				if err := bc.parse(ev.Object); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
