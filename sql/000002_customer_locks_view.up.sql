-- stripe_customer_locks names the customer (or user) behind every advisory
-- lock held or awaited in this database.
--
-- Customer locks are pg_advisory_xact_lock(hashtext(stripe_customer_id)): the
-- single-bigint form (objsubid 1), whose key is sign-extended from int4, so
-- key = (classid::bigint << 32) | objid::bigint. User locks are the two-int4
-- form pg_advisory_xact_lock(1280529491, hashtext(user_id)) (objsubid 2,
-- classid 1280529491 = 'LSTS'). Locks of other applications show with an
-- empty customer. A hash collision shows every candidate customer.
CREATE VIEW stripe_customer_locks AS
WITH l AS (
    SELECT l.pid, l.granted, l.mode, l.classid, l.objid, l.objsubid, l.waitstart,
           CASE WHEN l.objsubid = 1
                THEN (l.classid::bigint << 32) | l.objid::bigint END AS customer_key,
           CASE WHEN l.objsubid = 2 AND l.classid = 1280529491
                THEN l.objid::bigint - CASE WHEN l.objid::bigint >= 2147483648
                                            THEN 4294967296 ELSE 0 END END AS user_key
    FROM pg_locks l
    WHERE l.locktype = 'advisory'
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT CASE WHEN l.customer_key IS NOT NULL THEN 'customer'
            WHEN l.user_key IS NOT NULL THEN 'user'
            ELSE 'other' END                  AS lock_kind,
       coalesce(c.stripe_customer_id, '')     AS stripe_customer_id,
       coalesce(u.user_id, '')                AS user_id,
       coalesce(l.customer_key, l.user_key)   AS lock_key,
       l.pid,
       l.granted,
       l.mode,
       CASE WHEN NOT l.granted THEN now() - l.waitstart END AS wait_duration,
       now() - a.xact_start                   AS xact_duration,
       pg_blocking_pids(l.pid)                AS blocked_by,
       a.application_name,
       a.state,
       a.wait_event_type,
       a.query
FROM l
LEFT JOIN stripe_customers c ON c.lock_key = l.customer_key
LEFT JOIN stripe_customers u ON hashtext(u.user_id) = l.user_key AND u.user_id IS NOT NULL
LEFT JOIN pg_stat_activity a ON a.pid = l.pid;
