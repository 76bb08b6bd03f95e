//! Period totals, summed in SQL on the server: the browser never receives event rows to add up.

use sqlx::PgPool;
use uuid::Uuid;

use super::period::BillingPeriod;
use super::UsageSummary;
use crate::error::AppError;

/// `user_id`'s usage of `event_type` in `period` with their limit, or `None` when the user does not exist.
pub async fn summary(
    pool: &PgPool,
    user_id: Uuid,
    event_type: &str,
    period: &BillingPeriod,
) -> Result<Option<UsageSummary>, AppError> {
    let row: Option<(Option<i64>, i64)> = sqlx::query_as(
        "SELECT u.usage_limit,
                COALESCE((SELECT sum(e.quantity)
                          FROM usage_events e
                          WHERE e.user_id = u.id AND e.event_type = $2
                            AND e.occurred_at >= $3 AND e.occurred_at < $4), 0)::bigint
         FROM users u
         WHERE u.id = $1",
    )
    .bind(user_id)
    .bind(event_type)
    .bind(period.start)
    .bind(period.end)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(limit, used)| UsageSummary {
        event_type: event_type.to_owned(),
        used,
        limit,
        period_start: period.start,
        period_end: period.end,
        period_first_day: period.first_day.clone(),
        period_last_day: period.last_day.clone(),
        timezone: period.timezone.clone(),
    }))
}
