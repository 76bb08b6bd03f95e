//! `GET /api/usage/allowance[?eventType=…]`: how much a caller may still use this period, for services that want to
//! ask before they spend (an AI call they would not be able to record). Answered from the period counters in one
//! statement, so it costs the same at 10 events or 10,000,000.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use super::meter::{limit_reached, MeterFill};
use super::{UsageState, UsageSummary};
use crate::error::AppError;

/// Where the allowance is answered.
pub const PATH: &str = "/api/usage/allowance";

/// The allowance of one event type in the caller's current billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Allowance {
    pub event_type: String,
    /// Units recorded in the period.
    pub used: i64,
    /// The period's hard limit; `null` for none.
    pub limit: Option<i64>,
    /// What may still be recorded (never negative); `null` without a limit.
    pub remaining: Option<i64>,
    /// Whole percent of the limit used (past 100 when usage recorded regardless went over); `null` without a limit.
    pub percent: Option<i64>,
    /// At the user's warning share of the limit or past it (`usage_warning_percent`, 80 % unless configured): the
    /// same `warning` as the record API's answer.
    pub warning: bool,
    /// The limit is reached: recording is refused (429) until the period ends.
    pub limit_reached: bool,
    /// The billing period: its first instant, and the first instant after it (Stripe's own period when the user has
    /// a live subscription, else the calendar month in the billing time zone).
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// What the period's usage costs so far, in the minor unit of `currency` (yen for JPY), rounded as the
    /// invoice line will be; `null` when the meter has no known price.
    pub cost_so_far: Option<i64>,
    /// Lower-case ISO 4217 of `costSoFar`.
    pub currency: Option<String>,
}

impl From<UsageSummary> for Allowance {
    fn from(summary: UsageSummary) -> Self {
        let fill = MeterFill::new(summary.used, summary.limit);
        let limited = summary.limit.map(|limit| super::writer::Allowance {
            limit,
            used: summary.used,
            warning_percent: summary.warning_percent,
        });
        Allowance {
            remaining: limited.map(|allowance| allowance.remaining()),
            percent: fill.map(|fill| fill.percent),
            warning: limited.is_some_and(|allowance| allowance.warning()),
            limit_reached: limit_reached(summary.used, summary.limit),
            cost_so_far: summary.cost.as_ref().map(|cost| cost.so_far),
            currency: summary.cost.map(|cost| cost.currency),
            event_type: summary.event_type,
            used: summary.used,
            limit: summary.limit,
            period_start: summary.period_start,
            period_end: summary.period_end,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowanceQuery {
    event_type: Option<String>,
}

/// The handler: an API key (`Authorization: Bearer …`) or a signed-in session.
#[utoipa::path(
    get, path = "/api/usage/allowance", tag = "usage",
    params(("eventType" = Option<String>, Query, description = "A metered event type of the catalog (default: the primary meter, ai_token_consumed)")),
    responses(
        (status = 200, description = "Where the caller stands in the current billing period", body = Allowance),
        (status = 401, description = "No session and no valid API key", body = crate::error::WireError),
        (status = 422, description = "An event type this server does not meter", body = crate::error::WireError),
    ),
    security(("api_key" = []))
)]
pub async fn allowance(
    State(state): State<UsageState>,
    headers: HeaderMap,
    session: Session,
    Query(query): Query<AllowanceQuery>,
) -> Result<Json<Allowance>, AppError> {
    let catalog = &state.config.meters;
    let event_type = query.event_type.as_deref().unwrap_or(&catalog.primary().event_type);
    if !catalog.contains(event_type) {
        return Err(AppError::Invalid(format!(
            "unknown eventType \"{}\" (metered: {})",
            crate::error::excerpt(event_type),
            catalog.event_types().join(", ")
        )));
    }
    let user = match crate::auth::caller::api_key_of(&headers)? {
        Some(hash) => crate::auth::api_key::owner(&state.pool, hash).await?,
        None => crate::auth::session::user_of(&session).await?.ok_or(AppError::Unauthorized)?,
    };
    let summary = super::current_meter(&state, user, event_type).await?.ok_or(AppError::Unauthorized)?;
    Ok(Json(summary.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(used: i64, limit: Option<i64>) -> UsageSummary {
        UsageSummary {
            event_type: crate::usage::AI_TOKENS_EVENT.into(),
            label: Default::default(),
            used,
            limit,
            cost: None,
            warning_percent: 80,
            period_start: DateTime::UNIX_EPOCH,
            period_end: DateTime::UNIX_EPOCH,
            period_first_day: String::new(),
            period_last_day: String::new(),
            timezone: "UTC".into(),
        }
    }

    #[test]
    fn remaining_never_goes_negative_and_warning_is_the_users_share() {
        let over = Allowance::from(summary(1_200, Some(1_000)));
        assert_eq!((over.remaining, over.percent, over.warning, over.limit_reached), (Some(0), Some(120), true, true));
        let below = Allowance::from(summary(799, Some(1_000)));
        assert_eq!((below.remaining, below.warning, below.limit_reached), (Some(201), false, false));
        assert!(Allowance::from(summary(800, Some(1_000))).warning);
    }

    #[test]
    fn without_a_limit_there_is_nothing_remaining_to_count() {
        let free = Allowance::from(summary(5, None));
        assert_eq!(
            (free.limit, free.remaining, free.percent, free.warning, free.limit_reached),
            (None, None, None, false, false)
        );
    }
}
