-- Stripe webhooks: every event received once (dedupe), subscriptions, and meter error reports.

-- One row per Stripe event id, written in the same transaction as the event's effect: a redelivery finds its id
-- here and changes nothing.
CREATE TABLE stripe_events (
    id                 text PRIMARY KEY,
    type               text NOT NULL,
    -- When Stripe created the event (its `created`); orders state updates of one object.
    created            timestamptz NOT NULL,
    livemode           boolean NOT NULL,
    api_version        text,
    stripe_customer_id text,
    -- applied | ignored (type not handled) | unmatched (no user has the customer) | stale (older than stored state)
    outcome            text NOT NULL,
    payload            jsonb NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stripe_events_outcome_known CHECK (outcome IN ('applied', 'ignored', 'unmatched', 'stale'))
);
CREATE INDEX stripe_events_unmatched_idx ON stripe_events (received_at DESC) WHERE outcome = 'unmatched';

-- Subscriptions as Stripe last described them. `state_at` is the `created` of the event that set the row, so an
-- older event delivered late cannot overwrite a newer state.
CREATE TABLE subscriptions (
    stripe_subscription_id text PRIMARY KEY,
    stripe_customer_id     text NOT NULL,
    -- NULL until a user has this customer (the event was then recorded as unmatched).
    user_id                uuid REFERENCES users (id) ON DELETE SET NULL,
    status                 text NOT NULL,
    current_period_start   timestamptz,
    current_period_end     timestamptz,
    cancel_at_period_end   boolean NOT NULL DEFAULT false,
    state_at               timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user_idx ON subscriptions (user_id);
CREATE INDEX subscriptions_customer_idx ON subscriptions (stripe_customer_id);

-- Invoices: paid ones and failed attempts, from invoice.paid / invoice.payment_succeeded / invoice.payment_failed.
ALTER TABLE billing_cycles
    ADD COLUMN stripe_subscription_id text,
    ADD COLUMN status text NOT NULL DEFAULT 'paid',
    ADD CONSTRAINT billing_cycles_status_known CHECK (status IN ('paid', 'payment_failed'));

-- Stripe's reports of meter events it could not accept (thin `v1.billing.meter.error_report_triggered` events).
CREATE TABLE meter_error_reports (
    stripe_event_id text PRIMARY KEY REFERENCES stripe_events (id) ON DELETE CASCADE,
    meter_id        text,
    reported_at     timestamptz NOT NULL,
    summary         text
);
