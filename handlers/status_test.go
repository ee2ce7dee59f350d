package handlers

import (
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/stripeapi"
)

// The statuses callers see, for errors as the billing layer wraps them.
func TestStatus(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err       error
		want      int // status()
		wantEvent int // eventFailureStatus(), for a recorded webhook
	}{
		{fmt.Errorf("apply: %w", billing.ErrUnsettled), http.StatusServiceUnavailable, http.StatusServiceUnavailable},
		{fmt.Errorf("read: %w", stripeapi.ErrUnavailable), http.StatusServiceUnavailable, http.StatusServiceUnavailable},
		{fmt.Errorf("read: %w: GET /v1/x: %w", stripeapi.ErrTimeout, stripeapi.ErrUnavailable), http.StatusServiceUnavailable, http.StatusServiceUnavailable},
		{billing.ErrSessionNotFound, http.StatusNotFound, http.StatusNotFound},
		{errors.New("a bug"), http.StatusInternalServerError, http.StatusUnprocessableEntity},
	} {
		if got, _ := status(tc.err); got != tc.want {
			t.Errorf("status(%v) = %d, want %d", tc.err, got, tc.want)
		}
		if got, _ := eventFailureStatus(tc.err); got != tc.wantEvent {
			t.Errorf("eventFailureStatus(%v) = %d, want %d", tc.err, got, tc.wantEvent)
		}
	}
}
