package stripefake

import (
	"net/http"
	"time"
)

// rateLimited is the body of Stripe's 429 answer from its rate limiter. Stripe
// sends no Retry-After with it, and stripe-go does not retry it (it retries a
// 429 only when the code is lock_timeout).
var rateLimited = stripeError{
	Type:    "invalid_request_error",
	Code:    "rate_limit",
	Message: "Request rate limit exceeded. You can learn more about rate limits here https://stripe.com/docs/rate-limits.",
	DocURL:  "https://stripe.com/docs/error-codes/rate-limit",
}

// SetRateLimit makes the fake answer like Stripe's rate limiter once more
// than rps requests arrive within any one second (a sliding window over the
// real clock): 429 with code rate_limit. Throttled requests do not use up the
// window. rps <= 0 turns the limit off; every call starts a fresh window.
func (s *Server) SetRateLimit(rps int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limiter = limiter{rps: max(rps, 0)}
}

// Throttled returns the number of 429 rate_limit answers given so far, by
// the rate limiter or by FailNext(n, 429).
func (s *Server) Throttled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.throttled
}

// limiter admits at most rps requests in any sliding second; rps 0 admits all.
type limiter struct {
	rps    int
	recent []time.Time // the last rps admissions, a ring once full
	next   int         // the oldest admission once the ring is full
}

// admit reports whether a request arriving at now is let through, and
// records it if so.
func (l *limiter) admit(now time.Time) bool {
	if l.rps <= 0 {
		return true
	}
	if len(l.recent) < l.rps {
		l.recent = append(l.recent, now)
		return true
	}
	if now.Sub(l.recent[l.next]) < time.Second {
		return false
	}
	l.recent[l.next] = now
	l.next = (l.next + 1) % l.rps
	return true
}

// writeRateLimited answers like Stripe's rate limiter.
func writeRateLimited(w http.ResponseWriter) {
	writeError(w, http.StatusTooManyRequests, rateLimited)
}
