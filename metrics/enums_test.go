package metrics

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// An unknown value is counted every time and warned about once per value;
// past maxEnumValues distinct values, the rest count as "other".
func TestUnknownEnum(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	ctx := context.Background()
	for range 3 {
		UnknownEnum(ctx, log, "subscription", "status", "test_awaiting_approval")
	}
	if n := count(t, "subscription", "status", "test_awaiting_approval"); n != 3 {
		t.Fatalf("counted %v, want 3", n)
	}
	if n := strings.Count(logs.String(), "test_awaiting_approval"); n != 1 {
		t.Fatalf("warned %d times, want once:\n%s", n, logs.String())
	}
	for i := range maxEnumValues + 5 {
		UnknownEnum(ctx, nil, "invoice", "status", fmt.Sprintf("test_value_%d", i))
	}
	if n := len(enumSeen.m); n > maxEnumValues {
		t.Fatalf("%d values kept, want at most %d", n, maxEnumValues)
	}
	if n := count(t, "invoice", "status", "other"); n < 5 {
		t.Fatalf("other counted %v, want at least 5", n)
	}
}

func count(t *testing.T, labels ...string) float64 {
	t.Helper()
	var m dto.Metric
	if err := unknownEnums.WithLabelValues(labels...).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
