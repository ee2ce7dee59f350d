-- One webhook event as lockstep processes it: the transaction lockstep runs for
-- a new customer.subscription.updated event, statement for statement, with
-- the same SQL text (billing/events.go, customers.go, subscriptions.go and
-- lockmgr/tx.go) and in the same round trips: lockstep sends BEGIN, the lock
-- and the event's statements as one pipelined batch, then COMMIT. lockstep's
-- bind parameters are replaced by pgbench variables.
-- billing's TestPgbenchScriptMirrorsEvent fails when they drift.
--
-- Variables: customers (how many customers the load spreads over; 1 for one
-- hot customer) and payload (the event's JSON, stored in the ledger). Run it
-- with -M prepared (the payload is a parameter, lockstep's pgx runs cached
-- prepared statements too, and pipelines need the extended protocol):
--   pgbench -n -M prepared -c 16 -j 2 -T 10 -D customers=1000 -D payload='{}' -f event.sql DB
--
-- Each customer has one subscription, whose snapshot time is the wall clock
-- at the upsert (so every event is newer than the stored one and is applied,
-- the costliest path). Event ids are random 63-bit numbers: unique in practice.
\set c random(1, :customers)
\set e random(1, 9223372036854775806)
\startpipeline
BEGIN;
SELECT set_config('lock_timeout', '1500ms', true),
       set_config('statement_timeout', '5000ms', true),
       set_config('application_name', 'pgbench webhook evt_ref', true),
       clock_timestamp(),
       pg_advisory_xact_lock(hashtext('cus_ref_' || CAST(:c AS text)))::text,
       clock_timestamp();
SELECT status FROM stripe_events WHERE event_id = 'evt_ref_' || CAST(:e AS text);
INSERT INTO stripe_customers (stripe_customer_id) VALUES ('cus_ref_' || CAST(:c AS text)) ON CONFLICT DO NOTHING;
INSERT INTO stripe_subscriptions AS s (stripe_subscription_id, stripe_customer_id, status, price_id,
    current_period_end, cancel_at_period_end, source_time, source, trial_end, current_period_start, latest_invoice)
VALUES ('sub_ref_' || CAST(:c AS text), 'cus_ref_' || CAST(:c AS text), 'active', 'price_ref',
    now() + interval '30 days', false, clock_timestamp(), 'evt_ref_' || CAST(:e AS text), NULL, now(), NULL)
ON CONFLICT (stripe_subscription_id) DO UPDATE SET
    status = excluded.status,
    price_id = coalesce(excluded.price_id, s.price_id),
    current_period_end = coalesce(excluded.current_period_end, s.current_period_end),
    current_period_start = coalesce(excluded.current_period_start, s.current_period_start),
    trial_end = excluded.trial_end,
    latest_invoice = coalesce(excluded.latest_invoice, s.latest_invoice),
    cancel_at_period_end = excluded.cancel_at_period_end,
    source_time = greatest(s.source_time, excluded.source_time),
    source = excluded.source,
    updated_at = now()
WHERE s.stripe_customer_id = excluded.stripe_customer_id
  AND s.status NOT IN ('canceled', 'incomplete_expired')
  AND (excluded.source_time > s.source_time
       OR excluded.status IN ('canceled', 'incomplete_expired')
       OR (excluded.source_time = s.source_time AND s.xmin::text = NULL))
  AND ((s.status, s.price_id, s.current_period_end, s.current_period_start, s.trial_end, s.latest_invoice,
        s.cancel_at_period_end)
       IS DISTINCT FROM
       (excluded.status, coalesce(excluded.price_id, s.price_id),
        coalesce(excluded.current_period_end, s.current_period_end),
        coalesce(excluded.current_period_start, s.current_period_start), excluded.trial_end,
        coalesce(excluded.latest_invoice, s.latest_invoice), excluded.cancel_at_period_end)
       OR (excluded.source <> 'api' AND excluded.source_time > s.source_time))
RETURNING status, coalesce(price_id, ''), current_period_end, cancel_at_period_end, s.price_id IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM stripe_prices pr WHERE pr.stripe_price_id = s.price_id
    AND (pr.deleted OR EXISTS (SELECT 1 FROM stripe_products p WHERE p.stripe_product_id = pr.stripe_product_id)));
INSERT INTO stripe_events (event_id, type, api_version, stripe_customer_id, stripe_created, status,
    attempts, last_error, payload, processed_at)
VALUES ('evt_ref_' || CAST(:e AS text), 'customer.subscription.updated', '2023-10-16', 'cus_ref_' || CAST(:c AS text), now(), 'processed', 1, NULL, :payload, now())
ON CONFLICT (event_id) DO UPDATE SET
    status = 'processed', attempts = stripe_events.attempts + 1, last_error = excluded.last_error,
    processed_at = now(), updated_at = now();
\endpipeline
COMMIT;
