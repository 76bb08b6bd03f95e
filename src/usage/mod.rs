//! Usage: what a user has consumed in the current billing period, against their limit.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

#[cfg(feature = "ssr")]
pub mod period;
#[cfg(feature = "ssr")]
pub mod totals;

/// The event type AI calls record their tokens under; also the Stripe meter's event name.
pub const AI_TOKENS_EVENT: &str = "ai_token_consumed";

/// One user's usage of one event type in the current billing period, as the UsageMeter shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSummary {
    pub event_type: String,
    /// Sum of the quantities recorded in the period.
    pub used: i64,
    /// The user's limit per period; `None` for no limit.
    pub limit: Option<i64>,
    /// First instant of the period (inclusive).
    pub period_start: DateTime<Utc>,
    /// First instant after the period (exclusive).
    pub period_end: DateTime<Utc>,
    /// The period's first and last calendar day in the billing time zone, as `YYYY-MM-DD`.
    pub period_first_day: String,
    pub period_last_day: String,
    /// The billing time zone the days above are in.
    pub timezone: String,
}

/// The signed-in user's AI token usage in the current billing period.
#[server(endpoint = "usage/summary")]
pub async fn get_usage_summary() -> Result<UsageSummary, AppError> {
    let state = crate::state::AppState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let period =
        period::containing(&state.pool, Utc::now(), &state.config.billing_timezone).await?;
    // A session whose account was deleted is no session.
    totals::summary(&state.pool, user_id, AI_TOKENS_EVENT, &period)
        .await?
        .ok_or(AppError::Unauthorized)
}
