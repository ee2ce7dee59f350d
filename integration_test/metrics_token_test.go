package integration_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lockstep/lockstep/app"
	"github.com/lockstep/lockstep/logging"
)

// With METRICS_TOKEN set, /metrics answers 401 to a request without it (no
// header, another scheme, a wrong token, the app's or the admin's token)
// and the Prometheus text to one with it; without it, /metrics is open.
func TestMetricsToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const token = "metrics-token-0123456789"
	b.cfg.MetricsToken = token
	a := app.NewServer(b.cfg, b.db.Pool, logging.New(b.logs, slog.LevelDebug))
	srv := httptest.NewServer(a.Handler)
	t.Cleanup(srv.Close)

	get := func(url, auth string) (int, string, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url+"/metrics", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		res, err := b.client.Do(req)
		if err != nil {
			t.Fatalf("GET /metrics: %v", err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header.Get("WWW-Authenticate"), string(body)
	}
	for _, auth := range []string{"", token, "Basic " + token, "Bearer", "Bearer ", "Bearer wrong-token-0123456789",
		"Bearer " + token + "x", "Bearer " + appToken, "Bearer " + adminToken, "bearer " + token} {
		code, challenge, body := get(srv.URL, auth)
		if code != http.StatusUnauthorized || challenge == "" || strings.Contains(body, "lockstep_") {
			t.Errorf("Authorization %q: %d (WWW-Authenticate %q) %.100s, want 401 without metrics", auth, code, challenge, body)
		}
	}
	code, _, body := get(srv.URL, "Bearer "+token)
	if code != http.StatusOK || !strings.Contains(body, "lockstep_ledger_events") {
		t.Fatalf("with the token: %d %.200s, want 200 with the metrics", code, body)
	}
	if strings.Contains(b.logs.String(), token) {
		t.Fatal("the metrics token is in the logs")
	}
	// The bundle's own server has no METRICS_TOKEN: open.
	if code, _, body := get(b.srv.URL, ""); code != http.StatusOK || !strings.Contains(body, "lockstep_") {
		t.Fatalf("without METRICS_TOKEN: %d, want 200", code)
	}
}
