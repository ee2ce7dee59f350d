-- The paywall: the catalog (products, prices) and each customer's active
-- Stripe Entitlements, which the access decision reads, and the fields of
-- subscriptions and invoices that decide the next step without a Stripe call.

-- Products and prices are account-wide, not a customer's: they are written
-- outside any customer lock, each by one upsert ordered by Stripe's clock
-- (source_time), so an older snapshot delivered late never wins, and a
-- deleted one stays deleted.
CREATE TABLE stripe_products (
    stripe_product_id text PRIMARY KEY
        CHECK (stripe_product_id <> '' AND length(stripe_product_id) <= 255),
    name              text NOT NULL DEFAULT '',
    active            boolean NOT NULL DEFAULT true,
    deleted           boolean NOT NULL DEFAULT false,
    source_time       timestamptz NOT NULL,
    source            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stripe_prices (
    stripe_price_id    text PRIMARY KEY
        CHECK (stripe_price_id <> '' AND length(stripe_price_id) <= 255),
    -- No foreign key: a price may arrive before its product.
    stripe_product_id  text NOT NULL,
    lookup_key         text,
    active             boolean NOT NULL DEFAULT true,
    deleted            boolean NOT NULL DEFAULT false,
    currency           text NOT NULL DEFAULT '',
    unit_amount        bigint,
    -- day, week, month, year as Stripe names them; NULL for a one-time price.
    recurring_interval text,
    recurring_interval_count integer,
    source_time        timestamptz NOT NULL,
    source             text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_prices_product_idx ON stripe_prices (stripe_product_id);

-- A customer's active entitlements, replaced as one snapshot under the
-- customer's advisory lock; stripe_customers.entitlements_time orders the
-- snapshots by Stripe's clock.
CREATE TABLE stripe_entitlements (
    stripe_customer_id    text NOT NULL REFERENCES stripe_customers (stripe_customer_id),
    stripe_feature_id     text NOT NULL
        CHECK (stripe_feature_id <> '' AND length(stripe_feature_id) <= 255),
    lookup_key            text NOT NULL CHECK (length(lookup_key) <= 255),
    stripe_entitlement_id text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stripe_customer_id, stripe_feature_id)
);

ALTER TABLE stripe_customers
    ADD COLUMN entitlements_time timestamptz,
    ADD COLUMN entitlements_source text;

ALTER TABLE stripe_subscriptions
    ADD COLUMN trial_end timestamptz,
    ADD COLUMN current_period_start timestamptz,
    ADD COLUMN latest_invoice text;

ALTER TABLE stripe_invoices
    ADD COLUMN hosted_invoice_url text;

-- sync now also lists products, prices and every customer's entitlements.
ALTER TABLE stripe_sync_runs DROP CONSTRAINT stripe_sync_runs_phase_check;
ALTER TABLE stripe_sync_runs ADD CONSTRAINT stripe_sync_runs_phase_check
    CHECK (phase IN ('products', 'prices', 'customers', 'subscriptions', 'invoices', 'entitlements', 'done'));
