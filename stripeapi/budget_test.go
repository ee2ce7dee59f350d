package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is an Observer that keeps what it hears.
type recorder struct {
	mu       sync.Mutex
	statuses map[string][]int
	waits    map[string][]time.Duration
}

func newRecorder() *recorder {
	return &recorder{statuses: map[string][]int{}, waits: map[string][]time.Duration{}}
}

func (r *recorder) StripeRequest(share string, status int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statuses[share] = append(r.statuses[share], status)
}

func (r *recorder) StripeBudgetWaited(share string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waits[share] = append(r.waits[share], d)
}

func (r *recorder) seen(share string) ([]int, []time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.statuses[share]), slices.Clone(r.waits[share])
}

const customerBody = `{"id":"cus_1","object":"customer","created":1714564800}`

// limitedServer answers 429 (Stripe's rate-limit error) to the first
// `limited` requests, or to all when limited < 0, with the given
// Retry-After, and the customer after that.
func limitedServer(t *testing.T, limited int, retryAfter string) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
		w.Header().Set("Request-Id", "req_1")
		if i := n.Add(1); limited < 0 || i <= int64(limited) {
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}
			w.WriteHeader(http.StatusTooManyRequests)
			fmt.Fprint(w, `{"error":{"type":"invalid_request_error","code":"rate_limit","message":"Too many requests made to the API too quickly for sk_test_SECRET"}}`)
			return
		}
		fmt.Fprint(w, customerBody)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// quickRetries makes a client's 429 backoff fit a test.
func quickRetries(c *Client, total time.Duration) *Client {
	c.rt.retry = retryPolicy{initial: 5 * time.Millisecond, max: 40 * time.Millisecond, total: total}
	return c
}

func TestRateLimitedCallIsRetried(t *testing.T) {
	t.Parallel()
	srv, n := limitedServer(t, 2, "")
	obs := newRecorder()
	c := quickRetries(NewClient(srv.URL, "sk_test_x", Options{Share: Bulk, Observer: obs}), 5*time.Second)
	cu, at, err := c.Customer(context.Background(), "cus_1")
	if err != nil || cu.ID != "cus_1" || at.IsZero() {
		t.Fatalf("customer %+v at %s err %v", cu, at, err)
	}
	statuses, waits := obs.seen("bulk")
	if n.Load() != 3 || !slices.Equal(statuses, []int{429, 429, 200}) || len(waits) != 0 {
		t.Fatalf("%d requests, statuses %v, %d budget waits (no budget); want 3, [429 429 200], 0", n.Load(), statuses, len(waits))
	}
}

func TestRateLimitedCallGivesUpAfterItsBudget(t *testing.T) {
	t.Parallel()
	srv, n := limitedServer(t, -1, "")
	c := quickRetries(NewClient(srv.URL, "sk_test_x", Options{Share: Live}), 300*time.Millisecond)
	start := time.Now()
	_, _, err := c.Customer(context.Background(), "cus_1")
	took := time.Since(start)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "HTTP 429 invalid_request_error rate_limit (request req_1)") ||
		strings.Contains(err.Error(), "SECRET") || strings.Contains(err.Error(), "Too many") {
		t.Fatalf("err %v: want ErrUnavailable with the 429's status, type, code and request id only", err)
	}
	if n.Load() < 4 || took > 3*time.Second {
		t.Fatalf("%d requests in %s: want several, within the 300ms budget (and slack)", n.Load(), took)
	}
	t.Logf("gave up after %d requests in %s", n.Load(), took)
}

func TestRateLimitedCallHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	t.Run("within the budget", func(t *testing.T) {
		t.Parallel()
		srv, n := limitedServer(t, 1, "1")
		c := quickRetries(NewClient(srv.URL, "sk_test_x", Options{}), 5*time.Second)
		start := time.Now()
		if _, _, err := c.Customer(context.Background(), "cus_1"); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < time.Second || n.Load() != 2 {
			t.Fatalf("%d requests in %s, want 2 after Retry-After: 1", n.Load(), took)
		}
	})
	t.Run("beyond the budget", func(t *testing.T) {
		t.Parallel()
		srv, n := limitedServer(t, 1, "120")
		c := quickRetries(NewClient(srv.URL, "sk_test_x", Options{}), 5*time.Second)
		start := time.Now()
		if _, _, err := c.Customer(context.Background(), "cus_1"); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("err %v, want ErrUnavailable at once", err)
		}
		if took := time.Since(start); took > time.Second || n.Load() != 1 {
			t.Fatalf("%d requests in %s, want 1 and no wait", n.Load(), took)
		}
	})
}

func TestRateLimitBackoffEndsWithTheContext(t *testing.T) {
	t.Parallel()
	srv, _ := limitedServer(t, -1, "")
	c := NewClient(srv.URL, "sk_test_x", Options{Share: Bulk}) // the real 60s policy
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, _, err := c.Customer(ctx, "cus_1")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("err %v after %s, want the context's deadline soon after 200ms", err, time.Since(start))
	}
}

func TestTransportReportsFailuresAndBoundsAttempts(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	obs := newRecorder()
	rt := &transport{base: http.DefaultTransport, timeout: 100 * time.Millisecond, budget: NewBudget(50), share: Bulk, observer: obs, retry: policyFor(Bulk)}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := rt.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a stalled answer did not time out")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("timed out after %s, want about 100ms", took)
	}
	statuses, waits := obs.seen("bulk")
	if !slices.Equal(statuses, []int{0}) || len(waits) != 1 {
		t.Fatalf("statuses %v, %d waits; want [0] and 1", statuses, len(waits))
	}
}

// TestBudgetShares runs bulk clients flat out on a budget of 20/s while a
// live client calls now and then. It checks the server never sees more
// than rps plus the common burst in any second (plus one for timers
// firing late), that bulk work goes at about its share, 4/5 of rps, and
// that the live calls wait next to nothing while bulk calls queue.
func TestBudgetShares(t *testing.T) {
	t.Parallel()
	const rps, burst, bulkCalls, workers = 20, 4, 40, 4
	var mu sync.Mutex
	var arrivals []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
		io.WriteString(w, customerBody)
	}))
	t.Cleanup(srv.Close)
	budget, obs := NewBudget(rps), newRecorder()
	bulk := NewClient(srv.URL, "sk_test_x", Options{Budget: budget, Share: Bulk, Observer: obs})
	live := NewClient(srv.URL, "sk_test_x", Options{Budget: budget, Share: Live, Observer: obs})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, bulkCalls+10)
	for w := range workers {
		wg.Go(func() {
			for range bulkCalls / workers {
				if _, _, err := bulk.Customer(ctx, "cus_1"); err != nil {
					errs <- fmt.Errorf("bulk %d: %w", w, err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		time.Sleep(300 * time.Millisecond) // bulk is queueing by now
		for range 6 {
			if _, _, err := live.Customer(ctx, "cus_1"); err != nil {
				errs <- fmt.Errorf("live: %w", err)
				return
			}
			time.Sleep(300 * time.Millisecond)
		}
	})
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	_, liveWaits := obs.seen("live")
	_, bulkWaits := obs.seen("bulk")
	liveMax, bulkMean := slices.Max(liveWaits), mean(bulkWaits)
	t.Logf("%d bulk calls in %s (%.1f/s); bulk wait mean %s; live waits %v", bulkCalls, took,
		float64(bulkCalls)/took.Seconds(), bulkMean, liveWaits)
	if minTook := time.Duration(float64(bulkCalls-1) / (rps * 4 / 5) * float64(time.Second)); took < minTook*9/10 {
		t.Errorf("%d bulk calls took %s, faster than bulk's share allows (%s)", bulkCalls, took, minTook)
	}
	if liveMax > 50*time.Millisecond || bulkMean < 100*time.Millisecond || bulkMean < 10*liveMax {
		t.Errorf("live waited up to %s, bulk %s on average: live must not queue behind bulk", liveMax, bulkMean)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := maxInWindow(arrivals, time.Second); n > rps+burst+1 {
		t.Errorf("the server saw %d requests within a second, budget %d/s burst %d", n, rps, burst)
	}
}

// TestBudgetLiveBorrowsIdleBulk: with bulk idle, live calls may use all of
// the budget, not only their reserve.
func TestBudgetLiveBorrowsIdleBulk(t *testing.T) {
	t.Parallel()
	srv, _ := limitedServer(t, 0, "")
	live := NewClient(srv.URL, "sk_test_x", Options{Budget: NewBudget(20), Share: Live})
	start := time.Now()
	for range 20 {
		if _, _, err := live.Customer(context.Background(), "cus_1"); err != nil {
			t.Fatal(err)
		}
	}
	// 4 at once (the burst), then 16 at 20/s: 0.8s; at the reserve's 4/s it would be 4s.
	if took := time.Since(start); took < 700*time.Millisecond || took > 3*time.Second {
		t.Fatalf("20 live calls took %s, want about 0.8s", took)
	}
}

func TestNewBudget(t *testing.T) {
	t.Parallel()
	if NewBudget(0) != nil || NewBudget(-1) != nil {
		t.Fatal("a budget of no calls is not nil (no limit)")
	}
	for _, tc := range []struct {
		rps, burst int
		bulk       float64
	}{{2, 1, 1.6}, {20, 4, 16}, {100, 5, 80}} {
		b := NewBudget(tc.rps)
		if b.all.Burst() != tc.burst || float64(b.bulk.Limit()) != tc.bulk || b.bulk.Burst() != 1 || int(b.all.Limit()) != tc.rps {
			t.Errorf("NewBudget(%d): all %v/%d bulk %v/%d", tc.rps, b.all.Limit(), b.all.Burst(), b.bulk.Limit(), b.bulk.Burst())
		}
	}
	if Live.String() != "live" || Bulk.String() != "bulk" {
		t.Fatal("share names")
	}
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(max(len(ds), 1))
}

// maxInWindow is the most times within any window of length w.
func maxInWindow(ts []time.Time, w time.Duration) int {
	ts = slices.Clone(ts)
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	most, lo := 0, 0
	for hi := range ts {
		for ts[hi].Sub(ts[lo]) >= w {
			lo++
		}
		most = max(most, hi-lo+1)
	}
	return most
}
