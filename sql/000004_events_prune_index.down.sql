DROP INDEX CONCURRENTLY IF EXISTS stripe_events_prune_idx
