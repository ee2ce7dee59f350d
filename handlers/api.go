package handlers

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gorilla/mux"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/stripeapi"
	"github.com/lockstep/lockstep/userid"
)

// maxCheckoutBody is the largest success-call body accepted; a real one is
// under 1 KiB.
const maxCheckoutBody = 64 << 10

// errTrailing is a success-call body with more after its JSON object.
var errTrailing = errors.New("trailing data after the JSON object")

type checkoutRequest struct {
	SessionID string `json:"session_id"`
	UserID    string `json:"user_id"`
}

type checkoutResponse struct {
	Redirect string `json:"redirect"`
	*billing.CheckoutResult
	// Access is the paywall's decision read after the success write
	// committed: what GET /api/users/{user_id}/access answers.
	Access *billing.Access `json:"access,omitempty"`
}

// checkoutSuccess syncs a checkout session for the success page.
func (s *server) checkoutSuccess(w http.ResponseWriter, r *http.Request) {
	r = s.stripeBound(r)
	if r.ContentLength > maxCheckoutBody {
		writeError(w, http.StatusRequestEntityTooLarge, "body over 64 KiB")
		return
	}
	var req checkoutRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCheckoutBody))
	err := dec.Decode(&req)
	var tooBig *http.MaxBytesError
	if err == nil { // then the body must end: anything more is refused
		switch _, err = dec.Token(); {
		case errors.Is(err, io.EOF):
			err = nil
		case !errors.As(err, &tooBig):
			err = errTrailing
		}
	}
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "body over 64 KiB")
		return
	case errors.Is(err, errTrailing):
		writeError(w, http.StatusBadRequest, "body must hold one JSON object")
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "body must be JSON {\"session_id\": \"cs_...\", \"user_id\": \"...\"}")
		return
	}
	switch {
	case !stripeapi.ValidID(req.SessionID, "cs_"):
		writeError(w, http.StatusBadRequest, "session_id must be a checkout session id (cs_...)")
		return
	case !userid.Valid(req.UserID):
		writeError(w, http.StatusBadRequest, "user_id must be 1 to 255 characters without control characters")
		return
	}
	ctx := logging.With(r.Context(), slog.String("session_id", req.SessionID))
	res, err := s.Billing.SyncCheckout(ctx, req.SessionID, req.UserID)
	if err != nil {
		code := writeStatus(w, err)
		s.Metrics.CheckoutOutcome(outcomeLabel(code))
		level := slog.LevelWarn
		if code >= 500 {
			level = slog.LevelError
		}
		s.Log.Log(ctx, level, "checkout success failed", slog.Int("status", code), slog.String("error", err.Error()))
		return
	}
	// The success write has committed: the decision read now is the one the
	// paywall gives from here on, so the two never disagree.
	access, err := s.Billing.Access(ctx, req.UserID, "")
	if err != nil {
		code := writeStatus(w, err)
		s.Metrics.CheckoutOutcome(outcomeLabel(code))
		s.Log.ErrorContext(ctx, "checkout success: access read failed", slog.Int("status", code), slog.String("error", err.Error()))
		return
	}
	s.Metrics.AccessDecision(access.State)
	if !res.Paid {
		s.Metrics.CheckoutOutcome("pending")
		writeJSON(w, http.StatusAccepted, checkoutResponse{Redirect: "/checkout/processing", CheckoutResult: res, Access: access})
		return
	}
	s.Metrics.CheckoutOutcome("paid")
	writeJSON(w, http.StatusOK, checkoutResponse{Redirect: "/dashboard", CheckoutResult: res, Access: access})
}

// userBilling serves the paywall's read.
func (s *server) userBilling(w http.ResponseWriter, r *http.Request) {
	v, err := s.Billing.UserBilling(r.Context(), mux.Vars(r)["user_id"])
	if err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// userAccess serves the paywall's decision:
// GET /api/users/{user_id}/access[?feature=KEY].
func (s *server) userAccess(w http.ResponseWriter, r *http.Request) {
	user := mux.Vars(r)["user_id"]
	if !userid.Valid(user) {
		writeError(w, http.StatusBadRequest, "user_id must be 1 to 255 characters without control characters")
		return
	}
	feature := ""
	if vs, ok := queryValues(r)["feature"]; ok {
		if len(vs) != 1 {
			writeError(w, http.StatusBadRequest, "feature may be given once")
			return
		}
		feature = vs[0]
		if err := billing.CheckFeatureKey(feature); err != nil {
			writeError(w, http.StatusBadRequest, strings.TrimPrefix(err.Error(), billing.ErrInvalidFeature.Error()+": "))
			return
		}
	}
	a, err := s.Billing.Access(r.Context(), user, feature)
	if err != nil {
		code := writeStatus(w, err)
		s.Log.ErrorContext(r.Context(), "access read failed", slog.Int("status", code), slog.String("error", err.Error()))
		return
	}
	s.Metrics.AccessDecision(a.State)
	writeJSON(w, http.StatusOK, a)
}

// queryValues is r's query, parsed only when there is one (most paywall
// reads have none).
func queryValues(r *http.Request) map[string][]string {
	if r.URL.RawQuery == "" {
		return nil
	}
	return r.URL.Query()
}

// outcomeLabel names a failed call's status for metrics: "not_found", ...
func outcomeLabel(code int) string {
	return strings.ReplaceAll(strings.ToLower(http.StatusText(code)), " ", "_")
}
