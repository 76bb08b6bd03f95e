-- The billing-period rule, once (issue 15, rules 4 and 8).
--
-- `calendar_month_at` cuts calendar months in the billing time zone, and `billing_period_at` says which period
-- applies to a user at an instant: the current period of a live subscription that contains it, else that calendar
-- month. Every reader and writer of periods (the usage writer, the meter and the hard limit, the history, delivery)
-- asks these two functions; src/usage/period.rs is their only Rust caller besides delivery's batching statement.
CREATE FUNCTION calendar_month_at(p_at timestamptz, p_timezone text)
RETURNS TABLE (month_start timestamptz, month_end timestamptz)
LANGUAGE sql STABLE AS $$
    -- `m` is local wall-clock time (timestamp without time zone), so `+ interval '1 month'` is calendar
    -- arithmetic that no session TimeZone setting can bend.
    SELECT m AT TIME ZONE p_timezone, (m + interval '1 month') AT TIME ZONE p_timezone
    FROM (SELECT date_trunc('month', p_at AT TIME ZONE p_timezone) AS m) AS month
$$;

DROP FUNCTION billing_period_at(uuid, timestamptz, text, text[]);
CREATE FUNCTION billing_period_at(p_user uuid, p_at timestamptz, p_timezone text, p_live_statuses text[])
RETURNS TABLE (period_start timestamptz, period_end timestamptz, period_kind text,
               month_start timestamptz, month_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(s.current_period_start, m.month_start),
           coalesce(s.current_period_end, m.month_end),
           CASE WHEN s.current_period_start IS NULL THEN 'calendar' ELSE 'subscription' END,
           m.month_start,
           m.month_end
    FROM calendar_month_at(p_at, p_timezone) AS m
    LEFT JOIN LATERAL (
        SELECT current_period_start, current_period_end FROM subscriptions
        WHERE user_id = p_user AND status = ANY (p_live_statuses)
          AND current_period_start <= p_at AND p_at < current_period_end
          AND current_period_end > current_period_start
        ORDER BY state_at DESC
        LIMIT 1
    ) AS s ON true
$$;

-- Two counters per event: its calendar month's (always, so the calendar months tile all usage and the meter is
-- complete whatever a subscription does) and, when a subscription period applies, that period's (rebuilt from the
-- events whenever Stripe announces the period). Cancelling, renewing or resuming a subscription then switches the
-- meter between counters that are each complete, instead of falling back to a counter that missed part of the
-- month. Keyed by the whole span, not its start: a subscription period may start with a calendar month and end
-- elsewhere.
ALTER TABLE usage_period_totals ADD COLUMN period_kind text NOT NULL DEFAULT 'subscription';
ALTER TABLE usage_period_totals ADD CONSTRAINT usage_period_totals_period_kind_known
    CHECK (period_kind IN ('subscription', 'calendar'));

-- Existing counters whose span is a calendar month become calendar counters, recounted from the events below
-- (until now, an event counted under a subscription was missing from its month).
DELETE FROM usage_period_totals t
WHERE EXISTS (
    SELECT 1 FROM calendar_month_at(t.period_start,
                                    coalesce(nullif(current_setting('tally.billing_timezone', true), ''), 'Asia/Tokyo')) m
    WHERE m.month_start = t.period_start AND m.month_end = t.period_end);
-- The current subscription periods are recounted too (one of them may have had a calendar month's span).
DELETE FROM usage_period_totals t
WHERE EXISTS (SELECT 1 FROM subscriptions s
              WHERE s.user_id = t.user_id AND s.current_period_start = t.period_start
                AND s.current_period_end = t.period_end);

ALTER TABLE usage_period_totals DROP CONSTRAINT usage_period_totals_pkey;
ALTER TABLE usage_period_totals ADD PRIMARY KEY (user_id, event_type, period_kind, period_start, period_end, slot);
ALTER TABLE usage_period_totals ALTER COLUMN period_kind DROP DEFAULT;

INSERT INTO usage_period_totals (user_id, event_type, period_kind, period_start, period_end, slot, quantity, event_count)
SELECT e.user_id, e.event_type, 'calendar', m.month_start, m.month_end, 0, sum(e.quantity), count(*)
FROM usage_events e
CROSS JOIN LATERAL calendar_month_at(e.occurred_at,
                                     coalesce(nullif(current_setting('tally.billing_timezone', true), ''),
                                              'Asia/Tokyo')) AS m
GROUP BY e.user_id, e.event_type, m.month_start, m.month_end;

INSERT INTO usage_period_totals (user_id, event_type, period_kind, period_start, period_end, slot, quantity, event_count)
SELECT s.user_id, e.event_type, 'subscription', s.current_period_start, s.current_period_end, 0,
       sum(e.quantity), count(*)
FROM (SELECT DISTINCT user_id, current_period_start, current_period_end FROM subscriptions
      WHERE user_id IS NOT NULL AND current_period_start IS NOT NULL
        AND current_period_end > current_period_start) AS s
JOIN usage_events e ON e.user_id = s.user_id
                   AND e.occurred_at >= s.current_period_start AND e.occurred_at < s.current_period_end
GROUP BY s.user_id, e.event_type, s.current_period_start, s.current_period_end;
