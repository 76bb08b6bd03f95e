//! Billing periods: the one clock that the meter, the totals and (later) Stripe agree on.
//!
//! A user with a live Stripe subscription is billed for the subscription's current period, as Stripe reports it
//! in webhooks. Everyone else (and any instant outside a known subscription period) falls in a calendar month of
//! `BILLING_TIMEZONE`, cut by PostgreSQL's time zone database, the same one the `usage_monthly` view uses.
//!
//! Usage counters are kept per period (see `totals.rs`), so a period must never change under a writer: writers
//! hold a shared per-user advisory lock ([`lock_users_shared`]) while they pick periods and count, and a webhook
//! that changes a user's period holds it exclusively ([`lock_user_exclusive`]) while it recounts the new period.

use std::sync::RwLock;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::billing::LIVE_STATUSES;
use crate::error::AppError;

/// `[start, end)` of a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Span {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

/// The advisory lock key of a user's billing period (the high 64 bits of the id; a collision only adds waiting).
fn lock_key(user_id: Uuid) -> i64 {
    (user_id.as_u128() >> 64) as i64
}

/// Takes the shared period lock of `users` for the rest of the transaction (writers: many at once).
pub async fn lock_users_shared(tx: &mut Transaction<'_, Postgres>, users: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i64> = users.iter().map(|u| lock_key(*u)).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock_shared(k)) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY 1) AS keys",
    )
    .bind(&keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Takes the exclusive period lock of `user_id` for the rest of the transaction: waits for writers in flight.
pub async fn lock_user_exclusive(tx: &mut Transaction<'_, Postgres>, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(lock_key(user_id)).execute(&mut **tx).await?;
    Ok(())
}

/// The SQL condition on a `subscriptions` row for its current period to bill its user: a live subscription
/// (statuses bound as `$2`, [`LIVE_STATUSES`]) with a known, non-empty current period. Used by the usage writer,
/// which reads the spans of a whole group of users under their shared period locks.
pub const LIVE_SUBSCRIPTION_PERIOD: &str =
    "status = ANY($2) AND current_period_start IS NOT NULL AND current_period_end > current_period_start";

/// The live subscription period of user `$1` that contains the instant `$2`, with its first and last day in time
/// zone `$3` (live statuses bound as `$4`): at most one row of `start, end, first_day, last_day, timezone`. The one
/// statement of the rule, used alone by [`for_user`] and inside the meter's one-statement read (`totals.rs`).
pub const SUBSCRIPTION_PERIOD_AT: &str = "
    SELECT current_period_start AS start, current_period_end AS \"end\",
           to_char(current_period_start AT TIME ZONE $3, 'YYYY-MM-DD') AS first_day,
           to_char((current_period_end - interval '1 microsecond') AT TIME ZONE $3, 'YYYY-MM-DD') AS last_day,
           $3 AS timezone
    FROM subscriptions
    WHERE user_id = $1 AND status = ANY($4) AND current_period_start <= $2 AND $2 < current_period_end
    ORDER BY state_at DESC LIMIT 1";

/// The period `user_id` is billed for at `at`: the live subscription's current period containing it, else the
/// calendar month from `clock`.
pub async fn for_user(
    pool: &PgPool,
    clock: &PeriodClock,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> Result<BillingPeriod, AppError> {
    let subscription: Option<BillingPeriod> = sqlx::query_as(SUBSCRIPTION_PERIOD_AT)
        .bind(user_id)
        .bind(at)
        .bind(&clock.timezone)
        .bind(LIVE_STATUSES)
        .fetch_optional(pool)
        .await?;
    match subscription {
        Some(period) => Ok(period),
        None => clock.containing(at).await,
    }
}

/// One request's memo of the signed-in user's current billing period. The dashboard's server functions (meter,
/// alerts, history, billing) each need it, and during server rendering they run within one request: one lookup
/// instead of four. Provided per request by the router (`server::router`); absent elsewhere (streams, workers).
#[derive(Clone, Default)]
pub struct RequestMemo(std::sync::Arc<tokio::sync::OnceCell<(Uuid, BillingPeriod)>>);

/// `user_id`'s current billing period, looked up at most once per request (see [`RequestMemo`]).
pub async fn current(state: &crate::state::AppState, user_id: Uuid) -> Result<BillingPeriod, AppError> {
    let lookup = || for_user(&state.pool, &state.clock, user_id, Utc::now());
    let Some(memo) = leptos::prelude::use_context::<RequestMemo>() else {
        return lookup().await;
    };
    let (memo_user, period) =
        memo.0.get_or_try_init(|| async { Ok::<_, AppError>((user_id, lookup().await?)) }).await?;
    if *memo_user == user_id {
        Ok(period.clone())
    } else {
        lookup().await
    }
}

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
        self.span().contains(at)
    }

    pub fn span(&self) -> Span {
        Span { start: self.start, end: self.end }
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
    /// The billing time zone calendar periods are cut in.
    pub timezone: String,
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
