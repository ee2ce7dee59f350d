package handlers

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/stripeapi"
)

func (s *server) adminLocks(w http.ResponseWriter, r *http.Request) {
	locks, err := s.Locks(r.Context())
	if err != nil {
		s.Log.ErrorContext(r.Context(), "list locks", slog.String("error", err.Error()))
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"locks": locks})
}

func (s *server) adminEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	st := q.Get("status")
	switch st {
	case "", billing.StatusProcessed, billing.StatusFailed, billing.StatusIgnored:
	default:
		writeError(w, http.StatusBadRequest, "status must be processed, failed or ignored")
		return
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "limit must be a number from 1 to 1000")
			return
		}
		limit = n
	}
	events, err := s.Billing.ListEvents(r.Context(), st, limit)
	if err != nil {
		writeStatus(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": events})
}

// adminReplay processes a stored event again, through the same lock and
// ledger as a live delivery: a processed or ignored event answers
// "duplicate" and changes nothing.
func (s *server) adminReplay(w http.ResponseWriter, r *http.Request) {
	r = s.stripeBound(r)
	id := mux.Vars(r)["event_id"]
	if !stripeapi.ValidID(id, "evt_") {
		writeError(w, http.StatusBadRequest, "event id must be evt_...")
		return
	}
	ctx := logging.With(r.Context(), slog.String("event_id", id))
	res, err := s.Billing.Replay(ctx, id)
	if errors.Is(err, billing.ErrEventNotFound) {
		s.Metrics.Replayed("not_found")
		writeStatus(w, err)
		return
	}
	s.Metrics.Replayed(string(res.Outcome))
	if err != nil {
		code, _ := eventFailureStatus(err)
		s.Log.WarnContext(ctx, "replay failed", slog.Int("status", code), slog.String("error", err.Error()))
		if code == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeJSON(w, code, res)
		return
	}
	s.Log.InfoContext(ctx, "event replayed", slog.String("outcome", string(res.Outcome)))
	writeJSON(w, http.StatusOK, res)
}
