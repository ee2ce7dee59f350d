package metrics_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lockstep/lockstep/metrics"
)

// lockstep_ready follows the check at every scrape.
func TestMetricsReady(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	var down atomic.Bool
	m.RegisterReady(func(context.Context) error {
		if down.Load() {
			return errors.New("database down")
		}
		return nil
	})
	if body := scrape(t, m); !strings.Contains(body, "\nlockstep_ready 1\n") {
		t.Errorf("ready check passing, /metrics lacks lockstep_ready 1")
	}
	down.Store(true)
	if body := scrape(t, m); !strings.Contains(body, "\nlockstep_ready 0\n") {
		t.Errorf("ready check failing, /metrics lacks lockstep_ready 0")
	}
}
