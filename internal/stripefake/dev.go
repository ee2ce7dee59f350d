package stripefake

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/lockstep/lockstep/userid"
)

// The fake's own endpoints, for trying lockstep by hand against the fake
// (`make run STRIPE=fake`): they stand in for what a customer does on
// Stripe's checkout page. They take the same API key as the rest.
//
//	POST /_fake/checkout/sessions   user_id=USER [paid=false]
//
// creates a customer, a subscription and a checkout session for USER
// (client_reference_id), as a finished Stripe Checkout leaves them: complete,
// paid and the subscription active; with paid=false, the session is
// complete but its payment still processing (the success call answers 202),
// the subscription incomplete and its first invoice open (an
// invoice.payment_action_required event too). A paid checkout also emits checkout.session.completed and
// customer.subscription.created to the Events API, where a forwarder (or
// lockstep's sweeper) finds them. It answers 200 with the ids:
//
//	{"session_id": "cs_test_...", "customer": "cus_...", "subscription": "sub_...",
//	 "user_id": "...", "paid": true, "events": ["evt_...", "evt_..."]}

// fakePrefix starts the path of every endpoint of the fake's own.
const fakePrefix = "/_fake/"

// serveFake answers the fake's own endpoints.
func (s *Server) serveFake(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != fakePrefix+"checkout/sessions" || r.Method != http.MethodPost {
		writeError(w, http.StatusNotFound, stripeError{Type: "invalid_request_error",
			Message: fmt.Sprintf("Unrecognized request URL (%s: %s). The fake's own endpoint is POST %scheckout/sessions.", r.Method, r.URL.Path, fakePrefix)})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, stripeError{Type: "invalid_request_error", Message: "the body must be form-encoded: user_id=..."})
		return
	}
	user := strings.TrimSpace(r.Form.Get("user_id"))
	if !userid.Valid(user) {
		writeError(w, http.StatusBadRequest, stripeError{Type: "invalid_request_error", Param: "user_id",
			Message: "user_id is required: 1 to 255 characters without control characters"})
		return
	}
	paid := true
	switch r.Form.Get("paid") {
	case "", "true":
	case "false":
		paid = false
	default:
		writeError(w, http.StatusBadRequest, stripeError{Type: "invalid_request_error", Param: "paid", Message: "paid must be true or false"})
		return
	}
	writeJSON(w, http.StatusOK, s.fakeCheckout(user, paid))
}

// fakeCheckout stores what a checkout for user leaves in Stripe and returns
// the answer of POST /_fake/checkout/sessions.
func (s *Server) fakeCheckout(user string, paid bool) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	created := s.stamp()
	c := s.putCustomerLocked(Customer{ID: NewID("cus_"), Created: created})
	sub := Subscription{ID: NewID("sub_"), Customer: c.ID, Status: "active", PriceID: "price_dev_pro_monthly", Created: created}
	sess := Session{ID: NewID("cs_test_"), Customer: c.ID, Subscription: sub.ID, ClientReferenceID: user,
		Status: "complete", PaymentStatus: "paid", Mode: "subscription", Created: created}
	var inv Invoice
	if !paid {
		// The customer finished the checkout, but the first payment still
		// waits for them (3-D Secure) or their bank: the subscription is
		// incomplete and its first invoice open, payable on its hosted page.
		inv = s.putInvoiceLocked(Invoice{ID: NewID("in_"), Customer: c.ID, Subscription: sub.ID,
			Status: "open", Currency: "usd", AmountDue: 2000, Created: created})
		sub.Status, sub.LatestInvoice = "incomplete", inv.ID
		sess.PaymentStatus = "unpaid"
	}
	sub = s.putSubscriptionLocked(sub)
	s.sessions[sess.ID] = sess
	clear(s.rendered)
	events := []string{}
	id, _ := s.emitLocked("checkout.session.completed", SessionJSON(sess, nil, s.eventVersionLocked()), created)
	events = append(events, id)
	id, _ = s.emitLocked("customer.subscription.created", SubscriptionJSON(sub, s.eventVersionLocked()), created)
	events = append(events, id)
	if !paid {
		id, _ = s.emitLocked("invoice.payment_action_required", InvoiceJSON(inv, s.eventVersionLocked()), created)
		events = append(events, id)
	}
	return map[string]any{"session_id": sess.ID, "customer": c.ID, "subscription": sub.ID,
		"user_id": user, "paid": paid, "events": events}
}
