package stripefake

import "time"

// SetClockOffset sets Stripe's clock to the real time plus d: positive d puts
// Stripe ahead of the machine's clock (and so of lockstep's), negative behind.
// The clock stamps every answer's Date header, the default Created of Put
// objects and the created of emitted events, and decides which events are
// older than Stripe's 30 days of retention.
func (s *Server) SetClockOffset(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clockOffset = d
}

// Now returns the time on Stripe's clock: the real time plus the offset set
// by SetClockOffset. Stripe's own timestamps are its whole seconds.
func (s *Server) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nowLocked()
}

// nowLocked is Now for callers holding s.mu.
func (s *Server) nowLocked() time.Time {
	return time.Now().Add(s.clockOffset)
}

// stamp is the default created time of a Put object or an emitted event:
// Stripe's clock in whole seconds.
func (s *Server) stamp() time.Time {
	return s.nowLocked().Truncate(time.Second)
}
