-- Delivery of usage to Stripe's meter: each Stripe call is one row here (a "delivery"), carrying the sum of one
-- or more outbox rows of one customer, one meter and one billing period. A delivery is written, with its members
-- and its `identifier`, before its first call, so every retry (after a timeout, a crash, a lost response) sends
-- the very same meter event, and Stripe's identifier de-duplication makes it count once.
CREATE TABLE meter_deliveries (
    id                 uuid PRIMARY KEY,
    -- Sent as the meter event's `identifier`: the usage event id for a delivery of one event, else this row's id.
    identifier         text NOT NULL,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stripe_customer_id text NOT NULL,
    -- The meter's event name (the usage event type).
    event_name         text NOT NULL,
    -- The billing period every member falls in; `event_timestamp` (the latest member's time) lies inside it.
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    event_timestamp    timestamptz NOT NULL,
    quantity           bigint NOT NULL,
    event_count        integer NOT NULL,
    status             text NOT NULL DEFAULT 'pending',
    -- Calls made so far; each uses a fresh Idempotency-Key (see src/billing/delivery.rs for why).
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    -- Set while a worker has the call in flight; another worker may take over once it has passed.
    leased_until       timestamptz,
    lease_token        uuid,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    delivered_at       timestamptz,
    CONSTRAINT meter_deliveries_identifier_key UNIQUE (identifier),
    CONSTRAINT meter_deliveries_status_known CHECK (status IN ('pending', 'delivered', 'failed', 'expired')),
    -- Stripe refuses meter values of more than 15 digits.
    CONSTRAINT meter_deliveries_quantity_range CHECK (quantity > 0 AND quantity <= 999999999999999),
    CONSTRAINT meter_deliveries_event_count_positive CHECK (event_count > 0),
    CONSTRAINT meter_deliveries_stamped_inside_period
        CHECK (period_start <= event_timestamp AND event_timestamp < period_end),
    CONSTRAINT meter_deliveries_identifier_length CHECK (char_length(identifier) BETWEEN 1 AND 100)
);
-- The worker's queue, and "is a call in flight for this customer and meter?".
CREATE INDEX meter_deliveries_open_idx ON meter_deliveries (stripe_customer_id, event_name, next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX meter_deliveries_user_idx ON meter_deliveries (user_id, status);
-- Reconciliation reads delivered totals per customer and time.
CREATE INDEX meter_deliveries_delivered_idx ON meter_deliveries (stripe_customer_id, event_timestamp)
    WHERE status = 'delivered';

ALTER TABLE meter_event_outbox ADD COLUMN delivery_id uuid REFERENCES meter_deliveries (id);
CREATE INDEX meter_event_outbox_delivery_idx ON meter_event_outbox (delivery_id) WHERE delivery_id IS NOT NULL;
-- Rows not yet in a delivery, found per user when batches are formed.
CREATE INDEX meter_event_outbox_unbatched_idx ON meter_event_outbox (user_id, next_attempt_at)
    WHERE status = 'pending' AND delivery_id IS NULL;

-- The billing period `user` is billed for at `at`: the live subscription's current period containing it, else the
-- calendar month of `timezone` (the rule of src/usage/period.rs, for statements that need it row by row).
CREATE FUNCTION billing_period_of(p_user uuid, p_at timestamptz, p_timezone text, p_live_statuses text[])
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(s.current_period_start,
                    date_trunc('month', p_at AT TIME ZONE p_timezone) AT TIME ZONE p_timezone),
           coalesce(s.current_period_end,
                    (date_trunc('month', p_at AT TIME ZONE p_timezone) + interval '1 month') AT TIME ZONE p_timezone)
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT current_period_start, current_period_end FROM subscriptions
        WHERE user_id = p_user AND status = ANY (p_live_statuses)
          AND current_period_start <= p_at AND p_at < current_period_end
        ORDER BY state_at DESC
        LIMIT 1
    ) AS s ON true
$$;
