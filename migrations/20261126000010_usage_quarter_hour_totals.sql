-- Per-user usage in 15-minute buckets (UTC), written by the usage writer in the same statement as the events and
-- the period counters. The dashboard's per-day history sums buckets instead of events: its cost follows the
-- period's length, not the user's usage (a user with 1,000,000 events in a period read 1,000,000 index entries).
-- Every time zone's offset is a whole number of quarter hours, so local days are made of whole buckets; a period
-- edge that is not on a quarter hour is read from the events themselves (src/usage/history.rs).
-- `slot` is the writer's slot, as in usage_period_totals: concurrent writers never wait on one bucket row.
-- The bucket an instant falls in, and the end of that bucket: the one definition of the width and origin, used by
-- the writer (src/usage/writer.rs), the history (src/usage/history.rs) and the backfill below.
CREATE FUNCTION usage_bucket(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('15 minutes', at, TIMESTAMPTZ '2000-01-01 00:00:00+00');

CREATE FUNCTION usage_bucket_end(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN usage_bucket(at) + interval '15 minutes';

CREATE TABLE usage_quarter_hour_totals (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    event_type  text NOT NULL,
    bucket      timestamptz NOT NULL,
    slot        smallint NOT NULL,
    quantity    bigint NOT NULL,
    event_count bigint NOT NULL,
    PRIMARY KEY (user_id, event_type, bucket, slot),
    CONSTRAINT usage_quarter_hour_totals_quantity_nonnegative CHECK (quantity >= 0)
);

INSERT INTO usage_quarter_hour_totals (user_id, event_type, bucket, slot, quantity, event_count)
SELECT user_id, event_type, usage_bucket(occurred_at), 0,
       sum(quantity), count(*)
FROM usage_events
GROUP BY 1, 2, 3;
