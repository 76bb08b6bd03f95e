-- The alert webhooks' body, written once: both kinds of alert (a limit threshold crossed, an alert the user set
-- reached) queue the same Standard Webhooks envelope, and its times must be formatted alike. A scalar SQL function
-- whose body is a bare expression, so PostgreSQL inlines it into the statements that queue webhooks.
CREATE FUNCTION alert_webhook_body(p_type text, p_at timestamptz, p_period_start timestamptz, p_data jsonb)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
               'type', p_type,
               'timestamp', to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
               'data', p_data || jsonb_build_object(
                   'period_start', to_char(p_period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
           )::text
$$;
