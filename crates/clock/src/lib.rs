//! The billing clock: what time it is for every rule that depends on time (Stripe's 24-hour identifier window, the
//! invoice finalization grace, the 35-day meter event window, billing periods).
//!
//! In production it is the system clock. Tests move it forward (`advance`) instead of waiting hours, and the Stripe
//! test double has the same kind of clock, so a scenario can pass 30 hours in a second while both sides agree on
//! the time. Leases and timeouts, which are about processes being alive rather than about billing, stay on real time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// The system clock plus an offset that only tests set. Cheap to clone; clones share the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the clock forward by `by` (tests only; production never calls it).
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms.fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }

    /// Sets the clock so that it reads `at` now (it keeps running from there).
    pub fn set(&self, at: DateTime<Utc>) {
        self.offset_ms.store((at - Utc::now()).num_milliseconds(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_offset_and_the_clock_keeps_running() {
        let clock = Clock::system();
        let shared = clock.clone();
        let before = clock.now();
        shared.advance(chrono::Duration::hours(30));
        let after = clock.now();
        assert!(after - before >= chrono::Duration::hours(30));
        assert!(after - before < chrono::Duration::hours(30) + chrono::Duration::seconds(5));
        let target = DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        clock.set(target);
        assert!((shared.now() - target).num_seconds().abs() < 5);
    }
}
