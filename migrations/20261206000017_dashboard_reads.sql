-- The dashboard's reads as functions, so that one statement can gather a whole page (issue 18) while the card that
-- re-reads one part alone (a period picked, a key revoked) runs the same SQL: each rule has one owner.
-- Single-SELECT SQL functions, STABLE: PostgreSQL inlines them into the calling statement.

-- Every day of [p_start, p_end) in p_tz with the user's total of p_event_type that day (0 for quiet days). Sums the
-- quarter-hour buckets the writer keeps, so the cost follows the period's length rather than its events; the
-- partial quarter hours at a period edge not on a quarter hour come from the events themselves.
CREATE FUNCTION usage_days(p_user uuid, p_event_type text, p_start timestamptz, p_end timestamptz, p_tz text)
RETURNS TABLE (day text, quantity bigint)
LANGUAGE sql STABLE
AS $$
    WITH days AS (
        SELECT generate_series(date_trunc('day', p_start AT TIME ZONE p_tz),
                               (p_end - interval '1 microsecond') AT TIME ZONE p_tz,
                               interval '1 day') AS day
    ), whole AS (
        -- The buckets wholly inside the period (Stripe's periods need not start on a bucket's edge): from the
        -- first edge at or after the start to the last edge at or before the end.
        SELECT usage_bucket_end(p_start - interval '1 microsecond') AS first, usage_bucket(p_end) AS after
    ), parts AS (
        -- Scalar subqueries, so that each bound is an index condition.
        SELECT b.bucket AS at, b.quantity
        FROM usage_quarter_hour_totals b
        WHERE b.user_id = p_user AND b.event_type = p_event_type
          AND b.bucket >= (SELECT first FROM whole) AND b.bucket < (SELECT after FROM whole)
        UNION ALL
        SELECT e.occurred_at, e.quantity
        FROM usage_events e
        WHERE e.user_id = p_user AND e.event_type = p_event_type
          AND e.occurred_at >= p_start AND e.occurred_at < least((SELECT first FROM whole), p_end)
        UNION ALL
        SELECT e.occurred_at, e.quantity
        FROM usage_events e
        WHERE e.user_id = p_user AND e.event_type = p_event_type
          AND e.occurred_at >= greatest((SELECT after FROM whole), (SELECT first FROM whole), p_start)
          AND e.occurred_at < p_end
    ), used AS (
        SELECT date_trunc('day', at AT TIME ZONE p_tz) AS day, sum(quantity)::bigint AS quantity
        FROM parts
        GROUP BY 1
    )
    SELECT to_char(days.day, 'YYYY-MM-DD'), coalesce(used.quantity, 0)
    FROM days LEFT JOIN used USING (day)
    ORDER BY days.day
$$;

-- The periods the user has usage in, newest first (at most 36): subscription periods, and the calendar months not
-- wholly covered by them (before subscribing, after cancelling). Every event is in a calendar counter, so a covered
-- month would only repeat that usage. Days in p_tz.
CREATE FUNCTION usage_period_choices(p_user uuid, p_tz text)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, first_day text, last_day text)
LANGUAGE sql STABLE
AS $$
    WITH spans AS (
        SELECT DISTINCT t.period_kind, t.period_start, t.period_end FROM usage_period_totals t WHERE t.user_id = p_user
    )
    SELECT DISTINCT s.period_start, s.period_end,
           to_char(s.period_start AT TIME ZONE p_tz, 'YYYY-MM-DD'),
           to_char((s.period_end - interval '1 microsecond') AT TIME ZONE p_tz, 'YYYY-MM-DD')
    FROM spans s
    WHERE s.period_kind = 'subscription'
       OR (SELECT coalesce(sum(least(o.period_end, s.period_end) - greatest(o.period_start, s.period_start)),
                           interval '0')
           FROM spans o
           WHERE o.period_kind = 'subscription' AND o.period_start < s.period_end AND o.period_end > s.period_start)
          < s.period_end - s.period_start
    ORDER BY 1 DESC
    LIMIT 36
$$;

-- One user's events of [p_start, p_end) by delivery state, counted from the period counters of kind p_kind (the
-- period's event count) minus the undelivered outbox rows (a partial index), with Stripe's latest reasons. Its cost
-- follows the undelivered events, not the period's.
CREATE FUNCTION meter_sync(p_user uuid, p_start timestamptz, p_end timestamptz, p_kind text)
RETURNS TABLE (events bigint, pending bigint, awaiting_customer bigint, failed bigint, expired bigint,
               last_failure text, last_retry_error text, reported bigint, last_report text)
LANGUAGE sql STABLE
AS $$
    WITH undelivered AS (
        SELECT o.status FROM meter_event_outbox o
        WHERE o.user_id = p_user AND o.status <> 'delivered' AND o.occurred_at >= p_start AND o.occurred_at < p_end
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
           count(*) FILTER (WHERE status = 'pending'),
           count(*) FILTER (WHERE status = 'awaiting_customer'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'expired'),
           (SELECT coalesce(d.last_error, 'no reason recorded') FROM meter_deliveries d
            WHERE d.user_id = p_user AND d.status = 'failed' ORDER BY d.updated_at DESC LIMIT 1),
           (SELECT d.last_error FROM meter_deliveries d
            WHERE d.user_id = p_user AND d.status = 'pending' AND d.last_error IS NOT NULL
            ORDER BY d.updated_at DESC LIMIT 1),
           (SELECT events FROM reported),
           (SELECT latest FROM reported)
    FROM undelivered
$$;
