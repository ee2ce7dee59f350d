package billing

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/lockstep/lockstep/stripeapi"
)

// settleStripe answers every subscription read with a new status, dated
// the same second.
type settleStripe struct{ reads int }

func (f *settleStripe) CheckoutSession(context.Context, string) (*stripeapi.CheckoutSession, time.Time, error) {
	return nil, time.Time{}, stripeapi.ErrNotFound
}

func (f *settleStripe) Subscription(_ context.Context, id string) (*stripeapi.Subscription, time.Time, error) {
	f.reads++
	return &stripeapi.Subscription{ID: id, CustomerID: "cus_1", Status: "active"}, time.Unix(1_700_000_000, 0), nil
}

func (f *settleStripe) Price(context.Context, string) (*stripeapi.Price, time.Time, error) {
	return nil, time.Time{}, stripeapi.ErrNotFound
}

func (f *settleStripe) Product(context.Context, string) (*stripeapi.Product, time.Time, error) {
	return nil, time.Time{}, stripeapi.ErrNotFound
}

func (f *settleStripe) ActiveEntitlements(context.Context, string) ([]stripeapi.Entitlement, time.Time, error) {
	return nil, time.Time{}, stripeapi.ErrNotFound
}

// A tie is settled by reading Stripe and writing again, with what it read
// replacing the row version that tied; a write that keeps tying stops after
// maxSettles reads with ErrUnsettled, which handlers answer with 503.
func TestSettleTies(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		ties      int // how many writes end in a tie
		wantReads int
		wantErr   error
	}{
		{"no tie", 0, 0, nil},
		{"one tie, settled", 1, 1, nil},
		{"ties until the last read", maxSettles, maxSettles, nil},
		{"ties every time", maxSettles + 1, maxSettles, ErrUnsettled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &settleStripe{}
			s := &Service{stripe: api, log: slog.New(slog.DiscardHandler)}
			writes := 0
			var settled []string
			err := s.settleTies(context.Background(), func(fresh *snapshot) error {
				writes++
				if fresh != nil {
					settled = append(settled, fresh.settles)
				}
				if writes <= tc.ties {
					return &tieError{subscriptionID: "sub_1", storedVersion: "v" + string(rune('0'+writes))}
				}
				return nil
			})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if api.reads != tc.wantReads {
				t.Fatalf("%d reads from Stripe, want %d", api.reads, tc.wantReads)
			}
			for i, v := range settled {
				if want := "v" + string(rune('1'+i)); v != want {
					t.Fatalf("settling write %d replaces row version %q, want %q (the one that tied just before)", i+1, v, want)
				}
			}
		})
	}
}
