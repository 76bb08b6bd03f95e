//! Period totals: what the meter shows and the hard limit checks, without summing a heavy user's events.
//!
//! Design: `usage_period_totals` holds one counter per (user, event type, period, writer slot), updated in the
//! same transaction as the events it counts (see `writer.rs`). Every event is counted in its calendar month and,
//! when a subscription period applies to it, in that period too: the calendar months tile all usage, so whatever a
//! subscription does (starts mid-month, renews, is cancelled or resumed), the period that applies next has a
//! complete counter, and subscription counters are recounted from the events whenever Stripe announces a period. A read sums a user's slots for one period:
//! a handful of rows through the primary key, however many events the period holds, so the meter's cost does not
//! grow with usage. Two choices keep writes fast:
//! - group commit adds a whole transaction's events of a user with one `UPDATE`, not one per event, so a busy
//!   user's counter is updated once per commit instead of being the hot row every request waits on;
//! - each writer task owns a slot, so concurrent writers never wait for each other's row locks (only users with a
//!   hard limit are serialised, on purpose, by the limit check's lock).
//!
//! The counters are exact, not estimates: integration tests compare them with `sum(quantity)` of the events. When
//! a user's period changes (a subscription period announced by Stripe), [`rebuild`] recounts the new period from
//! the events under the user's exclusive period lock.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::period::{self, PeriodClock, Span};
use super::summary::{meter_params, summarize, MeterRow, PeriodFacts};
use super::UsageSummary;
use crate::meters::Catalog;
use sqlx::types::Json;

/// `user_id`'s usage of each meter of `catalog` (or only of `only`) with their limits and costs, in the billing
/// period containing `at` — the live subscription's, else the calendar month of `clock`'s time zone — or `None`
/// when the user does not exist. One statement: the meters' read, which the live stream runs after every change
/// and the AI route before every call.
pub async fn summaries_at<'e>(
    db: impl sqlx::PgExecutor<'e>,
    clock: &PeriodClock,
    catalog: &Catalog,
    user_id: Uuid,
    only: Option<&str>,
    at: DateTime<Utc>,
) -> Result<Option<Vec<UsageSummary>>, sqlx::Error> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT u.usage_warning_percent, p.start, p.\"end\", p.first_day, p.last_day, m.meters
             FROM users u
             CROSS JOIN LATERAL ({}) AS p
             CROSS JOIN LATERAL usage_meters_of(u.id, p.kind, p.start, p.\"end\", $5, $6) AS m
             WHERE u.id = $1",
            period::PERIOD_AT
        )
    });
    type Row = (i16, DateTime<Utc>, DateTime<Utc>, String, String, Json<Vec<MeterRow>>);
    let (types, defaults) = meter_params(catalog, only);
    let row: Option<Row> = sqlx::query_as(SQL.as_str())
        .bind(user_id)
        .bind(at)
        .bind(&clock.timezone)
        .bind(crate::usage::period::LIVE_STATUSES)
        .bind(&types)
        .bind(&defaults)
        .fetch_optional(db)
        .await?;
    Ok(row.map(|(warning_percent, start, end, first_day, last_day, meters)| {
        let period = PeriodFacts { start, end, first_day, last_day, timezone: clock.timezone.clone() };
        meters.0.into_iter().map(|row| summarize(catalog, row, &period, warning_percent, at)).collect()
    }))
}

/// `user_id`'s usage of one meter (see [`summaries_at`]); `None` when the user does not exist or `event_type` is
/// not in the catalog.
pub async fn summary_at<'e>(
    db: impl sqlx::PgExecutor<'e>,
    clock: &PeriodClock,
    catalog: &Catalog,
    user_id: Uuid,
    event_type: &str,
    at: DateTime<Utc>,
) -> Result<Option<UsageSummary>, sqlx::Error> {
    Ok(summaries_at(db, clock, catalog, user_id, Some(event_type), at)
        .await?
        .and_then(|meters| meters.into_iter().next()))
}

/// Recounts `user_id`'s subscription counters for `span` from the events, after Stripe announced or changed a
/// subscription period: events recorded before Stripe told us about the period (or while the subscription was not
/// live) were counted only under their calendar month. Holds the user's exclusive period lock, so no writer counts into the old or new period meanwhile. Costs
/// one index range scan of the period's events, once per period change.
pub async fn rebuild(tx: &mut Transaction<'_, Postgres>, user_id: Uuid, span: Span) -> Result<(), sqlx::Error> {
    period::lock_user_exclusive(tx, user_id).await?;
    sqlx::query!(
        "DELETE FROM usage_period_totals
         WHERE user_id = $1 AND period_kind = 'subscription' AND period_start = $2 AND period_end = $3",
        user_id,
        span.start as _,
        span.end as _
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query!(
        "INSERT INTO usage_period_totals
             (user_id, event_type, period_kind, period_start, period_end, slot, quantity, event_count)
         SELECT user_id, event_type, 'subscription', $2, $3, 0, sum(quantity), count(*)
         FROM usage_events
         WHERE user_id = $1 AND occurred_at >= $2 AND occurred_at < $3
         GROUP BY user_id, event_type",
        user_id,
        span.start as _,
        span.end as _
    )
    .execute(&mut **tx)
    .await?;
    // Open meters may now be in another period.
    super::writer::notify_usage(tx, &[user_id]).await?;
    Ok(())
}
