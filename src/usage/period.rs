//! Billing periods: the one clock that the meter, the totals and (later) Stripe agree on.
//!
//! Until a user has a Stripe subscription, a period is a calendar month in `BILLING_TIMEZONE`. The month is cut
//! by PostgreSQL's time zone database, the same one the `usage_monthly` view uses, so server and view agree.

use std::sync::RwLock;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::AppError;

/// A billing period: `[start, end)`, with its first and last day in the billing time zone.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BillingPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub first_day: String,
    pub last_day: String,
    pub timezone: String,
}

impl BillingPeriod {
    /// Whether `at` falls inside the period.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

/// The calendar month in `timezone` that contains the instant `at`.
pub async fn containing(pool: &PgPool, at: DateTime<Utc>, timezone: &str) -> Result<BillingPeriod, AppError> {
    // `m` is local wall-clock time (timestamp without time zone), so `+ interval '1 month'` is calendar
    // arithmetic that no session TimeZone setting can bend.
    Ok(sqlx::query_as(
        "SELECT m AT TIME ZONE $2                                       AS start,
                (m + interval '1 month') AT TIME ZONE $2                AS \"end\",
                to_char(m, 'YYYY-MM-DD')                                AS first_day,
                to_char(m + interval '1 month' - interval '1 day', 'YYYY-MM-DD') AS last_day,
                $2                                                      AS timezone
         FROM (SELECT date_trunc('month', $1::timestamptz AT TIME ZONE $2) AS m) AS month",
    )
    .bind(at)
    .bind(timezone)
    .fetch_one(pool)
    .await?)
}

/// [`containing`] with the latest period remembered, so the hot paths (every recorded event, every meter read)
/// ask PostgreSQL only when time crosses into a new period.
pub struct PeriodClock {
    pool: PgPool,
    timezone: String,
    latest: RwLock<Option<BillingPeriod>>,
}

impl PeriodClock {
    pub fn new(pool: PgPool, timezone: String) -> Self {
        PeriodClock { pool, timezone, latest: RwLock::new(None) }
    }

    /// The period containing `at`.
    pub async fn containing(&self, at: DateTime<Utc>) -> Result<BillingPeriod, AppError> {
        if let Some(period) = self.latest.read().ok().and_then(|p| p.clone()).filter(|p| p.contains(at)) {
            return Ok(period);
        }
        let period = containing(&self.pool, at, &self.timezone).await?;
        if let Ok(mut latest) = self.latest.write() {
            // Keep the newest period: a late event from last month must not evict the current one.
            if latest.as_ref().is_none_or(|current| current.start <= period.start) {
                *latest = Some(period.clone());
            }
        }
        Ok(period)
    }
}
