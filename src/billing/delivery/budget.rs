//! The call rate every worker on the database shares (`stripe_call_budget`): Stripe's limit is per account.

use super::*;

/// What the shared call budget held when a worker claimed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Budget {
    /// Less than one call: nothing was claimed; the budget holds a call again after `wait`.
    Empty { wait: Duration },
    /// `milli_calls` thousandths of a call, before the claim spent from it.
    Held { milli_calls: i64 },
}

/// Stripe's meter event rate limit, shared by every worker on the database: a token bucket in
/// `stripe_call_budget`, refilled at `rate` calls per second and holding at most a twentieth of a second's worth;
/// a claim may take it into debt by up to a second's worth, paid off by spacing the calls at the rate.
/// (Stripe counts per second: a full second's burst at the end of one second plus the steady rate in the next
/// would run into 429s.)
#[derive(Debug, Clone, Copy)]
pub(super) struct CallBudget {
    pub(super) rate: NonZeroU32,
    /// Most calls the bucket holds, in thousandths.
    capacity_milli: i64,
}

impl CallBudget {
    /// The bucket's row: Stripe's limit for meter events.
    pub(super) const NAME: &'static str = "meter_events";

    pub(super) fn new(rate: NonZeroU32) -> CallBudget {
        let burst = (rate.get() / 20).max(1);
        CallBudget { rate, capacity_milli: i64::from(burst) * 1_000 }
    }

    /// Refills the bucket by the time since its last refill (a new bucket starts full); returns what it holds,
    /// in thousandths of a call. Must run under the claim lock, whose holder then spends from it.
    pub(super) async fn refill(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<i64, sqlx::Error> {
        // clock_timestamp, not now(): now() is when the transaction began, before it waited for the claim lock.
        sqlx::query_scalar!(
            "INSERT INTO stripe_call_budget AS b (name, milli_calls, refilled_at) VALUES ($1, $2, clock_timestamp())
             ON CONFLICT (name) DO UPDATE SET
                 milli_calls = LEAST($2, b.milli_calls + floor(
                     GREATEST(0, extract(epoch FROM clock_timestamp() - b.refilled_at)) * $3::float8 * 1000)::bigint),
                 refilled_at = clock_timestamp()
             RETURNING milli_calls",
            Self::NAME,
            self.capacity_milli,
            f64::from(self.rate.get())
        )
        .fetch_one(&mut **tx)
        .await
    }

    /// How long until a bucket holding `milli_calls` (perhaps in debt) holds one whole call.
    pub(super) fn wait_for_one(&self, milli_calls: i64) -> Duration {
        self.refill_time(1_000 - milli_calls)
    }

    /// When the call at `position` (from 0) of a claim made with `milli_calls` in the bucket may go out: at once
    /// while the bucket covers it, then one call every `1 / rate` seconds, as the bucket refills.
    pub(super) fn slot(&self, position: usize, milli_calls: i64) -> Duration {
        let needed = (i64::try_from(position).unwrap_or(i64::MAX).saturating_add(1)).saturating_mul(1_000);
        self.refill_time(needed - milli_calls)
    }

    /// How long the bucket takes to refill `milli_calls` thousandths of a call (nothing for zero or less).
    pub(super) fn refill_time(&self, milli_calls: i64) -> Duration {
        let missing = u64::try_from(milli_calls).unwrap_or(0);
        Duration::from_micros(missing.saturating_mul(1_000) / u64::from(self.rate.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_beyond_the_budget_are_spaced_at_the_rate() {
        let test_mode = CallBudget::new(NonZeroU32::new(25).unwrap());
        assert_eq!(test_mode.capacity_milli, 1_000, "test mode holds one call at a time");
        let slots: Vec<u128> = (0..4).map(|i| test_mode.slot(i, 1_000).as_millis()).collect();
        assert_eq!(slots, [0, 40, 80, 120]);
        // In debt: the next call waits until the debt is paid and one call refilled.
        assert_eq!(test_mode.wait_for_one(-2_000).as_millis(), 120);
        assert_eq!(test_mode.wait_for_one(400).as_millis(), 24);

        let live = CallBudget::new(NonZeroU32::new(1_000).unwrap());
        assert_eq!(live.capacity_milli, 50_000, "a twentieth of a second");
        assert_eq!(live.slot(49, 50_000), Duration::ZERO);
        assert_eq!(live.slot(50, 50_000), Duration::from_millis(1));
        assert_eq!(live.slot(0, 1_500), Duration::ZERO);
    }
}
