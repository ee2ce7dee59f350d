package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// Client reads objects from Stripe's API. It never holds a database
// transaction: callers fetch first, then lock and write.
type Client struct {
	backend  stripe.Backend
	key      string
	rt       *transport
	maxPages int // per list; see Options.MaxListPages
}

// Options are NewClient's settings. The zero Options make a client with
// no budget and no observer, which is what tests that do not care want.
type Options struct {
	Timeout  time.Duration // per HTTP attempt, the budget's wait excluded; 0 = 10s
	Budget   *Budget       // nil = no client-side limit
	Share    Share         // Live or Bulk: which share of the budget this client draws on
	Observer Observer      // nil allowed
	// MaxListPages bounds every list (0 = DefaultMaxListPages); a list
	// that goes on past it ends with ErrListStuck.
	MaxListPages int
	// RateLimitWait bounds the backoff on 429s per call (0 = the share's:
	// 5s live, 60s bulk).
	RateLimitWait time.Duration
}

// NewClient returns a client for baseURL (Stripe, stripe-mock or a test
// server) authenticated with the secret key. stripe-go retries network
// errors and 5xx twice with its own backoff; the client's transport waits
// for the budget before every attempt and retries 429s (see Budget).
func NewClient(baseURL, secretKey string, o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	rt := &transport{
		base:     http.DefaultTransport,
		timeout:  o.Timeout,
		budget:   o.Budget,
		share:    o.Share,
		observer: o.Observer,
		retry:    policyFor(o.Share),
	}
	if o.RateLimitWait > 0 {
		rt.retry.total = o.RateLimitWait
	}
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(strings.TrimRight(baseURL, "/")),
		HTTPClient:        &http.Client{Transport: rt},
		MaxNetworkRetries: stripe.Int64(2),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	return &Client{backend: backend, key: secretKey, rt: rt, maxPages: o.MaxListPages}
}

// getParams is a GET's parameters, shaped like stripe-go's own *Params
// types (a bare stripe.Params rejects expand).
type getParams struct {
	stripe.Params `form:"*"`
	Expand        []*string `form:"expand"`
}

// rawObject keeps the body stripe-go received, for lockstep's own parsers.
type rawObject struct {
	stripe.APIResource
}

// get reads path and returns the body with Stripe's time of the answer: its
// Date header, in whole seconds. Stripe's clock, never lockstep's, dates the
// snapshots lockstep stores.
func (c *Client) get(ctx context.Context, path string, expand ...string) ([]byte, time.Time, error) {
	// Under a request deadline the call's own context ends with it, so
	// stripe-go retries nothing past it.
	cctx, cancel, _ := callContext(ctx)
	defer cancel()
	params := &getParams{Params: stripe.Params{Context: cctx}}
	for _, e := range expand {
		params.Expand = append(params.Expand, stripe.String(e))
	}
	var obj rawObject
	if err := c.backend.Call(http.MethodGet, path, c.key, params, &obj); err != nil {
		var serr *stripe.Error
		if errors.As(err, &serr) && (serr.HTTPStatusCode == http.StatusNotFound || serr.Code == stripe.ErrorCodeResourceMissing) {
			return nil, time.Time{}, ErrNotFound
		}
		return nil, time.Time{}, callError(ctx, path, err)
	}
	if obj.LastResponse == nil {
		return nil, time.Time{}, fmt.Errorf("%w: GET %s: empty response", ErrUnavailable, path)
	}
	at, err := responseTime(obj.LastResponse.Header)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: GET %s: %v", ErrUnavailable, path, err)
	}
	return obj.LastResponse.RawJSON, at, nil
}

// callError is what a failed GET of path returns: the context's error
// when it ended, else ErrUnavailable with what Stripe said (an *APIError
// when Stripe answered with an error). Stripe's message can quote the API
// key ("Invalid API Key provided: sk_test_****abcd"), so errors carry its
// status, type, code and request id, never its text.
func callError(ctx context.Context, path string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if pastDeadline(ctx) || errors.Is(err, ErrTimeout) {
		return timeoutError("GET " + path)
	}
	var serr *stripe.Error
	if errors.As(err, &serr) {
		return &APIError{Path: path, Status: serr.HTTPStatusCode, Type: string(serr.Type),
			Code: string(serr.Code), RequestID: serr.RequestID}
	}
	var uerr *url.Error
	if errors.As(err, &uerr) { // no answer: the transport's error
		return fmt.Errorf("%w: GET %s: %v", ErrUnavailable, path, err)
	}
	// An answer stripe-go could not read as Stripe's error; its text is a
	// sample of the body, which is Stripe's (or a proxy's) text.
	return fmt.Errorf("%w: GET %s: unreadable answer", ErrUnavailable, path)
}

// APIError is an error answer from Stripe: its status, type, code and
// request id, never its message (which can quote the key). It matches
// ErrUnavailable, and also ErrUnauthorized (401) or ErrForbidden (403).
type APIError struct {
	Path      string
	Status    int
	Type      string
	Code      string
	RequestID string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%v: GET %s: HTTP %d %s %s (request %s)", e.kind(), e.Path, e.Status, e.Type, e.Code, e.RequestID)
}

func (e *APIError) kind() error {
	switch e.Status {
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrForbidden
	}
	return ErrUnavailable
}

func (e *APIError) Unwrap() []error {
	if k := e.kind(); k != ErrUnavailable {
		return []error{k, ErrUnavailable}
	}
	return []error{ErrUnavailable}
}

// timeoutError is what a call that ran out of its request's deadline
// returns: ErrTimeout, and ErrUnavailable for callers that only know that.
func timeoutError(what string) error {
	return fmt.Errorf("%w: %s: %w", ErrTimeout, what, ErrUnavailable)
}

// responseTime is the Date header of a Stripe answer: when Stripe read what
// it sent, by Stripe's clock, to the second.
func responseTime(h http.Header) (time.Time, error) {
	v := h.Get("Date")
	if v == "" {
		return time.Time{}, errors.New("answer carries no Date header")
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return time.Time{}, fmt.Errorf("answer's Date header %.40q: %v", v, err)
	}
	return t.UTC(), nil
}

// CheckoutSession fetches a checkout session with its subscription
// expanded, and Stripe's time of the answer.
func (c *Client) CheckoutSession(ctx context.Context, id string) (*CheckoutSession, time.Time, error) {
	return fetch(ctx, c, "/v1/checkout/sessions/", id, "cs_", ParseCheckoutSession, "subscription")
}

// Subscription fetches a subscription, and Stripe's time of the answer.
func (c *Client) Subscription(ctx context.Context, id string) (*Subscription, time.Time, error) {
	return fetch(ctx, c, "/v1/subscriptions/", id, "sub_", ParseSubscription)
}

// Customer fetches a customer (a deleted one answers its deleted stub), and
// Stripe's time of the answer.
func (c *Client) Customer(ctx context.Context, id string) (*Customer, time.Time, error) {
	return fetch(ctx, c, "/v1/customers/", id, "cus_", ParseCustomer)
}

// Invoice fetches an invoice, and Stripe's time of the answer.
func (c *Client) Invoice(ctx context.Context, id string) (*Invoice, time.Time, error) {
	return fetch(ctx, c, "/v1/invoices/", id, "in_", ParseInvoice)
}

// fetch reads one object by id (refusing ids that are not Stripe's of that
// kind without asking) and parses it.
func fetch[T any](ctx context.Context, c *Client, path, id, prefix string, parse func([]byte) (T, error), expand ...string) (T, time.Time, error) {
	var zero T
	if !ValidID(id, prefix) {
		return zero, time.Time{}, ErrNotFound
	}
	b, at, err := c.get(ctx, path+id, expand...)
	if err != nil {
		return zero, time.Time{}, err
	}
	obj, err := parse(b)
	if err != nil {
		return zero, time.Time{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return obj, at, nil
}
