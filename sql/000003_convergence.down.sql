DROP TABLE IF EXISTS stripe_verify_runs;
DROP TABLE IF EXISTS stripe_sweeper;
DROP TABLE IF EXISTS stripe_sync_runs;
