-- The meter reads as SQL table functions, which PostgreSQL inlines into the calling statement (a scalar SQL
-- function with a FROM clause is not inlined: each call was planned again, 0.2-0.3 ms per call, which doubled the
-- dashboard's database time). Called as `CROSS JOIN LATERAL f(...)`, they cost what the same SQL written in place
-- costs, and each rule still has one owner. The scalar functions of migrations 19 and 20 stay (additive), as thin
-- wrappers.

-- An account's limit for one event type: its own row if it has one (NULL there is "no limit"), else the meter's
-- default, which the caller passes in from the catalog.
CREATE FUNCTION usage_limit_of(p_user uuid, p_event_type text, p_default bigint)
RETURNS TABLE (usage_limit bigint)
LANGUAGE sql STABLE ROWS 1 AS $$
    SELECT CASE WHEN o.user_id IS NULL THEN p_default ELSE o.usage_limit END
    FROM (SELECT 1) AS one
    LEFT JOIN usage_limits o ON o.user_id = p_user AND o.event_type = p_event_type
$$;

CREATE OR REPLACE FUNCTION effective_usage_limit(p_user uuid, p_event_type text, p_default bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT usage_limit FROM usage_limit_of(p_user, p_event_type, p_default)
$$;

-- One user's meters in one period (the catalog's event types and default limits, in order), as the meter cards
-- read them: the dashboard's one statement and the meters' own read both call it.
CREATE FUNCTION usage_meters_of(p_user uuid, p_kind text, p_start timestamptz, p_end timestamptz,
                                p_types text[], p_defaults bigint[])
RETURNS TABLE (meters json)
LANGUAGE sql STABLE ROWS 1 AS $$
    SELECT coalesce(json_agg(json_build_object(
               'eventType', m.event_type,
               'limit', l.usage_limit,
               'used', coalesce((SELECT sum(t.quantity) FROM usage_period_totals t
                                 WHERE t.user_id = p_user AND t.event_type = m.event_type AND t.period_kind = p_kind
                                   AND t.period_start = p_start AND t.period_end = p_end), 0)::bigint,
               'price', mp.price)
           ORDER BY m.position), '[]')
    FROM unnest(p_types, p_defaults) WITH ORDINALITY AS m (event_type, default_limit, position)
    CROSS JOIN LATERAL usage_limit_of(p_user, m.event_type, m.default_limit) AS l
    LEFT JOIN meter_prices mp ON mp.event_type = m.event_type
$$;

CREATE OR REPLACE FUNCTION usage_meters_json(p_user uuid, p_kind text, p_start timestamptz, p_end timestamptz,
                                             p_types text[], p_defaults bigint[]) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT meters FROM usage_meters_of(p_user, p_kind, p_start, p_end, p_types, p_defaults)
$$;

-- A user's alerts in one period, as the alerts card shows them (see usage_alerts_json in migration 19).
CREATE FUNCTION usage_alerts_of(p_user uuid, p_period_start timestamptz, p_timezone text)
RETURNS TABLE (alerts json)
LANGUAGE sql STABLE ROWS 1 AS $$
    SELECT json_build_object(
        'alerts', coalesce((
            SELECT json_agg(json_build_object(
                       'eventType', a.event_type, 'threshold', a.threshold, 'used', a.used,
                       'usageLimit', a.usage_limit, 'crossedAt', a.crossed_at,
                       'crossedLocal', to_char(a.crossed_at AT TIME ZONE p_timezone, 'YYYY-MM-DD HH24:MI'))
                   ORDER BY a.event_type, a.threshold)
            FROM usage_alerts a
            WHERE a.user_id = p_user AND a.period_start = p_period_start), '[]'),
        'rules', coalesce((
            SELECT json_agg(json_build_object(
                       'id', r.id, 'eventType', r.event_type, 'unit', r.unit, 'amount', r.amount,
                       'used', c.used, 'cost', c.cost, 'crossedAt', c.crossed_at,
                       'crossedLocal', to_char(c.crossed_at AT TIME ZONE p_timezone, 'YYYY-MM-DD HH24:MI'))
                   ORDER BY r.event_type, r.unit, r.amount)
            FROM usage_alert_rules r
            LEFT JOIN usage_alert_rule_crossings c ON c.rule_id = r.id AND c.period_start = p_period_start
            WHERE r.user_id = p_user), '[]'))
$$;

CREATE OR REPLACE FUNCTION usage_alerts_json(p_user uuid, p_period_start timestamptz, p_timezone text) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT alerts FROM usage_alerts_of(p_user, p_period_start, p_timezone)
$$;
