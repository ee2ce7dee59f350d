DROP TABLE IF EXISTS stripe_events;
DROP TABLE IF EXISTS stripe_invoices;
DROP TABLE IF EXISTS stripe_subscriptions;
DROP TABLE IF EXISTS stripe_customers;
