package billing

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/lockstep/lockstep/stripeapi"
)

// ReplayResult is the outcome of replaying one stored event.
type ReplayResult struct {
	EventID string  `json:"event_id"`
	Outcome Outcome `json:"outcome"`
	Error   string  `json:"error,omitempty"`
}

// Replay processes a stored event again through the same lock and ledger as
// a live delivery: a processed or ignored event changes nothing.
func (s *Service) Replay(ctx context.Context, eventID string) (ReplayResult, error) {
	var payload []byte
	err := s.db.QueryRow(ctx, `SELECT payload::text FROM stripe_events WHERE event_id = $1`, eventID).Scan(&payload)
	if isNoRows(err) {
		return ReplayResult{EventID: eventID}, ErrEventNotFound
	}
	if err != nil {
		return ReplayResult{EventID: eventID}, fmt.Errorf("load event %s: %w", eventID, err)
	}
	ev, err := stripeapi.ParseEvent(payload)
	if err != nil {
		return ReplayResult{EventID: eventID}, fmt.Errorf("parse stored event %s: %w", eventID, err)
	}
	res, err := s.processEvent(ctx, ev, "replay")
	out := ReplayResult{EventID: eventID, Outcome: res.Outcome}
	if err != nil {
		out.Outcome, out.Error = Failed, err.Error()
	}
	return out, err
}

// ReplayFailed replays every failed event, oldest Stripe time first, so each
// customer's events apply in the order Stripe created them. It goes on past
// events that fail again and reports each.
func (s *Service) ReplayFailed(ctx context.Context) ([]ReplayResult, error) {
	rows, err := s.db.Query(ctx, `SELECT event_id FROM stripe_events WHERE status = 'failed' ORDER BY stripe_created, event_id`)
	if err != nil {
		return nil, fmt.Errorf("list failed events: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list failed events: %w", err)
	}
	out := make([]ReplayResult, 0, len(ids))
	for _, id := range ids {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		r, _ := s.Replay(ctx, id)
		out = append(out, r)
	}
	return out, nil
}
