-- A meter per event type (issue 19): the price each meter bills with as Stripe has it, limits per event type, and
-- alerts a user sets in units or in money.
--
-- Additive: `users.usage_limit` stays (a binary of the previous release still reads it) but this release reads
-- and writes `usage_limits` only; a later release drops the column once no running release reads it.

-- The metered price of each event type as Stripe has it, read by `tally stripe setup` and on `price.updated`.
-- Without a row, the price configured in meters.toml counts (Stripe off). `price` is Stripe's Price object as
-- src/pricing.rs reads it (billing_scheme, unit_amount_decimal, tiers, tiers_mode, transform_quantity, currency).
CREATE TABLE meter_prices (
    event_type      text PRIMARY KEY,
    stripe_price_id text NOT NULL UNIQUE,
    price           jsonb NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- An account's own limit for one event type; without a row, the meter's default limit (meters.toml) applies.
-- A NULL limit is an explicit "no limit".
CREATE TABLE usage_limits (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type  text NOT NULL,
    usage_limit bigint,
    PRIMARY KEY (user_id, event_type),
    CONSTRAINT usage_limits_positive CHECK (usage_limit IS NULL OR usage_limit > 0)
);
-- Every existing account keeps the token limit it had (sign-up copied the default into it).
INSERT INTO usage_limits (user_id, event_type, usage_limit)
SELECT id, 'ai_token_consumed', usage_limit FROM users;

-- Alerts a user sets: "tell me when this period's usage reaches N units" or "… costs ¥N" (money in the minor unit
-- of the meter's currency, compared with the cost as the invoice will round it).
CREATE TABLE usage_alert_rules (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type text NOT NULL,
    unit       text NOT NULL,
    amount     bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_alert_rules_unit_known CHECK (unit IN ('units', 'money')),
    CONSTRAINT usage_alert_rules_amount_positive CHECK (amount > 0),
    UNIQUE (user_id, event_type, unit, amount)
);

-- Each rule fires once per billing period, in the transaction that records the crossing usage (the primary key
-- makes racing writers fire it once).
CREATE TABLE usage_alert_rule_crossings (
    rule_id      uuid NOT NULL REFERENCES usage_alert_rules (id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    used         bigint NOT NULL,
    cost         bigint,
    crossed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, period_start)
);

-- An account's limit for one event type: its own row if it has one (NULL there is "no limit"), else the meter's
-- default, which the caller passes in from the catalog. The one statement of this rule: every read and the
-- writers' limit check call it.
CREATE FUNCTION effective_usage_limit(p_user uuid, p_event_type text, p_default bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN o.user_id IS NULL THEN p_default ELSE o.usage_limit END
    FROM (SELECT 1) AS one
    LEFT JOIN usage_limits o ON o.user_id = p_user AND o.event_type = p_event_type
$$;

-- A user's alerts in one period, as the alerts card shows them: the limit thresholds crossed (every meter), and
-- the alerts the user set with the crossing of this period if there was one. The one statement of this read:
-- the dashboard's statement and the alerts card's server function both call it.
CREATE FUNCTION usage_alerts_json(p_user uuid, p_period_start timestamptz, p_timezone text) RETURNS json
LANGUAGE sql STABLE AS $$
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
