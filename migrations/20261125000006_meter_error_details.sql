-- Details of Stripe's meter error reports (fetched by the delivery worker from GET /v2/core/events/{id}): which of
-- our meter events Stripe could not count, and why. `identifier` maps a sample back to a `meter_deliveries` row.
ALTER TABLE meter_error_reports ADD COLUMN details_fetched_at timestamptz;
ALTER TABLE meter_error_reports ADD COLUMN fetch_error text;

CREATE TABLE meter_error_samples (
    stripe_event_id text NOT NULL REFERENCES meter_error_reports (stripe_event_id) ON DELETE CASCADE,
    identifier      text NOT NULL,
    code            text NOT NULL,
    message         text NOT NULL,
    PRIMARY KEY (stripe_event_id, identifier, code)
);
CREATE INDEX meter_error_samples_identifier_idx ON meter_error_samples (identifier);
