//! Retry timing: the one owner of backoff and jitter, for Stripe calls, customer creation and alert webhooks.

use std::time::Duration;

/// The delay before attempt `attempts + 1`: `base × 2^(attempts − 1)`, at most `max`, scaled into its upper half by
/// `unit` (0–1) so that workers retrying together spread out.
pub fn backoff(attempts: i32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exponent = attempts.saturating_sub(1).clamp(0, 30) as u32;
    let full = base.saturating_mul(2_u32.saturating_pow(exponent)).min(max);
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Runs `operation` up to `attempts` times, waiting [`backoff`] between attempts while its error is one
/// `retryable` accepts; returns the first success or the last error.
pub async fn retrying<T, E, F, Fut>(
    attempts: i32,
    base: Duration,
    max: Duration,
    retryable: impl Fn(&E) -> bool,
    mut operation: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match operation().await {
            Err(err) if attempt < attempts && retryable(&err) => {
                tokio::time::sleep(backoff(attempt, base, max, random_unit())).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// A uniform random number in `[0, 1)` from the operating system's generator (retry jitter, the double's faults).
pub fn random_unit() -> f64 {
    let mut bytes = [0_u8; 8];
    getrandom::fill(&mut bytes).unwrap_or_default();
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1_u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_in_the_upper_half() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(1_500));
        assert_eq!(backoff(1, base, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, base, max, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(3, base, max, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(30, base, max, 1.0), max);
        assert_eq!(backoff(i32::MAX, base, max, 0.5), Duration::from_millis(1_125));
    }

    #[tokio::test]
    async fn retrying_stops_at_the_first_success_or_a_final_error() {
        let calls = std::cell::Cell::new(0);
        // Millisecond delays: the test measures attempts, not time.
        let ms = Duration::from_millis;
        let flaky = || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err("busy")
                } else {
                    Ok(n)
                }
            }
        };
        assert_eq!(retrying(5, ms(1), ms(4), |_| true, flaky).await, Ok(3));
        calls.set(0);
        let refused = retrying(5, ms(1), ms(4), |e: &&str| *e != "refused", || async { Err::<(), _>("refused") });
        assert_eq!(refused.await, Err("refused"), "a final error is not retried");
        let attempts = std::cell::Cell::new(0);
        let always = || {
            attempts.set(attempts.get() + 1);
            async { Err::<(), _>("busy") }
        };
        assert_eq!(retrying(4, ms(1), ms(4), |_| true, always).await, Err("busy"));
        assert_eq!(attempts.get(), 4, "gives up after the attempts it was given");
    }

    #[test]
    fn random_units_stay_in_range() {
        assert!((0..1_000).map(|_| random_unit()).all(|u| (0.0..1.0).contains(&u)));
    }
}
