-- lockstep's copy of Stripe billing state. Every row below that belongs to a
-- customer is written only inside a transaction holding
-- pg_advisory_xact_lock(hashtext(stripe_customer_id)).

CREATE TABLE stripe_customers (
    stripe_customer_id text PRIMARY KEY
        CHECK (stripe_customer_id <> '' AND length(stripe_customer_id) <= 255),
    -- The app's user this customer belongs to. A user maps to at most one
    -- customer; rewriting this column also takes the user's advisory lock.
    user_id            text UNIQUE
        CHECK (user_id IS NULL OR (user_id <> '' AND length(user_id) <= 255)),
    -- Stripe creation time of the object that linked user_id (the checkout
    -- session, or the customer for metadata links): with the customer id it
    -- orders competing links, the newest authoritative one wins.
    linked_at          timestamptz,
    deleted            boolean NOT NULL DEFAULT false,
    -- The advisory lock key, stored so the lock view is an index lookup.
    lock_key           integer GENERATED ALWAYS AS (hashtext(stripe_customer_id)) STORED,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_customers_lock_key_idx ON stripe_customers (lock_key);
CREATE INDEX stripe_customers_user_lock_key_idx ON stripe_customers (hashtext(user_id))
    WHERE user_id IS NOT NULL;

CREATE TABLE stripe_subscriptions (
    stripe_subscription_id text PRIMARY KEY
        CHECK (stripe_subscription_id <> '' AND length(stripe_subscription_id) <= 255),
    stripe_customer_id     text NOT NULL REFERENCES stripe_customers (stripe_customer_id),
    status                 text NOT NULL,
    price_id               text,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    -- Stripe time of the snapshot stored here (event created, or the moment
    -- lockstep fetched the object): an older snapshot never overwrites it.
    source_time            timestamptz NOT NULL,
    -- Event id or "api" for a fetched snapshot, for the reader's benefit.
    source                 text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_subscriptions_customer_idx ON stripe_subscriptions (stripe_customer_id);

CREATE TABLE stripe_invoices (
    stripe_invoice_id      text PRIMARY KEY
        CHECK (stripe_invoice_id <> '' AND length(stripe_invoice_id) <= 255),
    stripe_customer_id     text NOT NULL REFERENCES stripe_customers (stripe_customer_id),
    stripe_subscription_id text,
    status                 text NOT NULL,
    amount_due             bigint NOT NULL DEFAULT 0,
    amount_paid            bigint NOT NULL DEFAULT 0,
    currency               text NOT NULL DEFAULT '',
    source_time            timestamptz NOT NULL,
    source                 text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_invoices_customer_idx ON stripe_invoices (stripe_customer_id);

-- The webhook ledger: one row per Stripe event id, written in the same
-- transaction as the event's mutation (processed), after its rollback
-- (failed), or alone (ignored).
CREATE TABLE stripe_events (
    event_id           text PRIMARY KEY CHECK (event_id <> '' AND length(event_id) <= 255),
    type               text NOT NULL,
    api_version        text NOT NULL DEFAULT '',
    stripe_customer_id text,
    stripe_created     timestamptz NOT NULL,
    status             text NOT NULL CHECK (status IN ('processed', 'failed', 'ignored')),
    attempts           integer NOT NULL DEFAULT 1 CHECK (attempts >= 0),
    last_error         text,
    payload            jsonb NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now(),
    processed_at       timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_failed_idx ON stripe_events (stripe_created, event_id)
    WHERE status = 'failed';
CREATE INDEX stripe_events_customer_idx ON stripe_events (stripe_customer_id, stripe_created);
