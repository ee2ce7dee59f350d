package handlers

import (
	"errors"
	"io"
	"log/slog"
	"net/http"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/stripeapi"
)

// webhook receives Stripe events. Nothing is written for a request that is
// unsigned, too old, too large or not a Stripe event. A verified event is
// processed exactly once; a transient failure that outlived the retry budget
// answers 503 so Stripe redelivers it, and the ledger records it as failed.
func (s *server) webhook(w http.ResponseWriter, r *http.Request) {
	r = s.stripeBound(r)
	body, err := readBody(w, r, maxWebhookBody)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.refuse(w, r, http.StatusRequestEntityTooLarge, "too_large", "body over 1 MiB")
			return
		}
		s.refuse(w, r, http.StatusBadRequest, "unreadable", "cannot read body")
		return
	}
	idx, err := s.Verifier.Verify(body, r.Header.Get("Stripe-Signature"))
	if err != nil {
		kind := "signature"
		if errors.Is(err, stripeapi.ErrTooOld) {
			kind = "too_old"
		}
		s.refuse(w, r, http.StatusBadRequest, kind, err.Error())
		return
	}
	s.Metrics.SecretMatched(idx)
	ev, err := stripeapi.ParseEvent(body)
	if err != nil {
		s.refuse(w, r, http.StatusBadRequest, "malformed", err.Error())
		return
	}
	ctx := logging.With(r.Context(), slog.String("event_id", ev.ID), slog.String("event_type", ev.Type))
	// ProcessEvent parses the event's object before it writes anything: a
	// malformed object is refused there, so it is parsed once.
	res, err := s.Billing.ProcessEvent(ctx, ev)
	if errors.Is(err, stripeapi.ErrMalformed) {
		s.refuse(w, r.WithContext(ctx), http.StatusBadRequest, "malformed", err.Error())
		return
	}
	if err != nil {
		s.Metrics.WebhookEvent(ev.Type, string(billing.Failed))
		code, reason := eventFailureStatus(err)
		s.Log.ErrorContext(ctx, "webhook event failed", slog.Int("status", code), slog.String("error", err.Error()))
		if code >= 500 {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, code, reason)
		return
	}
	s.Metrics.WebhookEvent(ev.Type, string(res.Outcome))
	if res.Note != "" {
		s.Log.InfoContext(ctx, "webhook event", slog.String("outcome", string(res.Outcome)), slog.String("note", res.Note))
	}
	out := map[string]string{"status": string(res.Outcome)}
	if res.Note != "" {
		out["note"] = res.Note
	}
	writeJSON(w, http.StatusOK, out)
}

// refuse answers a webhook that no redelivery can mend with code and
// reason, counts it by kind, and puts both in the request's log line. The
// reason is the verifier's or parser's, which names no secret, signature
// or body content beyond ids.
func (s *server) refuse(w http.ResponseWriter, r *http.Request, code int, kind, reason string) {
	if kind != "unreadable" {
		s.Metrics.WebhookRejected(kind)
	}
	logging.With(r.Context(), slog.String("refused", kind), slog.String("reason", reason))
	writeError(w, code, reason)
}

// readBody reads the request body, at most limit bytes (a longer one fails
// with *http.MaxBytesError). A body that declares its length (net/http ends
// it there) is read into one buffer of that size rather than a growing one.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, limit)
	if n := r.ContentLength; n > 0 && n <= limit {
		b := make([]byte, n)
		if _, err := io.ReadFull(body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	return io.ReadAll(body)
}
