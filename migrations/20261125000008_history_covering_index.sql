-- The per-day history (and the period's CSV) read quantity by user, event type and time. With quantity in the
-- index that is an index-only scan; without it, one heap page per event, and a busy user's events are spread over
-- the whole table. Measured on 2,000,000 events with one user's 5,000 interleaved: 55.5 ms → 2.5 ms
-- (4,801 → 50 pages read). On a large live table, build the new index CONCURRENTLY by hand before migrating.
DROP INDEX usage_events_user_type_occurred_idx;
CREATE INDEX usage_events_user_type_occurred_idx ON usage_events (user_id, event_type, occurred_at DESC) INCLUDE (quantity);
