-- Foundation schema: accounts, sessions, usage events, paid billing cycles.
-- Money and counts are bigint, times are timestamptz (see README "Data model").

-- Accounts. Replaces the origin design's Supabase `auth.users` + `profiles` pair with one table.
CREATE TABLE users (
    id                 uuid PRIMARY KEY,
    -- Stored lower-cased and trimmed by the application, so the plain unique constraint is case-insensitive.
    email              text NOT NULL,
    password_hash      text NOT NULL,
    stripe_customer_id text,
    -- NULL means "no limit": the meter then shows no bar.
    usage_limit        bigint,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_lowercase CHECK (email = lower(btrim(email))),
    CONSTRAINT users_stripe_customer_id_key UNIQUE (stripe_customer_id),
    CONSTRAINT users_usage_limit_positive CHECK (usage_limit IS NULL OR usage_limit > 0)
);

-- Sessions for tower-sessions' PostgresStore. Same shape as the store's own `migrate()` creates, kept here so the
-- whole schema lives in one migration history (the server never runs DDL outside migrations).
CREATE SCHEMA tower_sessions;
CREATE TABLE tower_sessions.session (
    id          text PRIMARY KEY NOT NULL,
    data        bytea NOT NULL,
    expiry_date timestamptz NOT NULL
);
CREATE INDEX session_expiry_date_idx ON tower_sessions.session (expiry_date);

-- One row per recorded usage event (an AI call's tokens, for instance).
CREATE TABLE usage_events (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    -- bigint, not int: a busy customer's token counts pass 2^31 within a period.
    quantity        bigint NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text,
    -- When the usage happened; this is the timestamp Stripe bills by, so periods are cut on it.
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_events_quantity_positive CHECK (quantity > 0),
    CONSTRAINT usage_events_event_type_nonempty CHECK (event_type <> ''),
    CONSTRAINT usage_events_user_idempotency_key UNIQUE (user_id, idempotency_key)
);

-- The origin design's index, for "latest events of this user and type" (history, export).
CREATE INDEX usage_events_user_type_created_idx ON usage_events (user_id, event_type, created_at DESC);
-- Period totals filter on occurred_at (what Stripe bills by), so they get an index of their own.
CREATE INDEX usage_events_user_type_occurred_idx ON usage_events (user_id, event_type, occurred_at DESC);

-- Monthly totals as the origin design's view had them: calendar months in Asia/Tokyo.
-- Billing periods proper come from `usage::period` (BILLING_TIMEZONE, later the Stripe subscription).
CREATE VIEW usage_monthly AS
SELECT user_id,
       event_type,
       date_trunc('month', occurred_at AT TIME ZONE 'Asia/Tokyo') AS month,
       sum(quantity)::bigint                                     AS total_quantity,
       count(*)::bigint                                          AS event_count
FROM usage_events
GROUP BY user_id, event_type, date_trunc('month', occurred_at AT TIME ZONE 'Asia/Tokyo');

-- Paid invoices, one row per Stripe invoice, filled from webhooks.
CREATE TABLE billing_cycles (
    id                uuid PRIMARY KEY,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stripe_invoice_id text NOT NULL,
    period_start      timestamptz NOT NULL,
    period_end        timestamptz NOT NULL,
    -- Minor units of `currency` (for JPY, a zero-decimal currency, that is whole yen).
    amount_paid       bigint NOT NULL,
    currency          text NOT NULL,
    paid_at           timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT billing_cycles_stripe_invoice_id_key UNIQUE (stripe_invoice_id),
    CONSTRAINT billing_cycles_amount_paid_nonnegative CHECK (amount_paid >= 0),
    CONSTRAINT billing_cycles_currency_lowercase CHECK (currency ~ '^[a-z]{3}$'),
    CONSTRAINT billing_cycles_period_ordered CHECK (period_end >= period_start)
);
CREATE INDEX billing_cycles_user_period_idx ON billing_cycles (user_id, period_start DESC);
