-- Convergence: what lockstep needs to end equal to Stripe when webhooks are
-- missed or an account predates it. Written by `lockstep sync`, the
-- sweeper (serve, `lockstep sweep`) and `lockstep verify`; the billing rows
-- themselves are still written only under the customer's advisory lock.

-- One row per `lockstep sync` run that has not finished, so an interrupted
-- run continues where it stopped. scope is "all" or a customer id; since
-- is the --since cut (NULL: everything) and since_asked how the operator
-- gave it ("30d", "2026-01-31"): a run asked for the same way continues,
-- with its first cut, though "30d" names another moment by then. phase and
-- after say where it is:
-- the list being read and the id of the last object handled in it.
CREATE TABLE stripe_sync_runs (
    id          bigserial PRIMARY KEY,
    scope       text NOT NULL CHECK (scope <> '' AND length(scope) <= 255),
    since       timestamptz,
    since_asked text NOT NULL DEFAULT '' CHECK (length(since_asked) <= 64),
    phase       text NOT NULL CHECK (phase IN ('customers', 'subscriptions', 'invoices', 'done')),
    after       text NOT NULL DEFAULT '',
    read        bigint NOT NULL DEFAULT 0,
    written     bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- At most one unfinished run per scope and cut.
CREATE UNIQUE INDEX stripe_sync_runs_open_idx ON stripe_sync_runs (scope, since_asked)
    WHERE finished_at IS NULL;

-- The sweeper of Stripe's Events API. cursor is Stripe's time up to which
-- events have been listed. The lease (owner, lease_until) lets one replica
-- sweep at a time; it is taken and renewed by single statements, so it
-- works behind PgBouncer's transaction pooling, where a session-level
-- advisory lock would not.
CREATE TABLE stripe_sweeper (
    name        text PRIMARY KEY,
    cursor      timestamptz,
    lease_owner text,
    lease_until timestamptz,
    last_run_at timestamptz,
    last_error  text
);

-- One row per `lockstep verify` run: the differences it found and mended,
-- counted by "object.field", for the drift metrics.
CREATE TABLE stripe_verify_runs (
    id          bigserial PRIMARY KEY,
    scope       text NOT NULL,
    repair      boolean NOT NULL,
    found       jsonb NOT NULL DEFAULT '{}',
    repaired    jsonb NOT NULL DEFAULT '{}',
    remaining   integer NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
