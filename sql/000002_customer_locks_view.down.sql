DROP VIEW IF EXISTS stripe_customer_locks;
