-- The dashboard's delivery state in O(1) (issue 18). meter_sync counted a user's undelivered outbox rows one by one,
-- so a page cost grew with the events Stripe had not taken yet: 1.4 ms of PostgreSQL per page at 5,000, and a
-- Stripe outage (or a server without Stripe) would make every dashboard slower by the hour. The counts now live
-- here, per user, UTC hour of occurrence and status, kept by the outbox's own statement triggers (one owner: no
-- code path that changes an outbox row can forget them), and a period's state sums at most its hours.
CREATE TABLE meter_outbox_counts (
    user_id uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hour    timestamptz NOT NULL,
    status  text        NOT NULL,
    events  bigint      NOT NULL,
    PRIMARY KEY (user_id, hour, status)
);

-- Adds the changes (one per user, hour and status; delivered rows are not counted) in key order, so two statements
-- that touch the same counters lock them in the same order; then drops the counters that reached zero.
CREATE FUNCTION meter_outbox_counts_apply(users uuid[], hours timestamptz[], statuses text[], changes bigint[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO meter_outbox_counts AS c (user_id, hour, status, events)
    SELECT * FROM unnest(users, hours, statuses, changes) ORDER BY 1, 2, 3
    ON CONFLICT (user_id, hour, status) DO UPDATE SET events = c.events + excluded.events;
    DELETE FROM meter_outbox_counts c
    USING unnest(users, hours, statuses, changes) AS x (user_id, hour, status, change)
    WHERE x.change < 0 AND c.user_id = x.user_id AND c.hour = x.hour AND c.status = x.status AND c.events = 0;
$$;

CREATE FUNCTION meter_outbox_counts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM meter_outbox_counts_apply(array_agg(user_id), array_agg(hour), array_agg(status), array_agg(change))
    FROM (SELECT user_id, date_trunc('hour', occurred_at, 'UTC') AS hour, status, count(*) AS change
          FROM new_rows WHERE status <> 'delivered' GROUP BY 1, 2, 3) AS grouped
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION meter_outbox_counts_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM meter_outbox_counts_apply(array_agg(user_id), array_agg(hour), array_agg(status), array_agg(change))
    FROM (SELECT user_id, hour, status, sum(change)::bigint AS change
          FROM (SELECT user_id, date_trunc('hour', occurred_at, 'UTC') AS hour, status, -1 AS change
                FROM old_rows WHERE status <> 'delivered'
                UNION ALL
                SELECT user_id, date_trunc('hour', occurred_at, 'UTC'), status, 1
                FROM new_rows WHERE status <> 'delivered') AS both_sides
          GROUP BY 1, 2, 3 HAVING sum(change) <> 0) AS grouped
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE FUNCTION meter_outbox_counts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM meter_outbox_counts_apply(array_agg(user_id), array_agg(hour), array_agg(status), array_agg(change))
    FROM (SELECT user_id, date_trunc('hour', occurred_at, 'UTC') AS hour, status, -count(*) AS change
          FROM old_rows WHERE status <> 'delivered' GROUP BY 1, 2, 3) AS grouped
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER meter_outbox_counts_insert AFTER INSERT ON meter_event_outbox
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION meter_outbox_counts_inserted();
CREATE TRIGGER meter_outbox_counts_update AFTER UPDATE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION meter_outbox_counts_updated();
CREATE TRIGGER meter_outbox_counts_delete AFTER DELETE ON meter_event_outbox
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION meter_outbox_counts_deleted();

INSERT INTO meter_outbox_counts (user_id, hour, status, events)
SELECT user_id, date_trunc('hour', occurred_at, 'UTC'), status, count(*)
FROM meter_event_outbox WHERE status <> 'delivered' GROUP BY 1, 2, 3;

-- As before (migration 17), with the undelivered rows counted from the hourly counters; only the partial hours at a
-- period's edges (Stripe's periods need not start on the hour) are counted row by row.
CREATE OR REPLACE FUNCTION meter_sync(p_user uuid, p_start timestamptz, p_end timestamptz, p_kind text)
RETURNS TABLE (events bigint, pending bigint, awaiting_customer bigint, failed bigint, expired bigint,
               last_failure text, last_retry_error text, reported bigint, last_report text)
LANGUAGE sql STABLE
AS $$
    WITH whole AS (
        -- The whole hours inside the period: from the first hour edge at or after the start to the last at or
        -- before the end.
        SELECT date_trunc('hour', p_start - interval '1 microsecond', 'UTC') + interval '1 hour' AS first,
               date_trunc('hour', p_end, 'UTC') AS after
    ),
    undelivered AS (
        SELECT c.status, c.events FROM meter_outbox_counts c
        WHERE c.user_id = p_user AND c.hour >= (SELECT first FROM whole) AND c.hour < (SELECT after FROM whole)
        UNION ALL
        SELECT o.status, 1 FROM meter_event_outbox o
        WHERE o.user_id = p_user AND o.status <> 'delivered'
          AND o.occurred_at >= p_start AND o.occurred_at < least((SELECT first FROM whole), p_end)
        UNION ALL
        SELECT o.status, 1 FROM meter_event_outbox o
        WHERE o.user_id = p_user AND o.status <> 'delivered'
          AND o.occurred_at >= greatest((SELECT after FROM whole), (SELECT first FROM whole), p_start)
          AND o.occurred_at < p_end
    ),
    reported AS (
        SELECT coalesce(sum(d.event_count), 0)::bigint AS events,
               (array_agg(s.code || ': ' || s.message ORDER BY r.reported_at DESC))[1] AS latest
        FROM meter_error_samples s
        JOIN meter_error_reports r USING (stripe_event_id)
        JOIN meter_deliveries d ON d.identifier = s.identifier
        WHERE d.user_id = p_user AND d.period_start < p_end AND d.period_end > p_start
    )
    SELECT (SELECT coalesce(sum(t.event_count), 0)::bigint FROM usage_period_totals t
            WHERE t.user_id = p_user AND t.period_kind = p_kind AND t.period_start >= p_start AND t.period_end <= p_end),
           coalesce(sum(events) FILTER (WHERE status = 'pending'), 0)::bigint,
           coalesce(sum(events) FILTER (WHERE status = 'awaiting_customer'), 0)::bigint,
           coalesce(sum(events) FILTER (WHERE status = 'failed'), 0)::bigint,
           coalesce(sum(events) FILTER (WHERE status = 'expired'), 0)::bigint,
           (SELECT coalesce(d.last_error, 'no reason recorded') FROM meter_deliveries d
            WHERE d.user_id = p_user AND d.status = 'failed' ORDER BY d.updated_at DESC LIMIT 1),
           (SELECT d.last_error FROM meter_deliveries d
            WHERE d.user_id = p_user AND d.status = 'pending' AND d.last_error IS NOT NULL
            ORDER BY d.updated_at DESC LIMIT 1),
           (SELECT events FROM reported),
           (SELECT latest FROM reported)
    FROM undelivered
$$;
