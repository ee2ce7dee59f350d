package stripefake

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// eventRetention is how far back Stripe's Events API reaches: it lists and
// retrieves only the events of the last 30 days.
const eventRetention = 30 * 24 * time.Hour

// maxEventTypes is how many types[] a list of events may name.
const maxEventTypes = 20

// event is an emitted event: the exact bytes a webhook carries, and what the
// list filters on.
type event struct {
	typ     string
	created int64
	payload []byte
}

// SetEventAPIVersion sets the API version events are emitted in, Stripe's
// account version: Emit stamps it as api_version and the Update* helpers
// render their object in it. "" means DefaultAPIVersion.
func (s *Server) SetEventAPIVersion(apiVersion string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.eventAPIVersion = apiVersion
}

// Emit records an event of type typ about obj (built with SubscriptionJSON,
// CustomerJSON, ...) as Stripe does when an object changes, created now on
// Stripe's clock, and returns its id and its EventJSON payload. The Events
// API (GET /v1/events, GET /v1/events/{id}) serves it; deliver the payload
// signed with SignatureHeader as a webhook, or drop it to simulate a missed
// delivery.
func (s *Server) Emit(typ string, obj map[string]any) (id string, payload []byte) {
	return s.EmitAt(typ, obj, time.Time{})
}

// EmitAt is Emit with the event's created time given (whole seconds count);
// a zero created means now on Stripe's clock. An event more than 30 days
// older than Stripe's clock is kept but no longer served.
func (s *Server) EmitAt(typ string, obj map[string]any, created time.Time) (id string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.emitLocked(typ, obj, created)
}

// UpdateSubscription stores sub as PutSubscription does and emits an event of
// type typ (customer.subscription.updated, ...) carrying it, in one step: no
// reader sees the event before the subscription.
func (s *Server) UpdateSubscription(sub Subscription, typ string) (id string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub = s.putSubscriptionLocked(sub)
	return s.emitLocked(typ, SubscriptionJSON(sub, s.eventVersionLocked()), time.Time{})
}

// UpdateCustomer stores c as PutCustomer does and emits an event of type typ
// carrying it. A Deleted customer is carried as the deleted stub.
func (s *Server) UpdateCustomer(c Customer, typ string) (id string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c = s.putCustomerLocked(c)
	return s.emitLocked(typ, CustomerJSON(c), time.Time{})
}

// UpdateInvoice stores inv as PutInvoice does and emits an event of type typ
// (invoice.paid, ...) carrying it.
func (s *Server) UpdateInvoice(inv Invoice, typ string) (id string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inv = s.putInvoiceLocked(inv)
	return s.emitLocked(typ, InvoiceJSON(inv, s.eventVersionLocked()), time.Time{})
}

func (s *Server) eventVersionLocked() string {
	return orDefault(s.eventAPIVersion, DefaultAPIVersion)
}

// emitLocked records the event; the caller holds s.mu.
func (s *Server) emitLocked(typ string, obj map[string]any, created time.Time) (string, []byte) {
	if created.IsZero() {
		created = s.stamp()
	}
	id := NewID("evt_")
	payload := EventJSON(id, typ, created, s.eventVersionLocked(), obj)
	if s.events == nil {
		s.events = map[string]event{}
	}
	s.events[id] = event{typ: typ, created: created.Unix(), payload: payload}
	s.eventOrder.put(id, created.Unix())
	return id, bytes.Clone(payload)
}

// The handlers below run with s.mu held.

// retainedSince is the oldest created (Unix seconds) the Events API serves.
func (s *Server) retainedSince() int64 {
	return s.nowLocked().Add(-eventRetention).Unix()
}

// getEvent answers GET /v1/events/{id} with the event's payload.
func (s *Server) getEvent(id string) (json.RawMessage, int, *stripeError) {
	ev, ok := s.events[id]
	if !ok || ev.created < s.retainedSince() {
		return nil, http.StatusNotFound, noSuch("event", id)
	}
	return ev.payload, http.StatusOK, nil
}

// listEvents answers GET /v1/events: created[gte], types[] (up to 20
// names), the last 30 days only.
func (s *Server) listEvents(q url.Values) (map[string]any, int, *stripeError) {
	p, apiErr := parseList(q, "types")
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	types := p.other["types"]
	if len(types) > maxEventTypes {
		return nil, http.StatusBadRequest, invalidParam("types", "", "You may pass at most %d types.", maxEventTypes)
	}
	match := func(string) bool { return true }
	if len(types) > 0 {
		want := map[string]bool{}
		for _, t := range types {
			want[t] = true
		}
		match = func(t string) bool { return want[t] }
	}
	since := s.retainedSince()
	ids, more, apiErr := p.page(&s.eventOrder, "event", func(id string) bool {
		ev := s.events[id]
		return ev.created >= since && p.createdIn(ev.created) && match(ev.typ)
	})
	if apiErr != nil {
		return nil, http.StatusBadRequest, apiErr
	}
	data := make([]json.RawMessage, len(ids))
	for i, id := range ids {
		data[i] = s.events[id].payload
	}
	return listJSON("/v1/events", more, data), http.StatusOK, nil
}
