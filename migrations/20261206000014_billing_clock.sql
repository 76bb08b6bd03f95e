-- Billing against Stripe's clocks: the 24-hour identifier window, the invoice finalization grace, the
-- subscription lifecycle (see docs/reliability.md, "Stripe's clocks").

-- Deliveries whose outcome is unknown. `attempt_started_at` is when the latest call began; `uncertain_since` is
-- when the first call whose outcome Tally never learnt began (a timeout, a lost answer, a 5xx, a worker that died
-- mid-call): from then on Stripe may hold the identifier, but only for its de-duplication window (at least 24 h),
-- so such a delivery is never sent again with that identifier once `uncertain_since` is older than a safety margin.
-- It becomes `uncertain`, and the worker establishes from Stripe's meter event summaries whether it counted.
ALTER TABLE meter_deliveries
    ADD COLUMN attempt_started_at     timestamptz,
    ADD COLUMN uncertain_since        timestamptz,
    -- Identifiers this delivery was sent under before a resend proved it was not counted (newest last).
    ADD COLUMN previous_identifiers   text[] NOT NULL DEFAULT '{}',
    -- 'subscription': the period is a Stripe subscription period, billed on its invoice; 'calendar': a calendar
    -- month of BILLING_TIMEZONE with no subscription known for it (usage there is billed only if Stripe has a
    -- subscription covering each event's own second: such batches never sum across a second).
    ADD COLUMN period_kind            text NOT NULL DEFAULT 'calendar',
    -- Usage that missed its period's invoice (sent after period end + grace) is billed on the next invoice: the
    -- delivery is stamped into the period current when it was sent, and the period it was used in is kept here.
    ADD COLUMN late_from_period_start timestamptz,
    ADD COLUMN late_from_period_end   timestamptz,
    -- How an uncertain delivery was settled (counted per the meter summaries, or resent under a new identifier).
    ADD COLUMN resolution             text;
ALTER TABLE meter_deliveries DROP CONSTRAINT meter_deliveries_status_known;
ALTER TABLE meter_deliveries ADD CONSTRAINT meter_deliveries_status_known
    CHECK (status IN ('pending', 'delivered', 'failed', 'expired', 'uncertain'));
ALTER TABLE meter_deliveries ADD CONSTRAINT meter_deliveries_period_kind_known
    CHECK (period_kind IN ('subscription', 'calendar'));
UPDATE meter_deliveries d SET period_kind = 'subscription'
WHERE EXISTS (SELECT 1 FROM subscriptions s
              WHERE s.user_id = d.user_id AND s.current_period_start = d.period_start
                AND s.current_period_end = d.period_end);
CREATE INDEX meter_deliveries_uncertain_idx ON meter_deliveries (next_attempt_at) WHERE status = 'uncertain';

ALTER TABLE meter_event_outbox DROP CONSTRAINT meter_event_outbox_status_known;
ALTER TABLE meter_event_outbox ADD CONSTRAINT meter_event_outbox_status_known
    CHECK (status IN ('pending', 'delivered', 'failed', 'expired', 'awaiting_customer', 'uncertain'));

-- Customer creation per account, with its own backoff: one account Stripe refuses never holds the others.
ALTER TABLE users
    ADD COLUMN customer_attempts        integer NOT NULL DEFAULT 0,
    ADD COLUMN customer_next_attempt_at timestamptz,
    ADD COLUMN customer_last_error      text;

-- What Stripe's invoices billed: one row per subscription line of an invoice, from invoice.created / finalized /
-- paid / payment_succeeded webhooks (the latest state of a line wins). `tally stripe reconcile` compares the
-- quantity with what Tally delivered stamped inside the line's period.
CREATE TABLE invoice_lines (
    stripe_invoice_id  text NOT NULL,
    line_id            text NOT NULL,
    user_id            uuid REFERENCES users (id) ON DELETE SET NULL,
    stripe_customer_id text NOT NULL,
    stripe_price_id    text,
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    quantity           bigint NOT NULL,
    -- The invoice's status when last seen (draft, open, paid, ...).
    invoice_status     text,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stripe_invoice_id, line_id)
);
CREATE INDEX invoice_lines_customer_period_idx ON invoice_lines (stripe_customer_id, period_start);

-- A second live subscription of one customer bills every unit twice (each subscription's metered price reads the
-- same meter): it is recorded here, shown by `tally stripe status` and on the dashboard, and logged.
ALTER TABLE subscriptions ADD COLUMN duplicate_of text;

-- Checkout sessions Tally opened: at most one open per user, so two tabs (or two clicks) get the same session.
CREATE TABLE checkout_sessions (
    user_id           uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    stripe_session_id text NOT NULL,
    url               text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- The origin design's monthly view, in the billing time zone the server runs with (set per connection as
-- tally.billing_timezone; Asia/Tokyo, the default, when unset) instead of a hard-coded zone.
DROP VIEW usage_monthly;
CREATE VIEW usage_monthly AS
SELECT user_id,
       event_type,
       date_trunc('month', occurred_at AT TIME ZONE
                  coalesce(nullif(current_setting('tally.billing_timezone', true), ''), 'Asia/Tokyo')) AS month,
       sum(quantity)::bigint AS total_quantity,
       count(*)::bigint      AS event_count
FROM usage_events
GROUP BY 1, 2, 3;

-- The billing period rule, for statements that need it row by row (delivery): the live subscription's current
-- period containing `at`, else the calendar month of `timezone`, and which of the two it is. Replaces
-- billing_period_of, which did not say.
DROP FUNCTION billing_period_of(uuid, timestamptz, text, text[]);
CREATE FUNCTION billing_period_at(p_user uuid, p_at timestamptz, p_timezone text, p_live_statuses text[])
RETURNS TABLE (period_start timestamptz, period_end timestamptz, period_kind text)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(s.current_period_start,
                    date_trunc('month', p_at AT TIME ZONE p_timezone) AT TIME ZONE p_timezone),
           coalesce(s.current_period_end,
                    (date_trunc('month', p_at AT TIME ZONE p_timezone) + interval '1 month') AT TIME ZONE p_timezone),
           CASE WHEN s.current_period_start IS NULL THEN 'calendar' ELSE 'subscription' END
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT current_period_start, current_period_end FROM subscriptions
        WHERE user_id = p_user AND status = ANY (p_live_statuses)
          AND current_period_start <= p_at AND p_at < current_period_end
        ORDER BY state_at DESC
        LIMIT 1
    ) AS s ON true
$$;
