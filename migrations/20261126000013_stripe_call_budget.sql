-- Stripe limits meter event calls per account (1,000/s live, 25/s in test mode), not per process: the delivery
-- workers of every instance take their calls from this one token bucket. A worker refills it by the time passed
-- since the last refill and takes what it will send, inside its claim transaction (already serialised across
-- workers by an advisory lock), so the bucket costs no extra round trip and no extra contention.
CREATE TABLE stripe_call_budget (
    name text PRIMARY KEY,
    -- Thousandths of a call, so that refills of a fraction of a call are kept.
    milli_calls bigint NOT NULL,
    refilled_at timestamptz NOT NULL
);
