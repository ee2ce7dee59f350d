// Package stripefake is an in-memory fake of the slice of Stripe's HTTP API
// that lockstep uses, plus helpers that build and sign webhook events exactly
// as Stripe does. Tests use it so that they never reach Stripe.
//
// The Server answers, in Stripe's JSON shapes and with Stripe's error bodies:
//
//	GET /v1/checkout/sessions/{id}   expand[]=subscription
//	GET /v1/subscriptions/{id}
//	GET /v1/customers/{id}           (a deleted customer answers the deleted stub)
//	GET /v1/invoices/{id}
//	GET /v1/events/{id}              (events of the last 30 days)
//	GET /v1/customers                deleted customers are not listed
//	GET /v1/subscriptions            customer, status (default: not ended;
//	                                 all, ended or one status)
//	GET /v1/invoices                 customer
//	GET /v1/events                   types[]; the last 30 days
//	POST /_fake/checkout/sessions    the fake's own: a finished checkout (dev.go)
//	products, prices, active entitlements: see catalog.go
//
// Lists take limit (1-100, default 10), starting_after and created[gte]
// (what lockstep's client sends); they answer {"object":"list","url",
// "has_more","data"}, newest first (created descending, then the reverse
// order of first Put), and refuse a parameter the fake does not implement as
// Stripe refuses an unknown one (400).
//
// Every request needs "Authorization: Bearer <key>" (or Basic auth with the
// key as user name) where the key starts with sk_test_, sk_live_ or rk_;
// otherwise it answers 401. Objects are rendered in the shape of the API
// version named by the request's Stripe-Version header (DefaultAPIVersion
// when absent); see IsBasil for what changes at 2025-03-31.
//
// Expanding a reference to an object that was never Put (say a session whose
// subscription is unknown) answers 500 with an api_error naming the missing
// object: real Stripe never has dangling references, so that is a bug in the
// test's setup. Unknown expand[] values are ignored.
//
// Point stripe-go at it with stripe.BackendConfig{URL: stripe.String(s.URL)}
// (or use s.Backends()), or point lockstep at it with STRIPE_API_BASE=s.URL.
//
// Webhook events are built with EventJSON from the same object renderers
// (SessionJSON, SubscriptionJSON, CustomerJSON, InvoiceJSON) and signed with
// SignatureHeader or SignatureHeaderMulti. Emit (or UpdateSubscription,
// UpdateCustomer, UpdateInvoice, which also store the object) records an
// event for the Events API and returns the payload a webhook would carry, to
// be delivered or deliberately lost.
//
// Knobs: SetClockOffset moves Stripe's clock (Now) away from the real one;
// it stamps the Date header of every answer, default created times and
// event retention. SetRateLimit answers 429 rate_limit above a request rate
// (Throttled counts them); FailNext injects failures, SetDelay latency,
// SetOnRequest a hook; SetEventAPIVersion is the account's API version for
// events. SetHostile makes the requests under a path prefix misbehave (see
// Hostile: lists that never end, hangs, bad JSON, 429s forever, ...).
package stripefake

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// Server is an httptest.Server speaking Stripe's API shapes. All methods are
// safe for concurrent use, including from an OnRequest callback.
type Server struct {
	// URL is the base URL, without a trailing slash (http://127.0.0.1:port).
	URL string

	srv *httptest.Server

	mu            sync.Mutex
	sessions      map[string]Session
	subscriptions map[string]Subscription
	customers     map[string]Customer
	invoices      map[string]Invoice
	products      map[string]Product
	prices        map[string]Price
	entitlements  map[string][]Entitlement // by customer
	requests      int
	rendered      map[string][]byte // 200 answers by request, until the next Put
	onRequest     func(r *http.Request)
	delay         time.Duration
	failLeft      int
	failStatus    int

	clockOffset       time.Duration // Stripe's clock minus the real one
	customerOrder     ordering
	subscriptionOrder ordering
	invoiceOrder      ordering
	productOrder      ordering
	priceOrder        ordering
	events            map[string]event
	eventOrder        ordering
	eventAPIVersion   string
	limiter           limiter
	throttled         int // 429 rate_limit answers
	hostile           hostility
}

// New starts a fake Stripe API server; t.Cleanup closes it.
func New(t testing.TB) *Server {
	t.Helper()
	s := newUnstarted()
	s.start()
	t.Cleanup(s.srv.Close)
	return s
}

// Start starts a fake Stripe API server on a free port of 127.0.0.1, for use
// outside tests (the load command); the caller must Close it.
func Start() *Server {
	s := newUnstarted()
	s.start()
	return s
}

// StartOn starts a fake Stripe API server listening on addr (host:port), so
// a separately started lockstep can be given its URL in advance; the caller
// must Close it.
func StartOn(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("stripefake: listen on %s: %w", addr, err)
	}
	s := newUnstarted()
	_ = s.srv.Listener.Close()
	s.srv.Listener = ln
	s.start()
	return s, nil
}

// Close stops the server and waits for the requests in flight. Servers from
// New are closed by the test's cleanup; Close them again is harmless.
func (s *Server) Close() { s.srv.Close() }

func newUnstarted() *Server {
	s := &Server{
		sessions:      map[string]Session{},
		subscriptions: map[string]Subscription{},
		customers:     map[string]Customer{},
		invoices:      map[string]Invoice{},
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serveHostile))
	return s
}

func (s *Server) start() {
	s.srv.Start()
	s.URL = strings.TrimSuffix(s.srv.URL, "/")
}

// Backends returns stripe-go backends aimed at the fake, with logging off and
// network retries disabled (so FailNext(1, 500) surfaces as an error rather
// than being retried away). Use them with client.New(key, s.Backends()).
func (s *Server) Backends() *stripe.Backends {
	b := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(s.URL),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		MaxNetworkRetries: stripe.Int64(0),
	})
	return &stripe.Backends{API: b, Connect: b, Uploads: b}
}

// PutSession stores or replaces a checkout session. A zero Created is set to
// now on Stripe's clock (see SetClockOffset), once, so repeated reads agree.
func (s *Server) PutSession(sess Session) {
	sess.Metadata = copyMetadata(sess.Metadata)
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess.Created.IsZero() {
		sess.Created = s.stamp()
	}
	s.sessions[sess.ID] = sess
	clear(s.rendered)
}

// PutSubscription stores or replaces a subscription. A zero Created is set to
// now on Stripe's clock, and a zero CurrentPeriodEnd to Created plus one
// month.
func (s *Server) PutSubscription(sub Subscription) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putSubscriptionLocked(sub)
}

// PutCustomer stores or replaces a customer. A zero Created is set to now on
// Stripe's clock.
func (s *Server) PutCustomer(c Customer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putCustomerLocked(c)
}

// PutInvoice stores or replaces an invoice. A zero Created is set to now on
// Stripe's clock.
func (s *Server) PutInvoice(inv Invoice) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putInvoiceLocked(inv)
}

// The put*Locked functions run with s.mu held and return what they stored.

func (s *Server) putSubscriptionLocked(sub Subscription) Subscription {
	sub.Metadata = copyMetadata(sub.Metadata)
	if sub.Created.IsZero() {
		sub.Created = s.stamp()
	}
	if sub.CurrentPeriodEnd.IsZero() {
		sub.CurrentPeriodEnd = sub.Created.AddDate(0, 1, 0)
	}
	s.subscriptions[sub.ID] = sub
	s.subscriptionOrder.put(sub.ID, sub.Created.Unix())
	clear(s.rendered)
	return sub
}

func (s *Server) putCustomerLocked(c Customer) Customer {
	c.Metadata = copyMetadata(c.Metadata)
	if c.Created.IsZero() {
		c.Created = s.stamp()
	}
	s.customers[c.ID] = c
	s.customerOrder.put(c.ID, c.Created.Unix())
	clear(s.rendered)
	return c
}

func (s *Server) putInvoiceLocked(inv Invoice) Invoice {
	if inv.Created.IsZero() {
		inv.Created = s.stamp()
	}
	s.invoices[inv.ID] = inv
	s.invoiceOrder.put(inv.ID, inv.Created.Unix())
	clear(s.rendered)
	return inv
}

// Requests returns the number of API requests served so far, whatever their
// answer (including 401s, 404s and injected failures).
func (s *Server) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// SetOnRequest sets f to be called at the start of every request, before the
// delay and before answering; nil removes it. f runs on the server's
// goroutine without the server's lock held, so it may call Put*, FailNext
// and friends (e.g. to change state between a client's read and its retry),
// and it may block to hold the answer back.
func (s *Server) SetOnRequest(f func(r *http.Request)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onRequest = f
}

// SetDelay adds latency d to every answer (0 removes it). The wait ends early
// if the client goes away.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// FailNext makes the next n requests answer status with a Stripe api_error
// body, or for 429 the body of Stripe's rate limiter (code rate_limit, as
// SetRateLimit answers); a status outside 100-999 means 500. n <= 0 cancels
// pending failures. Note that stripe-go retries 409, 503 and, for GETs,
// any 5xx unless its MaxNetworkRetries is 0; each retry is a request and
// consumes one failure.
func (s *Server) FailNext(n int, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n < 0 {
		n = 0
	}
	if status < 100 || status > 999 {
		status = http.StatusInternalServerError
	}
	s.failLeft = n
	s.failStatus = status
}

var expandKey = regexp.MustCompile(`^expand(\[\d*\])?$`)

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests++
	onRequest := s.onRequest
	delay := s.delay
	s.mu.Unlock()

	if onRequest != nil {
		onRequest(r)
	}
	if delay > 0 {
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		}
	}

	apiVersion := r.Header.Get("Stripe-Version")
	if apiVersion == "" {
		apiVersion = DefaultAPIVersion
	}
	w.Header().Set("Request-Id", NewID("req_"))
	w.Header().Set("Stripe-Version", apiVersion)

	s.mu.Lock()
	// Go's server would stamp Date from the real clock; Stripe's is the fake's.
	w.Header().Set("Date", s.nowLocked().UTC().Format(http.TimeFormat))
	throttled := !s.limiter.admit(time.Now())
	failing := !throttled && s.failLeft > 0
	failStatus := s.failStatus
	if failing {
		s.failLeft--
	}
	rateLimit := throttled || failing && failStatus == http.StatusTooManyRequests
	if rateLimit {
		s.throttled++
	}
	s.mu.Unlock()
	if rateLimit {
		writeRateLimited(w)
		return
	}
	if failing {
		writeError(w, failStatus, stripeError{
			Type:    "api_error",
			Message: fmt.Sprintf("stripefake: injected failure (HTTP %d)", failStatus),
		})
		return
	}

	if !authorized(r) {
		writeError(w, http.StatusUnauthorized, stripeError{
			Type:    "invalid_request_error",
			Message: "Invalid API Key provided",
		})
		return
	}

	if strings.HasPrefix(r.URL.Path, fakePrefix) {
		s.serveFake(w, r) // dev.go
		return
	}
	unrecognized := stripeError{
		Type:    "invalid_request_error",
		Message: fmt.Sprintf("Unrecognized request URL (%s: %s). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.", r.Method, r.URL.Path),
	}
	if r.Method != http.MethodGet {
		writeError(w, http.StatusNotFound, unrecognized)
		return
	}
	resource, id := route(r.URL.Path)
	// The same request for one object answers the same bytes until an
	// object changes: rendered once, so that a load against the fake
	// measures lockstep. Lists and events are rendered every time.
	cacheable := id != "" && resource != "event"
	key := apiVersion + " " + r.URL.Path + "?" + r.URL.RawQuery
	if cacheable {
		s.mu.Lock()
		cached, ok := s.rendered[key]
		s.mu.Unlock()
		if ok {
			writeRendered(w, http.StatusOK, cached)
			return
		}
	}
	expand := expansions(r)

	var (
		obj    any
		status = http.StatusOK
		apiErr *stripeError
	)
	s.mu.Lock()
	switch resource {
	case "checkout.session":
		obj, status, apiErr = s.session(id, expand, apiVersion)
	case "subscription":
		obj, status, apiErr = s.subscription(id, apiVersion)
	case "customer":
		obj, status, apiErr = s.customer(id)
	case "invoice":
		obj, status, apiErr = s.invoice(id, apiVersion)
	case "event":
		obj, status, apiErr = s.getEvent(id)
	case "customer.list":
		obj, status, apiErr = s.listCustomers(r.URL.Query())
	case "subscription.list":
		obj, status, apiErr = s.listSubscriptions(r.URL.Query(), apiVersion)
	case "invoice.list":
		obj, status, apiErr = s.listInvoices(r.URL.Query(), apiVersion)
	case "event.list":
		obj, status, apiErr = s.listEvents(r.URL.Query())
	case "product":
		obj, status, apiErr = s.product(id)
	case "price":
		obj, status, apiErr = s.price(id)
	case "product.list":
		obj, status, apiErr = s.listProducts(r.URL.Query())
	case "price.list":
		obj, status, apiErr = s.listPrices(r.URL.Query())
	case "entitlements.active_entitlement.list":
		obj, status, apiErr = s.listActiveEntitlements(r.URL.Query())
	default:
		status, apiErr = http.StatusNotFound, &unrecognized
	}
	s.mu.Unlock()

	if apiErr != nil {
		writeError(w, status, *apiErr)
		return
	}
	b, err := render(obj)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if cacheable && status == http.StatusOK {
		s.mu.Lock()
		if s.rendered == nil {
			s.rendered = map[string][]byte{}
		}
		s.rendered[key] = b
		s.mu.Unlock()
	}
	writeRendered(w, status, b)
}

// route maps a path to the resource it names and the id in it; a list is
// "<object>.list" with no id.
func route(path string) (resource, id string) {
	switch path {
	case "/v1/customers":
		return "customer.list", ""
	case "/v1/subscriptions":
		return "subscription.list", ""
	case "/v1/invoices":
		return "invoice.list", ""
	case "/v1/events":
		return "event.list", ""
	case "/v1/products":
		return "product.list", ""
	case "/v1/prices":
		return "price.list", ""
	case "/v1/entitlements/active_entitlements":
		return "entitlements.active_entitlement.list", ""
	}
	for prefix, res := range map[string]string{
		"/v1/checkout/sessions/": "checkout.session",
		"/v1/subscriptions/":     "subscription",
		"/v1/customers/":         "customer",
		"/v1/invoices/":          "invoice",
		"/v1/events/":            "event",
		"/v1/products/":          "product",
		"/v1/prices/":            "price",
	} {
		if rest, ok := strings.CutPrefix(path, prefix); ok && rest != "" && !strings.Contains(rest, "/") {
			return res, rest
		}
	}
	return "", ""
}

// The lookups below run with s.mu held.

func (s *Server) session(id string, expand map[string]bool, apiVersion string) (map[string]any, int, *stripeError) {
	sess, ok := s.sessions[id]
	if !ok {
		return nil, http.StatusNotFound, noSuch("checkout.session", id)
	}
	var sub *Subscription
	if expand["subscription"] && sess.Subscription != "" {
		v, ok := s.subscriptions[sess.Subscription]
		if !ok {
			return nil, http.StatusInternalServerError, dangling("checkout.session", id, "subscription", sess.Subscription)
		}
		sub = &v
	}
	return SessionJSON(sess, sub, apiVersion), http.StatusOK, nil
}

func (s *Server) subscription(id string, apiVersion string) (map[string]any, int, *stripeError) {
	sub, ok := s.subscriptions[id]
	if !ok {
		return nil, http.StatusNotFound, noSuch("subscription", id)
	}
	return SubscriptionJSON(sub, apiVersion), http.StatusOK, nil
}

func (s *Server) customer(id string) (map[string]any, int, *stripeError) {
	c, ok := s.customers[id]
	if !ok {
		return nil, http.StatusNotFound, noSuch("customer", id)
	}
	return CustomerJSON(c), http.StatusOK, nil
}

func (s *Server) invoice(id string, apiVersion string) (map[string]any, int, *stripeError) {
	inv, ok := s.invoices[id]
	if !ok {
		return nil, http.StatusNotFound, noSuch("invoice", id)
	}
	return InvoiceJSON(inv, apiVersion), http.StatusOK, nil
}

// expansions collects expand[]=x, expand[0]=x and expand=x query values.
func expansions(r *http.Request) map[string]bool {
	out := map[string]bool{}
	for key, values := range r.URL.Query() {
		if !expandKey.MatchString(key) {
			continue
		}
		for _, v := range values {
			for _, f := range strings.Split(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					out[f] = true
				}
			}
		}
	}
	return out
}

// authorized reports whether r carries a plausible Stripe API key.
func authorized(r *http.Request) bool {
	var key string
	if user, _, ok := r.BasicAuth(); ok {
		key = user
	} else if k, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		key = strings.TrimSpace(k)
	}
	for _, p := range []string{"sk_test_", "sk_live_", "rk_"} {
		if strings.HasPrefix(key, p) && len(key) > len(p) {
			return true
		}
	}
	return false
}

// stripeError is the body of Stripe's {"error":{...}} answers.
type stripeError struct {
	Type    string `json:"type"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
	Param   string `json:"param,omitempty"`
	DocURL  string `json:"doc_url,omitempty"`
}

func noSuch(object, id string) *stripeError {
	return &stripeError{
		Type:    "invalid_request_error",
		Code:    "resource_missing",
		Message: fmt.Sprintf("No such %s: '%s'", object, id),
		Param:   "id",
	}
}

func dangling(object, id, field, ref string) *stripeError {
	return &stripeError{
		Type: "api_error",
		Message: fmt.Sprintf("stripefake: %s %s references %s %s, which was never Put; Put it before expanding %s",
			object, id, field, ref, field),
	}
}

func writeError(w http.ResponseWriter, status int, e stripeError) {
	writeJSON(w, status, map[string]any{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := render(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeRendered(w, status, b)
}

// render is an answer's body as Stripe writes it: indented, with a newline.
func render(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	return append(b, '\n'), err
}

func writeRendered(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
