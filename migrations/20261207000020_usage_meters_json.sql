-- The meters of one user in one period, as the meter cards read them: one owner for the statement the dashboard's
-- one read and the meters' own read (`usage::totals::summaries_at`) both call, so they cannot disagree.
-- `p_types` and `p_defaults` are the catalog's event types and default limits, in order (meters.toml).
CREATE FUNCTION usage_meters_json(p_user uuid, p_kind text, p_start timestamptz, p_end timestamptz,
                                  p_types text[], p_defaults bigint[]) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT coalesce(json_agg(json_build_object(
               'eventType', m.event_type,
               'limit', effective_usage_limit(p_user, m.event_type, m.default_limit),
               'used', coalesce((SELECT sum(t.quantity) FROM usage_period_totals t
                                 WHERE t.user_id = p_user AND t.event_type = m.event_type AND t.period_kind = p_kind
                                   AND t.period_start = p_start AND t.period_end = p_end), 0)::bigint,
               'price', (SELECT mp.price FROM meter_prices mp WHERE mp.event_type = m.event_type))
           ORDER BY m.position), '[]')
    FROM unnest(p_types, p_defaults) WITH ORDINALITY AS m (event_type, default_limit, position)
$$;
