package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/lockstep/lockstep/logging"
)

func decode(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not a JSON line: %v: %s", err, l)
		}
		out = append(out, m)
	}
	return out
}

// Lines logged with a context carry its attributes; the request scope
// gathers what deeper code added, for the request's closing line.
func TestLogsContextAndScope(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := logging.New(&buf, slog.LevelInfo)

	ctx := logging.WithScope(logging.With(context.Background(), slog.String("request_id", "r1")))
	inner := logging.With(ctx, slog.String("event_id", "evt_1"), slog.String("event_type", "a"))
	inner = logging.With(inner, slog.String("event_type", "b"))
	log.InfoContext(inner, "inner")
	log.InfoContext(inner, "explicit", slog.String("event_id", "evt_1"))
	log.LogAttrs(ctx, slog.LevelInfo, "http request", logging.ScopeAttrs(ctx)...)
	log.InfoContext(context.Background(), "plain")

	lines := decode(t, &buf)
	if len(lines) != 4 {
		t.Fatalf("%d lines", len(lines))
	}
	explicit := strings.Split(strings.TrimSpace(buf.String()), "\n")[1]
	if strings.Count(explicit, `"event_id"`) != 1 || strings.Count(explicit, `"event_type"`) != 1 ||
		lines[1]["request_id"] != "r1" || lines[1]["event_type"] != "b" {
		t.Errorf("a line naming event_id itself repeats it or loses the context: %s", explicit)
	}
	lines = append(lines[:1], lines[2:]...)
	if l := lines[0]; l["request_id"] != "r1" || l["event_id"] != "evt_1" || l["event_type"] != "b" {
		t.Errorf("inner line: %v", l)
	}
	if l := lines[1]; l["request_id"] != "r1" || l["event_id"] != "evt_1" || l["event_type"] != "b" {
		t.Errorf("request line lacks the scope's attributes (last value wins): %v", l)
	}
	if got := len(logging.ScopeAttrs(ctx)); got != 2 {
		t.Errorf("scope holds %d attributes, want event_id and event_type once each", got)
	}
	if strings.Count(buf.String(), `"request_id"`) != 3 {
		t.Errorf("request_id repeated on a line:\n%s", buf.String())
	}
	if _, ok := lines[2]["request_id"]; ok {
		t.Errorf("attributes leaked to an unrelated context: %v", lines[2])
	}
	if logging.ScopeAttrs(context.Background()) != nil {
		t.Error("ScopeAttrs without a scope")
	}
}

// Stripe secrets are masked wherever they appear in a string value, the
// message included.
func TestLogsMaskSecrets(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := logging.New(&buf, slog.LevelDebug)
	err := errors.New(`stripe: invalid key sk_live_ABCdef123456 for whsec_SECRETbody99`)
	log.Error("failed with rk_test_XYZ987", slog.String("error", err.Error()),
		slog.Group("g", slog.String("k", "sk_test_nested0001")), slog.String("key", "rk_bareKEY42"), slog.Int("n", 3))
	out := buf.String()
	for _, secret := range []string{"ABCdef123456", "SECRETbody99", "XYZ987", "nested0001", "bareKEY42"} {
		if strings.Contains(out, secret) {
			t.Errorf("log shows %q: %s", secret, out)
		}
	}
	for _, kept := range []string{"sk_live_****", "whsec_****", "rk_test_****", "sk_test_****", `"n":3`} {
		if !strings.Contains(out, kept) {
			t.Errorf("log lacks %q: %s", kept, out)
		}
	}
}

// AppendScopeAttrs (the access-log line's allocation-free form) appends
// what ScopeAttrs returns, after the caller's own attributes, which it
// leaves alone even when a scope attribute has the same key.
func TestAppendScopeAttrsMatchesScopeAttrs(t *testing.T) {
	t.Parallel()
	ctx := logging.WithScope(context.Background())
	ctx = logging.With(ctx, slog.String("event_id", "evt_1"), slog.String("event_type", "a"))
	ctx = logging.With(ctx, slog.String("customer", "cus_1"), slog.String("event_type", "b"))
	ctx = logging.With(ctx, slog.String("status", "scope"))
	own := []slog.Attr{slog.String("method", "GET"), slog.Int("status", 200)}
	got := logging.AppendScopeAttrs(ctx, own)
	want := append([]slog.Attr{slog.String("method", "GET"), slog.Int("status", 200)}, logging.ScopeAttrs(ctx)...)
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Errorf("attribute %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if len(want) != 6 || want[3].Value.String() != "b" {
		t.Errorf("scope: %v (want event_id, event_type=b, customer, status once each)", want[2:])
	}
	if got := logging.AppendScopeAttrs(context.Background(), own); len(got) != len(own) {
		t.Errorf("without a scope: %v", got)
	}
}
