package stripefake

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// Above the set rate the fake answers Stripe's 429 rate_limit, which
// stripe-go does not retry, and counts it.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	api := newClient(s)
	const rps, sent = 3, 10
	s.SetRateLimit(rps)
	start := time.Now()
	var ok, limited int
	for range sent {
		_, err := api.Customers.Get("cus_A", nil)
		var se *stripe.Error
		switch {
		case err == nil:
			ok++
		case errors.As(err, &se) && se.HTTPStatusCode == http.StatusTooManyRequests:
			limited++
			if se.Code != stripe.ErrorCodeRateLimit || se.Type != stripe.ErrorTypeInvalidRequest ||
				se.Msg != rateLimited.Message || se.DocURL != rateLimited.DocURL {
				t.Errorf("429 = %+v", se)
			}
		default:
			t.Fatalf("err = %v", err)
		}
	}
	elapsed := time.Since(start)
	if most := rps * (1 + int(elapsed/time.Second)); ok < rps || ok > most {
		t.Errorf("%d admitted in %v, want %d to %d", ok, elapsed, rps, most)
	}
	if s.Throttled() != limited || s.Requests() != sent {
		t.Errorf("Throttled %d, Requests %d; want %d, %d", s.Throttled(), s.Requests(), limited, sent)
	}

	res := get(t, s, "/v1/customers/cus_A")
	_ = res.Body.Close()
	if res.StatusCode == http.StatusTooManyRequests && res.Header.Get("Retry-After") != "" {
		t.Errorf("Retry-After %q: Stripe sends none", res.Header.Get("Retry-After"))
	}

	// A second later the window has room again; 0 turns the limit off.
	time.Sleep(time.Second)
	if _, err := api.Customers.Get("cus_A", nil); err != nil {
		t.Errorf("after a second: %v", err)
	}
	s.SetRateLimit(0)
	for range sent {
		if _, err := api.Customers.Get("cus_A", nil); err != nil {
			t.Fatalf("limit off: %v", err)
		}
	}
}

func TestLimiterWindow(t *testing.T) {
	t.Parallel()
	l := limiter{rps: 2}
	at := time.Unix(1000, 0)
	for _, tc := range []struct {
		after time.Duration
		want  bool
	}{
		{0, true}, {100 * time.Millisecond, true}, {200 * time.Millisecond, false},
		{999 * time.Millisecond, false}, {time.Second, true}, {1099 * time.Millisecond, false},
		{1100 * time.Millisecond, true}, {1500 * time.Millisecond, false}, {3 * time.Second, true},
	} {
		if got := l.admit(at.Add(tc.after)); got != tc.want {
			t.Errorf("at +%v: admit %v, want %v", tc.after, got, tc.want)
		}
	}
	off := limiter{}
	for range 100 {
		if !off.admit(at) {
			t.Fatal("rps 0 refused a request")
		}
	}
}

// FailNext(n, 429) answers the rate limiter's body; other statuses keep the
// api_error body.
func TestFailNext429(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	s.FailNext(2, 429)
	for range 2 {
		status, e := getError(t, s, "/v1/customers/cus_A")
		if status != 429 || e.Code != stripe.ErrorCodeRateLimit || e.Type != stripe.ErrorTypeInvalidRequest || e.Msg != rateLimited.Message {
			t.Errorf("FailNext 429: %d %+v", status, e)
		}
	}
	if s.Throttled() != 2 {
		t.Errorf("Throttled = %d, want 2", s.Throttled())
	}
	s.FailNext(1, 503)
	if status, e := getError(t, s, "/v1/customers/cus_A"); status != 503 || e.Type != stripe.ErrorTypeAPI || e.Code != "" {
		t.Errorf("FailNext 503: %d %+v", status, e)
	}
}

// Lists, events, the clock and the limiter together under -race.
func TestConcurrentListsAndEvents(t *testing.T) {
	t.Parallel()
	s := New(t)
	seed(s)
	api := newClient(s)
	const writers, each = 4, 10
	page := stripe.ListParams{Limit: stripe.Int64(100)}
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(3)
		go func() {
			defer wg.Done()
			for j := range each {
				id := fmt.Sprintf("sub_c%d_%d", i, j)
				s.UpdateSubscription(Subscription{ID: id, Customer: "cus_A", Metadata: map[string]string{"n": id}}, "customer.subscription.created")
				s.PutCustomer(Customer{ID: "cus_" + id})
				s.Emit("invoice.paid", map[string]any{"id": id})
			}
		}()
		go func() {
			defer wg.Done()
			for range 3 {
				drain(t, api.Subscriptions.List(&stripe.SubscriptionListParams{ListParams: page, Status: stripe.String("all")}))
				drain(t, api.Customers.List(&stripe.CustomerListParams{ListParams: page}))
				drain(t, api.Events.List(&stripe.EventListParams{ListParams: page, Types: stripe.StringSlice([]string{"invoice.paid"})}))
			}
		}()
		go func() {
			defer wg.Done()
			s.SetClockOffset(time.Duration(i) * time.Second)
			s.SetRateLimit(0)
			_ = s.Now()
			_ = s.Throttled()
			s.SetEventAPIVersion("")
		}()
	}
	wg.Wait()
	if ids := drain(t, api.Events.List(&stripe.EventListParams{ListParams: page})); len(ids) != writers*each*2 {
		t.Errorf("%d events, want %d", len(ids), writers*each*2)
	}
	if ids := drain(t, api.Subscriptions.List(&stripe.SubscriptionListParams{ListParams: page})); len(ids) != writers*each+1 {
		t.Errorf("%d subscriptions, want %d", len(ids), writers*each+1)
	}
}
