// Package handlers is lockstep's HTTP surface: it reads requests, calls
// billing, and writes responses. It holds no business rules; domain errors
// become HTTP statuses in one place (status.go).
package handlers

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/lockstep/lockstep/billing"
	"github.com/lockstep/lockstep/lockmgr"
	"github.com/lockstep/lockstep/logging"
	"github.com/lockstep/lockstep/metrics"
	"github.com/lockstep/lockstep/stripeapi"
)

// maxWebhookBody is the largest webhook body accepted (Stripe's are far
// smaller).
const maxWebhookBody = 1 << 20

// Deps is what the handlers need.
type Deps struct {
	Billing    *billing.Service
	Verifier   *stripeapi.Verifier
	Metrics    *metrics.Metrics
	Log        *slog.Logger
	AppToken   string
	AdminToken string
	// MetricsToken, when set, is the bearer token /metrics requires.
	MetricsToken string
	// Ready reports whether the database is reachable and migrated.
	Ready func(ctx context.Context) error
	// Locks lists the advisory locks held or awaited now.
	Locks func(ctx context.Context) ([]lockmgr.LockInfo, error)
	// StripeDeadline bounds the Stripe time of one request (the success
	// call's read, a webhook's same-second read): past it the request
	// answers 503 with Retry-After. 0 is no bound beyond the client's own.
	StripeDeadline time.Duration
}

type server struct {
	Deps
	appToken, adminToken, metricsToken [sha256.Size]byte
}

// New returns the HTTP handler with every route.
func New(d Deps) http.Handler {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Metrics == nil {
		d.Metrics = metrics.New()
	}
	s := &server{Deps: d, appToken: sha256.Sum256([]byte(d.AppToken)), adminToken: sha256.Sum256([]byte(d.AdminToken))}
	r := mux.NewRouter()
	r.Use(s.observe)
	r.HandleFunc("/webhooks/stripe", s.webhook).Methods(http.MethodPost)
	api := r.PathPrefix("/api").Subrouter()
	api.Use(s.requireToken(&s.appToken))
	api.HandleFunc("/checkout/success", s.checkoutSuccess).Methods(http.MethodPost)
	api.HandleFunc("/users/{user_id}/billing", s.userBilling).Methods(http.MethodGet)
	api.HandleFunc("/users/{user_id}/access", s.userAccess).Methods(http.MethodGet)
	admin := r.PathPrefix("/admin").Subrouter()
	admin.Use(s.requireToken(&s.adminToken))
	admin.HandleFunc("/locks", s.adminLocks).Methods(http.MethodGet)
	admin.HandleFunc("/events", s.adminEvents).Methods(http.MethodGet)
	admin.HandleFunc("/events/{event_id}/replay", s.adminReplay).Methods(http.MethodPost)
	r.HandleFunc("/healthz", s.healthz).Methods(http.MethodGet)
	r.HandleFunc("/readyz", s.readyz).Methods(http.MethodGet)
	metricsHandler := d.Metrics.Handler()
	if d.MetricsToken != "" {
		s.metricsToken = sha256.Sum256([]byte(d.MetricsToken))
		metricsHandler = s.requireToken(&s.metricsToken)(metricsHandler)
	}
	r.Handle("/metrics", metricsHandler).Methods(http.MethodGet)
	r.NotFoundHandler = s.observe(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	}))
	r.MethodNotAllowedHandler = s.observe(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
	}))
	return r
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// observe gives each request an id, recovers panics, logs one line per
// request (route template, never the path or query: they can hold ids of
// people) and records latency.
func (s *server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			id = newRequestID()
		}
		w.Header().Set("X-Request-Id", id)
		// The scope starts after request_id, so it gathers only what the
		// handler adds (event_id, session_id...) for the access-log line.
		ctx := logging.WithScope(logging.With(r.Context(), slog.String("request_id", id)))
		r = r.WithContext(ctx)
		route := "unmatched"
		if cr := mux.CurrentRoute(r); cr != nil {
			if t, err := cr.GetPathTemplate(); err == nil {
				route = t
			}
		}
		sw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.Log.ErrorContext(ctx, "panic serving request", slog.String("route", route), slog.Any("panic", p))
				if sw.code == 0 {
					writeError(sw, http.StatusInternalServerError, "internal error")
				}
			}
			d := time.Since(start)
			s.Metrics.ObserveHTTP(route, sw.code, d)
			level := slog.LevelInfo
			if route == "/healthz" || route == "/readyz" || route == "/metrics" {
				level = slog.LevelDebug
			}
			if !s.Log.Enabled(ctx, level) {
				return
			}
			var buf [8]slog.Attr
			attrs := append(buf[:0], slog.String("method", r.Method), slog.String("route", route),
				slog.Int("status", sw.code), slog.Duration("duration", d))
			attrs = logging.AppendScopeAttrs(ctx, attrs)
			s.Log.LogAttrs(ctx, level, "http request", attrs...)
		}()
		next.ServeHTTP(sw, r)
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// newRequestID is 16 random hex digits (one allocation: the string).
func newRequestID() string {
	var b [8]byte
	var h [16]byte
	_, _ = rand.Read(b[:])
	hex.Encode(h[:], b[:])
	return string(h[:])
}

// requireToken checks "Authorization: Bearer <token>" in constant time.
func (s *server) requireToken(want *[sha256.Size]byte) mux.MiddlewareFunc {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			got := sha256.Sum256([]byte(token))
			if !ok || token == "" || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="lockstep"`)
				writeError(w, http.StatusUnauthorized, "missing or invalid bearer token")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, reason string) {
	writeJSON(w, code, map[string]string{"error": reason})
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	if s.Ready != nil {
		if err := s.Ready(ctx); err != nil {
			s.Log.WarnContext(ctx, "not ready", slog.String("error", err.Error()))
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": notReadyReason(err)})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// readyTimeout bounds a readiness check: a database that does not answer in
// time is not ready, and the probe must never hang on it.
const readyTimeout = 2 * time.Second

// notReadyReason is what an unauthenticated caller of /readyz may read. The
// readiness check's own findings (a schema version) wrap nothing and are
// shown; a driver's error can name the host, user and database, so it is
// only logged.
func notReadyReason(err error) string {
	if errors.Unwrap(err) == nil {
		return err.Error()
	}
	return "database unreachable"
}

// stripeBound bounds the Stripe work of a request that needs Stripe (the
// webhook, the success call, a replay) by StripeDeadline, inside the
// server's write timeout; the other routes pay nothing for it.
func (s *server) stripeBound(r *http.Request) *http.Request {
	return r.WithContext(stripeapi.WithDeadline(r.Context(), s.StripeDeadline))
}
