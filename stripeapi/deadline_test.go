package stripeapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// hangingStripe answers nothing until the client goes away, counting the
// requests it got.
func hangingStripe(t *testing.T) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// Under a request deadline a hanging Stripe ends every kind of call with
// ErrTimeout (also ErrUnavailable): a read by id, and a list page.
func TestDeadlineEndsCallsWithErrTimeout(t *testing.T) {
	t.Parallel()
	srv, _ := hangingStripe(t)
	c := NewClient(srv.URL, "sk_test_x", Options{Budget: NewBudget(20), Share: Live})
	ctx := WithDeadline(context.Background(), 200*time.Millisecond)
	_, _, err := c.CheckoutSession(ctx, "cs_test_1")
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("read by id: %v, want ErrTimeout and ErrUnavailable", err)
	}
	ctx = WithDeadline(context.Background(), 200*time.Millisecond)
	yielded := 0
	for _, err := range c.Customers(ctx, ListParams{}) {
		yielded++
		if !errors.Is(err, ErrTimeout) {
			t.Errorf("list: %v, want ErrTimeout", err)
		}
		break
	}
	if yielded == 0 {
		t.Error("the list past its deadline yielded nothing, want ErrTimeout")
	}
}

// A caller that goes away gets its context's error, not ErrTimeout; and no
// deadline means none.
func TestDeadlineKeepsCancellationApart(t *testing.T) {
	t.Parallel()
	srv, _ := hangingStripe(t)
	c := NewClient(srv.URL, "sk_test_x", Options{})
	ctx, cancel := context.WithTimeout(WithDeadline(context.Background(), time.Hour), 100*time.Millisecond)
	defer cancel()
	if _, _, err := c.Customer(ctx, "cus_1"); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTimeout) {
		t.Errorf("caller's own deadline: %v, want context.DeadlineExceeded", err)
	}
	if got := WithDeadline(context.Background(), 0); got != context.Background() {
		t.Error("WithDeadline(0) changed the context")
	}
}

// Past its deadline a request sends nothing more, and a later, longer
// deadline does not extend an earlier one.
func TestDeadlinePassedSendsNothing(t *testing.T) {
	t.Parallel()
	srv, n := hangingStripe(t)
	c := NewClient(srv.URL, "sk_test_x", Options{})
	ctx := WithDeadline(context.Background(), time.Nanosecond)
	ctx = WithDeadline(ctx, time.Hour)
	time.Sleep(time.Millisecond)
	if _, _, err := c.Invoice(ctx, "in_1"); !errors.Is(err, ErrTimeout) {
		t.Errorf("%v, want ErrTimeout", err)
	}
	if got := n.Load(); got != 0 {
		t.Errorf("Stripe got %d requests after the deadline", got)
	}
}
