package stripeapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A refused key is its own kind of error (401 ErrUnauthorized, 403
// ErrForbidden), still ErrUnavailable for HTTP callers, and carries the
// status and request id but never Stripe's message (it quotes the key).
func TestAPIErrorKinds(t *testing.T) {
	t.Parallel()
	const key = "sk_test_refusedKEY0123456789"
	for _, tc := range []struct {
		status int
		kind   error
		other  error
		words  string
	}{
		{http.StatusUnauthorized, ErrUnauthorized, ErrForbidden, "stripe rejected the api key"},
		{http.StatusForbidden, ErrForbidden, ErrUnauthorized, "stripe api key lacks a permission"},
		{http.StatusBadRequest, ErrUnavailable, ErrUnauthorized, "stripe api unavailable"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Request-Id", "req_refused")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(tc.status)
			_, _ = w.Write([]byte(`{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: ` + key + `"}}`))
		}))
		_, _, err := NewClient(srv.URL, key, Options{}).Customer(context.Background(), "cus_1")
		srv.Close()
		var apiErr *APIError
		switch {
		case !errors.Is(err, tc.kind) || !errors.Is(err, ErrUnavailable) || errors.Is(err, tc.other):
			t.Errorf("HTTP %d: %v is not (only) %v and ErrUnavailable", tc.status, err, tc.kind)
		case !errors.As(err, &apiErr) || apiErr.Status != tc.status || apiErr.RequestID != "req_refused":
			t.Errorf("HTTP %d: %#v, want an *APIError with the status and request id", tc.status, apiErr)
		case !strings.HasPrefix(err.Error(), tc.words) || strings.Contains(err.Error(), "refusedKEY"):
			t.Errorf("HTTP %d: %q, want it to start %q and not quote the key", tc.status, err, tc.words)
		}
	}
}
