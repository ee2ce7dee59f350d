-- The index `lockstep prune` and LEDGER_RETENTION walk: settled events
-- (processed or ignored; failed ones are never pruned) by the time they were
-- settled. Each prune batch is then an index range scan of at most a batch of
-- rows, however large the ledger.
--
-- CONCURRENTLY, so that adding it to a large ledger does not block webhook
-- inserts while it builds. It runs outside a transaction, so this file holds
-- this one statement only. Should the build fail, PostgreSQL leaves an
-- INVALID index behind: DROP INDEX CONCURRENTLY stripe_events_prune_idx,
-- clear the dirty flag, and migrate again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS stripe_events_prune_idx
    ON stripe_events (processed_at, event_id)
    WHERE status IN ('processed', 'ignored')
