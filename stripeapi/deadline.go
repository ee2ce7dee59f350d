package stripeapi

import (
	"context"
	"time"
)

// deadlineKey carries the time by which a live request's Stripe work must
// be done.
type deadlineKey struct{}

// WithDeadline returns a context under which every Stripe call (its
// attempts, stripe-go's retries, the budget's waits and 429 backoffs
// together) ends by d from now, failing with ErrTimeout (which is also
// ErrUnavailable) when Stripe has not answered by then. Only the Stripe
// calls are bounded: the database work after them, and recording a failed
// event, still run under ctx. An HTTP handler sets it so that a hanging
// Stripe leaves time to write an answer within the server's write timeout.
// d <= 0 returns ctx unchanged; a deadline already set is only shortened.
func WithDeadline(ctx context.Context, d time.Duration) context.Context {
	if d <= 0 {
		return ctx
	}
	at := time.Now().Add(d)
	if prev, ok := requestDeadline(ctx); ok && prev.Before(at) {
		return ctx
	}
	return context.WithValue(ctx, deadlineKey{}, at)
}

// requestDeadline is the deadline WithDeadline set on ctx, if any.
func requestDeadline(ctx context.Context) (time.Time, bool) {
	at, ok := ctx.Value(deadlineKey{}).(time.Time)
	return at, ok
}

// callContext is ctx bounded by its request deadline, if it has one, and
// whether it has.
func callContext(ctx context.Context) (context.Context, context.CancelFunc, bool) {
	at, ok := requestDeadline(ctx)
	if !ok {
		return ctx, func() {}, false
	}
	c, cancel := context.WithDeadline(ctx, at)
	return c, cancel, true
}

// pastDeadline reports whether ctx's request deadline has passed while ctx
// itself is still live: the Stripe work ran out of its time, the caller
// did not go away.
func pastDeadline(ctx context.Context) bool {
	at, ok := requestDeadline(ctx)
	return ok && ctx.Err() == nil && !time.Now().Before(at)
}
