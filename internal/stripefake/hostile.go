package stripefake

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"
)

// Hostile is a way the fake misbehaves, as a broken or overloaded Stripe
// (or a proxy in front of it) would, for the requests under a path prefix:
// see SetHostile.
type Hostile int

const (
	// Behave answers as Stripe does (removes a mode).
	Behave Hostile = iota
	// Endless answers every page of a list as its first page, with
	// has_more true: the list repeats the same items forever.
	Endless
	// EmptyMore answers every page of a list with no items and has_more
	// true.
	EmptyMore
	// Hang never answers: the request waits until the client gives up (its
	// context ends), the mode is removed, or HangLimit passes, and then the
	// connection is dropped.
	Hang
	// Slow answers as Stripe does after SlowDelay.
	Slow
	// BadJSON answers the first half of the body Stripe would send: not
	// JSON.
	BadJSON
	// BadObject gives every object in the answer (each item of a list,
	// the object of an event) a created that is not a time: valid JSON,
	// not a valid Stripe object, with its id intact.
	BadObject
	// UnknownEnum gives every subscription in the answer (listed,
	// fetched, or in an event) the status "awaiting_approval", a value
	// Stripe might add.
	UnknownEnum
	// NoCustomer gives every subscription, invoice and checkout session in
	// the answer a null customer.
	NoCustomer
	// RateLimited answers every request 429 rate_limit.
	RateLimited
	// ServerError answers every request 500 api_error.
	ServerError
)

// UnknownStatus is the status UnknownEnum gives subscriptions.
const UnknownStatus = "awaiting_approval"

// HangLimit bounds a Hang, so a server Closed under a hanging request
// (httptest.Server.Close waits for requests in flight) does not wait long.
var HangLimit = 30 * time.Second

// hostility is the Server's hostile modes, by path prefix.
type hostility struct {
	mu      sync.Mutex
	modes   map[string]Hostile
	slow    time.Duration
	release chan struct{} // closed when a mode is removed: hung requests end
	hits    map[Hostile]int
}

func (s *Server) hostility() *hostility {
	h := &s.hostile
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.modes == nil {
		h.modes, h.slow, h.release, h.hits = map[string]Hostile{}, 200*time.Millisecond, make(chan struct{}), map[Hostile]int{}
	}
	return h
}

// SetHostile makes the requests whose path starts with prefix ("/v1/events"
// covers the list and each event) misbehave as mode; Behave restores them
// and ends the requests a Hang holds. The longest matching prefix decides.
func (s *Server) SetHostile(prefix string, mode Hostile) {
	h := s.hostility()
	h.mu.Lock()
	defer h.mu.Unlock()
	if mode == Behave {
		delete(h.modes, prefix)
		close(h.release)
		h.release = make(chan struct{})
		return
	}
	h.modes[prefix] = mode
}

// SetSlowDelay sets how long Slow holds each answer back (default 200ms).
func (s *Server) SetSlowDelay(d time.Duration) {
	h := s.hostility()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.slow = d
}

// HostileHits returns how many requests mode has answered.
func (s *Server) HostileHits(mode Hostile) int {
	h := s.hostility()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hits[mode]
}

// mode returns the mode for path, with what a Hang waits on and the Slow
// delay.
func (h *hostility) mode(path string) (Hostile, <-chan struct{}, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	best, mode := -1, Behave
	for p, m := range h.modes {
		if strings.HasPrefix(path, p) && len(p) > best {
			best, mode = len(p), m
		}
	}
	if mode != Behave {
		h.hits[mode]++
	}
	return mode, h.release, h.slow
}

// serveHostile answers r as its path's hostile mode says, through serveHTTP
// for the modes that bend Stripe's answer.
func (s *Server) serveHostile(w http.ResponseWriter, r *http.Request) {
	mode, release, slow := s.hostility().mode(r.URL.Path)
	switch mode {
	case Behave:
		s.serveHTTP(w, r)
		return
	case Hang:
		t := time.NewTimer(HangLimit)
		defer t.Stop()
		select {
		case <-r.Context().Done():
		case <-release:
		case <-t.C:
		}
		panic(http.ErrAbortHandler) // drop the connection, answer nothing
	case Slow:
		t := time.NewTimer(slow)
		defer t.Stop()
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
		s.serveHTTP(w, r)
		return
	case RateLimited:
		s.mu.Lock()
		s.throttled++
		s.mu.Unlock()
		writeRateLimited(w)
		return
	case ServerError:
		writeError(w, http.StatusInternalServerError, stripeError{Type: "api_error", Message: "stripefake: hostile mode ServerError"})
		return
	}
	list := strings.HasSuffix(route0(r.URL.Path), ".list")
	if mode == Endless && list {
		q := r.URL.Query()
		q.Del("starting_after")
		r = r.Clone(r.Context())
		r.URL.RawQuery = q.Encode()
	}
	rec := httptest.NewRecorder()
	s.serveHTTP(rec, r)
	body := rec.Body.Bytes()
	if rec.Code == http.StatusOK {
		body = bend(mode, list, body)
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(body)
}

func route0(path string) string {
	res, _ := route(path)
	return res
}

// bend changes a 200 answer's body as mode says.
func bend(mode Hostile, list bool, body []byte) []byte {
	if mode == BadJSON {
		return body[:len(body)/2]
	}
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		return body
	}
	switch {
	case mode == Endless && list:
		v["has_more"] = true
	case mode == EmptyMore && list:
		v["has_more"], v["data"] = true, []any{}
	case mode == BadObject && list:
		for _, it := range asSlice(v["data"]) {
			if m, ok := it.(map[string]any); ok {
				m["created"] = "not a time"
			}
		}
	case mode == BadObject:
		v["created"] = "not a time"
	case mode == UnknownEnum || mode == NoCustomer:
		walk(v, func(m map[string]any) {
			switch obj, _ := m["object"].(string); {
			case mode == UnknownEnum && obj == "subscription":
				m["status"] = UnknownStatus
			case mode == NoCustomer && (obj == "subscription" || obj == "invoice" || obj == "checkout.session"):
				m["customer"] = nil
			}
		})
	default:
		return body
	}
	out, err := render(v)
	if err != nil {
		return body
	}
	return bytes.TrimRight(out, "\n")
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// walk calls f on every JSON object in v, outermost first.
func walk(v any, f func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		f(x)
		for _, e := range x {
			walk(e, f)
		}
	case []any:
		for _, e := range x {
			walk(e, f)
		}
	}
}
