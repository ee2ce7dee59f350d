-- The index `lockstep prune` and LEDGER_RETENTION walk: settled events
-- (processed or ignored; failed ones are never pruned) by the time they were
-- settled. Each prune batch is then an index range scan of at most a batch of
-- rows, however large the ledger.
--
-- Not CONCURRENTLY: golang-migrate holds a session advisory lock while it
-- migrates, and replicas starting together wait for that lock inside a
-- statement; CREATE INDEX CONCURRENTLY waits for every such statement, and
-- PostgreSQL reports the deadlock (40P01). A plain build blocks writes to
-- stripe_events while it runs. On a large ledger, build it by hand first,
-- without blocking anything:
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS stripe_events_prune_idx
--       ON stripe_events (processed_at, event_id) WHERE status IN ('processed', 'ignored');
-- and this migration then finds it and does nothing.
CREATE INDEX IF NOT EXISTS stripe_events_prune_idx
    ON stripe_events (processed_at, event_id)
    WHERE status IN ('processed', 'ignored');
