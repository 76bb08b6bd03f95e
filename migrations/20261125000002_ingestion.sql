-- Usage ingestion: API keys, period totals, and the outbox of meter events waiting for Stripe.

-- Warn (in record responses and on the dashboard) from this share of the limit on.
ALTER TABLE users ADD COLUMN usage_warning_percent smallint NOT NULL DEFAULT 80
    CONSTRAINT users_usage_warning_percent_range CHECK (usage_warning_percent BETWEEN 1 AND 100);

-- API keys for services that record usage. Only a SHA-256 hash of the key is stored; the key itself is shown once.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL,
    -- The first characters of the key (e.g. `tly_live_Ab12`), to tell keys apart in lists; not enough to use one.
    display_prefix text NOT NULL,
    key_hash     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_key_hash_length CHECK (octet_length(key_hash) = 32),
    CONSTRAINT api_keys_name_length CHECK (char_length(name) BETWEEN 1 AND 100)
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC);

-- Period totals, kept in the same transaction as the events they count, so the meter and the hard limit read a
-- handful of rows instead of summing a heavy user's events. One row per (user, event type, period, slot): each
-- ingestion writer adds to its own slot, so writers never wait on each other's row locks; readers sum the slots.
-- A period is `[period_start, period_end)`; see src/usage/totals.rs for the design notes.
CREATE TABLE usage_period_totals (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type   text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    slot         smallint NOT NULL,
    quantity     bigint NOT NULL,
    event_count  bigint NOT NULL,
    PRIMARY KEY (user_id, event_type, period_start, slot),
    CONSTRAINT usage_period_totals_quantity_nonnegative CHECK (quantity >= 0),
    CONSTRAINT usage_period_totals_period_ordered CHECK (period_end > period_start)
);

-- Every usage event waits here until the delivery worker has reported it to Stripe's meter.
CREATE TABLE meter_event_outbox (
    usage_event_id  uuid PRIMARY KEY REFERENCES usage_events (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT meter_event_outbox_status_known
        CHECK (status IN ('pending', 'delivered', 'failed', 'expired', 'awaiting_customer'))
);
-- The worker's queue: due rows that still need sending.
CREATE INDEX meter_event_outbox_due_idx ON meter_event_outbox (next_attempt_at)
    WHERE status IN ('pending', 'awaiting_customer');
CREATE INDEX meter_event_outbox_user_status_idx ON meter_event_outbox (user_id, status);
