package integration_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/internal/stripefake"
	"github.com/lockstep/lockstep/stripeapi"
)

// BenchmarkSync backfills an account of 10,000 objects (2,500 customers,
// 2,500 subscriptions, 5,000 invoices) and the customers' 2,500 (empty)
// entitlement sets, one Stripe read each, from the fake Stripe into a fresh
// database, and reports objects per second: at the default budget of 20
// Stripe calls per second (sync draws on its bulk share) and with no
// budget, where PostgreSQL and lockstep set the pace.
//
//	TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//	  go test -run '^$' -bench BenchmarkSync -benchtime 1x ./integration_test/
func BenchmarkSync(b *testing.B) {
	for _, rps := range []int{20, 0} {
		name := fmt.Sprintf("budget=%d", rps)
		if rps == 0 {
			name = "no_budget"
		}
		b.Run(name, func(b *testing.B) {
			var objects int64
			var elapsed time.Duration
			for range b.N {
				b.StopTimer()
				bd := setup(b, withMaxConns(12))
				seedBench(bd, 2500)
				opts := stripeapi.Options{}
				if rps > 0 {
					opts = stripeapi.Options{Budget: stripeapi.NewBudget(rps), Share: stripeapi.Bulk}
				}
				api := stripeapi.NewClient(bd.stripe.URL, stripeKey, opts)
				bulk := bd.app.Billing.Bulk(api)
				b.StartTimer()
				start := time.Now()
				p, err := bulk.Sync(context.Background(), billing.SyncOptions{InvoicesPerCustomer: 2})
				elapsed += time.Since(start)
				if err != nil {
					b.Fatalf("sync: %v", err)
				}
				if p.Read != 12500 || p.Written != 10000 {
					b.Fatalf("sync read %d and wrote %d, want 12,500 (with the entitlement sets) and 10,000", p.Read, p.Written)
				}
				objects += p.Read
			}
			b.ReportMetric(float64(objects)/elapsed.Seconds(), "objects/s")
		})
	}
}

// seedBench puts n customers into the fake Stripe, each with a
// subscription and two invoices.
func seedBench(b *bundle, n int) {
	base := b.stripe.Now().Add(-48 * time.Hour).Truncate(time.Second)
	for i := range n {
		created := base.Add(time.Duration(i) * time.Second)
		cus := fmt.Sprintf("cus_bench%05d", i)
		sub := fmt.Sprintf("sub_bench%05d", i)
		b.stripe.PutCustomer(stripefake.Customer{ID: cus, Created: created,
			Metadata: map[string]string{"user_id": fmt.Sprintf("bench-user-%05d", i)}})
		b.stripe.PutSubscription(stripefake.Subscription{ID: sub, Customer: cus, Status: "active", Created: created})
		for j := range 2 {
			b.stripe.PutInvoice(stripefake.Invoice{ID: fmt.Sprintf("in_bench%05d_%d", i, j), Customer: cus, Subscription: sub,
				Status: "paid", Currency: "usd", AmountDue: 900, AmountPaid: 900, Created: created.Add(time.Duration(j) * time.Second)})
		}
	}
}
