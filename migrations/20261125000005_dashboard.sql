-- The customer's dashboard: usage alerts at 80 / 90 / 100 % of the limit, and their outbound webhooks.

-- Where a user's alerts are POSTed (optional), and the secret they are signed with (Standard Webhooks style).
ALTER TABLE users ADD COLUMN alert_webhook_url text
    CONSTRAINT users_alert_webhook_url_http CHECK (alert_webhook_url ~ '^https?://' AND char_length(alert_webhook_url) <= 2000);
ALTER TABLE users ADD COLUMN alert_webhook_secret text;

-- One row per threshold a user's usage crossed in a billing period: the primary key makes each fire once, however
-- many writers or instances race (they insert in the transaction that records the crossing usage).
CREATE TABLE usage_alerts (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type   text NOT NULL,
    period_start timestamptz NOT NULL,
    threshold    smallint NOT NULL,
    used         bigint NOT NULL,
    usage_limit  bigint NOT NULL,
    crossed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, event_type, period_start, threshold),
    CONSTRAINT usage_alerts_threshold_range CHECK (threshold BETWEEN 1 AND 100)
);

-- Outbound alert webhooks, delivered by the alert worker with retries (the same outbox pattern as the meter).
CREATE TABLE alert_webhooks (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url             text NOT NULL,
    -- The exact JSON body sent (signed as is).
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    leased_until    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    CONSTRAINT alert_webhooks_status_known CHECK (status IN ('pending', 'delivered', 'failed'))
);
CREATE INDEX alert_webhooks_due_idx ON alert_webhooks (next_attempt_at) WHERE status = 'pending';
