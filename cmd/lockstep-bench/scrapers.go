package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// scrapers runs n goroutines that scrape the target's /metrics while the
// load runs (-scrapers, -scrape-interval), as a crowd of Prometheus servers
// (or anonymous scrapers) would: the webhook latencies of a level with scrapers against one without
// show what scraping costs the requests that matter.
type scrapers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	took   []time.Duration
	errs   int
}

// Each sends token as a bearer token when set, and waits interval between
// its scrapes (0: none); they start spread over the interval.
func startScrapers(ctx context.Context, t *target, token string, n int, interval time.Duration) *scrapers {
	ctx, cancel := context.WithCancel(ctx)
	s := &scrapers{cancel: cancel}
	client := newHTTPClient(n)
	for i := range n {
		s.wg.Go(func() {
			pause := func(d time.Duration) {
				timer := time.NewTimer(d)
				defer timer.Stop()
				select {
				case <-ctx.Done():
				case <-timer.C:
				}
			}
			if interval > 0 {
				pause(interval * time.Duration(i) / time.Duration(n))
			}
			for ctx.Err() == nil {
				start := time.Now()
				err := scrapeOnce(ctx, client, t.base, token)
				d := time.Since(start)
				s.mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						s.errs++
					}
				} else {
					s.took = append(s.took, d)
				}
				s.mu.Unlock()
				if interval > 0 {
					pause(interval)
				}
			}
		})
	}
	return s
}

// stop ends the scrapes and returns how long each took, and the failures.
func (s *scrapers) stop() ([]time.Duration, int) {
	s.cancel()
	s.wg.Wait()
	return s.took, s.errs
}

// scrapeOnce reads /metrics and discards it (parsing is the scraper's cost,
// not lockstep's).
func scrapeOnce(ctx context.Context, client *http.Client, base, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", res.StatusCode)
	}
	return nil
}

// fillLedger brings stripe_events up to rows rows (-ledger-rows) with
// processed events of no customer, ids evt_benchfill_N, payloads of about a
// kilobyte as a real event's, then vacuums and analyzes it, as an old
// deployment's ledger would be. It returns how many it inserted.
func fillLedger(ctx context.Context, pool *pgxpool.Pool, rows int) (int, error) {
	var have int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM stripe_events`).Scan(&have); err != nil {
		return 0, fmt.Errorf("count the ledger: %w", err)
	}
	add := rows - have
	if add <= 0 {
		return 0, nil
	}
	_, err := pool.Exec(ctx, `
INSERT INTO stripe_events (event_id, type, stripe_created, status, payload, processed_at)
SELECT 'evt_benchfill_' || i, 'customer.subscription.updated', now() - i * interval '1 second', 'processed',
       jsonb_build_object('id', 'evt_benchfill_' || i, 'object', 'event', 'type', 'customer.subscription.updated',
                          'data', jsonb_build_object('object', jsonb_build_object('id', 'sub_benchfill_' || i, 'pad', repeat('x', 900)))),
       now()
FROM generate_series(1, $1) AS i
ON CONFLICT (event_id) DO NOTHING`, add)
	if err != nil {
		return 0, fmt.Errorf("fill the ledger: %w", err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE stripe_events`); err != nil {
		return add, fmt.Errorf("vacuum the ledger: %w", err)
	}
	return add, nil
}

// removeFill deletes the rows fillLedger inserted.
func removeFill(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `DELETE FROM stripe_events WHERE event_id LIKE 'evt\_benchfill\_%'`); err != nil {
		return fmt.Errorf("remove the ledger fill: %w", err)
	}
	return nil
}
