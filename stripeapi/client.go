package stripeapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/stripe/stripe-go/v76"
)

// DefaultBaseURL is Stripe's API.
const DefaultBaseURL = "https://api.stripe.com"

// Client reads objects from Stripe's API. It never holds a database
// transaction: callers fetch first, then lock and write.
type Client struct {
	backend stripe.Backend
	key     string
}

// NewClient returns a client for baseURL (Stripe, stripe-mock or a test
// server) authenticated with the secret key. stripe-go retries network
// errors and 5xx twice with its own backoff; timeout bounds each request.
func NewClient(baseURL, secretKey string, timeout time.Duration) *Client {
	backend := stripe.GetBackendWithConfig(stripe.APIBackend, &stripe.BackendConfig{
		URL:               stripe.String(strings.TrimRight(baseURL, "/")),
		HTTPClient:        &http.Client{Timeout: timeout},
		MaxNetworkRetries: stripe.Int64(2),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
	})
	return &Client{backend: backend, key: secretKey}
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

func (c *Client) get(ctx context.Context, path string, expand ...string) ([]byte, error) {
	params := &getParams{Params: stripe.Params{Context: ctx}}
	for _, e := range expand {
		params.Expand = append(params.Expand, stripe.String(e))
	}
	var obj rawObject
	if err := c.backend.Call(http.MethodGet, path, c.key, params, &obj); err != nil {
		var serr *stripe.Error
		if errors.As(err, &serr) && (serr.HTTPStatusCode == http.StatusNotFound || serr.Code == stripe.ErrorCodeResourceMissing) {
			return nil, ErrNotFound
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// Stripe's message can quote the API key ("Invalid API Key provided:
		// sk_test_****abcd"), so errors carry its status, type, code and
		// request id, never its text.
		if serr != nil {
			return nil, fmt.Errorf("%w: GET %s: HTTP %d %s %s (request %s)", ErrUnavailable, path,
				serr.HTTPStatusCode, serr.Type, serr.Code, serr.RequestID)
		}
		return nil, fmt.Errorf("%w: GET %s: %v", ErrUnavailable, path, err)
	}
	if obj.LastResponse == nil {
		return nil, fmt.Errorf("%w: GET %s: empty response", ErrUnavailable, path)
	}
	return obj.LastResponse.RawJSON, nil
}

// CheckoutSession fetches a checkout session with its subscription expanded.
func (c *Client) CheckoutSession(ctx context.Context, id string) (*CheckoutSession, error) {
	if !ValidID(id, "cs_") {
		return nil, ErrNotFound
	}
	b, err := c.get(ctx, "/v1/checkout/sessions/"+id, "subscription")
	if err != nil {
		return nil, err
	}
	s, err := ParseCheckoutSession(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return s, nil
}

// Subscription fetches a subscription.
func (c *Client) Subscription(ctx context.Context, id string) (*Subscription, error) {
	if !ValidID(id, "sub_") {
		return nil, ErrNotFound
	}
	b, err := c.get(ctx, "/v1/subscriptions/"+id)
	if err != nil {
		return nil, err
	}
	s, err := ParseSubscription(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return s, nil
}
