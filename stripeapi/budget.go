package stripeapi

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/time/rate"
)

// Budget is the client-side budget of Stripe calls per second
// (STRIPE_API_RPS, default 20, under test mode's 25/s), split in two shares
// so that live traffic (the checkout-success read, the same-second read) is
// never starved by bulk work (sync, verify, the sweeper). One Budget is
// shared by every Client of a process; it does not see other processes.
//
// The shares are two token buckets. Every call draws on the common bucket
// (rps per second, burst rps/5 clamped to 1..5); a bulk call first draws on
// a bucket of its own at 4/5 of rps (burst 1). So bulk work never takes more
// than 4/5 of the budget and the remaining fifth (live's reserve, refilled
// up to the common burst) is always free for live calls, which draw only on
// the common bucket and so also take whatever bulk leaves idle, up to all
// of it. Over any second at most rps + burst calls leave the process.
type Budget struct {
	all  *rate.Limiter // every call
	bulk *rate.Limiter // bulk calls, before all
}

// NewBudget returns a budget of rps calls per second, or nil (no limit)
// when rps is not positive.
func NewBudget(rps int) *Budget {
	if rps <= 0 {
		return nil
	}
	return &Budget{
		all:  rate.NewLimiter(rate.Limit(rps), min(max(rps/5, 1), 5)),
		bulk: rate.NewLimiter(rate.Limit(float64(rps)*4/5), 1),
	}
}

// wait blocks until a call of the share may be sent, or the context ends.
func (b *Budget) wait(ctx context.Context, s Share) error {
	if s != Live {
		if err := b.bulk.Wait(ctx); err != nil {
			return err
		}
	}
	return b.all.Wait(ctx)
}

// Share is the part of a Budget a Client draws on.
type Share int

const (
	// Live is the share of calls a user waits for.
	Live Share = iota
	// Bulk is the share of sync, verify and the sweeper.
	Bulk
)

func (s Share) String() string {
	switch s {
	case Live:
		return "live"
	case Bulk:
		return "bulk"
	}
	return "share(" + strconv.Itoa(int(s)) + ")"
}

// Observer hears of every HTTP answer from Stripe (status 0 for a
// transport error) and every wait for the budget, by share ("live",
// "bulk"). *metrics.Metrics is one.
type Observer interface {
	StripeRequest(share string, status int)
	StripeBudgetWaited(share string, d time.Duration)
}

// retryPolicy bounds the backoff on 429: full jitter over an exponential
// from initial, capped at max, for at most total after the first 429.
type retryPolicy struct {
	initial, max, total time.Duration
}

func policyFor(s Share) retryPolicy {
	if s == Live {
		return retryPolicy{initial: 250 * time.Millisecond, max: 5 * time.Second, total: 5 * time.Second}
	}
	return retryPolicy{initial: 250 * time.Millisecond, max: 5 * time.Second, total: 60 * time.Second}
}

// fullJitter draws each wait uniformly from zero to the exponential
// backoff's interval (AWS's "full jitter"); the interval itself is not
// randomized, so its cap and the elapsed-time stop are exact.
type fullJitter struct {
	*backoff.ExponentialBackOff
}

func (p retryPolicy) backOff() fullJitter {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.initial
	b.MaxInterval = p.max
	b.MaxElapsedTime = p.total
	b.RandomizationFactor = 0
	b.Reset()
	return fullJitter{b}
}

func (j fullJitter) NextBackOff() time.Duration {
	d := j.ExponentialBackOff.NextBackOff()
	if d <= 0 { // including backoff.Stop
		return d
	}
	return rand.N(d + 1)
}

// transport sends each HTTP attempt of a Client, stripe-go's own retries
// included: it waits for the client's share of the budget, bounds the
// attempt by the timeout, reports the answer, and on a 429 (which stripe-go
// does not retry unless it is a lock timeout) backs off and sends again.
type transport struct {
	base     http.RoundTripper
	timeout  time.Duration
	budget   *Budget
	share    Share
	observer Observer
	retry    retryPolicy
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	var bo fullJitter // started at the first 429
	for attempt := 0; ; attempt++ {
		resp, err := t.send(req, attempt)
		if err != nil || resp.StatusCode != http.StatusTooManyRequests ||
			req.Method != http.MethodGet && req.Method != http.MethodHead {
			return resp, err
		}
		if bo.ExponentialBackOff == nil {
			bo = t.retry.backOff()
		}
		d := bo.NextBackOff()
		if d == backoff.Stop {
			return resp, nil // stripe-go turns the 429 into its error
		}
		if after, ok := retryAfter(resp.Header, time.Now()); ok {
			if bo.GetElapsedTime()+after > t.retry.total {
				return resp, nil
			}
			d = max(d, after)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		timer := time.NewTimer(d)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
}

// send makes one attempt: the budget's wait, then the request under its
// own timeout, which ends when the body is closed.
//
// Under a request deadline (WithDeadline) nothing is sent once it has
// passed, a budget wait that would outlast it is not begun, and the attempt
// ends with it: each fails with ErrTimeout. This holds for every call of
// the client, lists included; stripe-go may still sleep before a retry that
// then fails at once.
func (t *transport) send(req *http.Request, attempt int) (*http.Response, error) {
	ctx := req.Context()
	deadline, bounded := requestDeadline(ctx)
	if bounded && !time.Now().Before(deadline) {
		return nil, timeoutError("no attempt sent")
	}
	if t.budget != nil {
		start := time.Now()
		bctx, cancel, _ := callContext(ctx)
		err := t.budget.wait(bctx, t.share)
		cancel()
		if t.observer != nil {
			t.observer.StripeBudgetWaited(t.share.String(), time.Since(start))
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if bounded {
				return nil, timeoutError(fmt.Sprintf("stripe %s budget", t.share))
			}
			return nil, fmt.Errorf("stripe %s budget: %w", t.share, err)
		}
	}
	actx, cancel := context.WithTimeout(ctx, t.timeout)
	if bounded && deadline.Before(time.Now().Add(t.timeout)) {
		cancel()
		actx, cancel = context.WithDeadline(ctx, deadline)
	}
	r := req.Clone(actx)
	if attempt > 0 && req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			cancel()
			return nil, err
		}
		r.Body = body
	}
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		cancel()
		if t.observer != nil {
			t.observer.StripeRequest(t.share.String(), 0)
		}
		if pastDeadline(ctx) {
			return nil, timeoutError(fmt.Sprintf("%s %s", req.Method, req.URL.Path))
		}
		return nil, err
	}
	if t.observer != nil {
		t.observer.StripeRequest(t.share.String(), resp.StatusCode)
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

// cancelOnClose ends an attempt's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := h.Get("Retry-After")
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 32); err == nil {
		return time.Duration(max(s, 0)) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}
