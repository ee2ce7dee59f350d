package handlers

import (
	"context"
	"errors"
	"net/http"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/stripeapi"
)

// status maps an error to the HTTP status and the reason the caller sees.
// It is the one place domain errors become HTTP; reasons never carry
// secrets or database details.
func status(err error) (int, string) {
	switch {
	case errors.Is(err, billing.ErrSessionNotFound):
		return http.StatusNotFound, "no such checkout session"
	case errors.Is(err, billing.ErrSessionOtherUser):
		return http.StatusForbidden, "checkout session belongs to another user"
	case errors.Is(err, billing.ErrCustomerClaimed):
		return http.StatusForbidden, "stripe customer belongs to another user"
	case errors.Is(err, billing.ErrSessionExpired):
		return http.StatusGone, "checkout session expired"
	case errors.Is(err, billing.ErrUserNotFound):
		return http.StatusNotFound, "no billing record for this user"
	case errors.Is(err, billing.ErrEventNotFound):
		return http.StatusNotFound, "no such event"
	case errors.Is(err, billing.ErrInvalidUser):
		return http.StatusBadRequest, "invalid user_id"
	case errors.Is(err, billing.ErrInvalidFeature):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, stripeapi.ErrMalformed):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, stripeapi.ErrTimeout): // before ErrUnavailable, which it also is
		return http.StatusServiceUnavailable, "stripe did not answer in time, try again"
	case errors.Is(err, stripeapi.ErrUnavailable):
		return http.StatusServiceUnavailable, "stripe api unavailable, try again"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded), lockmgr.IsTransient(err),
		errors.Is(err, billing.ErrUnsettled):
		return http.StatusServiceUnavailable, "temporarily unavailable, try again"
	}
	return http.StatusInternalServerError, "internal error"
}

// eventFailureStatus is status for a Stripe event recorded as failed: a
// permanent failure answers 422, not 500. It is not transient, so a 5xx
// would invite retries, and the ledger keeps the event for a replay after
// the fix.
func eventFailureStatus(err error) (int, string) {
	code, reason := status(err)
	if code == http.StatusInternalServerError {
		return http.StatusUnprocessableEntity, "event could not be applied; recorded as failed"
	}
	return code, reason
}

// writeStatus writes err as status() maps it, with Retry-After on 502/503.
func writeStatus(w http.ResponseWriter, err error) int {
	code, reason := status(err)
	if code == http.StatusServiceUnavailable || code == http.StatusBadGateway {
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, code, reason)
	return code
}
