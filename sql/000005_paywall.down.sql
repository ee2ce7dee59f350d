ALTER TABLE stripe_sync_runs DROP CONSTRAINT stripe_sync_runs_phase_check;
UPDATE stripe_sync_runs SET phase = 'customers' WHERE phase IN ('products', 'prices');
UPDATE stripe_sync_runs SET phase = 'done' WHERE phase = 'entitlements';
ALTER TABLE stripe_sync_runs ADD CONSTRAINT stripe_sync_runs_phase_check
    CHECK (phase IN ('customers', 'subscriptions', 'invoices', 'done'));
ALTER TABLE stripe_invoices DROP COLUMN IF EXISTS hosted_invoice_url;
ALTER TABLE stripe_subscriptions
    DROP COLUMN IF EXISTS trial_end,
    DROP COLUMN IF EXISTS current_period_start,
    DROP COLUMN IF EXISTS latest_invoice;
ALTER TABLE stripe_customers
    DROP COLUMN IF EXISTS entitlements_time,
    DROP COLUMN IF EXISTS entitlements_source;
DROP TABLE IF EXISTS stripe_entitlements;
DROP TABLE IF EXISTS stripe_prices;
DROP TABLE IF EXISTS stripe_products;
