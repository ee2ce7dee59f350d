DROP INDEX IF EXISTS stripe_events_prune_idx;
