//! Usage: what a user has consumed in the current billing period, against their limit.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::AppError;

#[cfg(feature = "ssr")]
pub mod period;
#[cfg(feature = "ssr")]
pub mod record;
#[cfg(feature = "ssr")]
pub mod totals;
#[cfg(feature = "ssr")]
pub mod writer;

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

/// One usage event as a caller sends it (an element of a batch's `events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventInput {
    pub event_type: String,
    /// Kept as a JSON number so that `1.5` gets a clear 422 instead of a parse error.
    pub quantity: serde_json::Number,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// The answer to a recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordReceipt {
    pub ok: bool,
    /// The event's id (for a duplicate, the first event's).
    pub id: Uuid,
    /// The idempotency key had been used before: nothing new was stored.
    pub duplicate: bool,
    /// Where the caller stands against a hard limit, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<AllowanceInfo>,
}

/// Usage against the hard limit in the current period, after the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowanceInfo {
    pub used: i64,
    pub limit: i64,
    pub remaining: i64,
    /// The user passed their warning share of the limit (80 % unless configured otherwise).
    pub warning: bool,
}

/// One event's result in a batch answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemReceipt {
    pub index: usize,
    pub id: Uuid,
    pub duplicate: bool,
}

/// The answer to a batch: every event recorded (or a duplicate), in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchReceipt {
    pub ok: bool,
    pub results: Vec<BatchItemReceipt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<AllowanceInfo>,
}

/// Records one usage event for the caller (API key or session): `POST /api/usage/record` with
/// `{"eventType": "ai_token_consumed", "quantity": 1234, "metadata": {...}}` and an optional `Idempotency-Key`.
#[server(endpoint = "usage/record", input = server_fn::codec::Json)]
pub async fn record_usage(
    #[server(rename = "eventType")] event_type: String,
    quantity: serde_json::Number,
    #[server(default)] metadata: Option<serde_json::Value>,
) -> Result<RecordReceipt, AppError> {
    let state = crate::state::AppState::current()?;
    let headers = crate::auth::caller::request_headers().await?;
    let caller = crate::auth::caller::identify_by(&headers).await?;
    let idempotency_key = crate::auth::caller::header_value(&headers, "idempotency-key")?;
    let input = EventInput { event_type, quantity, metadata, idempotency_key };
    let event = match record::validate(input, &state.config.event_types, Utc::now()) {
        Ok(event) => event,
        Err(problem) => return Err(refusal(&state, caller, AppError::Invalid(problem)).await),
    };
    let outcome = state.writer.submit(caller, vec![event], writer::LimitPolicy::Enforce).await?;
    let recorded = outcome.events.first().ok_or(AppError::Internal)?;
    Ok(RecordReceipt {
        ok: true,
        id: recorded.id,
        duplicate: recorded.duplicate,
        allowance: outcome.allowance.map(AllowanceInfo::from),
    })
}

/// Records up to 1,000 events at once, all or nothing: `POST /api/usage/batch` with `{"events": [...]}`, each
/// event optionally carrying its own `idempotencyKey`.
#[server(endpoint = "usage/batch", input = server_fn::codec::Json)]
pub async fn record_usage_batch(events: Vec<EventInput>) -> Result<BatchReceipt, AppError> {
    use crate::error::EventProblem;

    let state = crate::state::AppState::current()?;
    let caller = crate::auth::caller::identify().await?;
    if events.is_empty() || events.len() > record::MAX_BATCH_EVENTS {
        let problem = format!("a batch holds 1 to {} events, not {}", record::MAX_BATCH_EVENTS, events.len());
        return Err(refusal(&state, caller, AppError::Invalid(problem)).await);
    }
    let now = Utc::now();
    let mut valid = Vec::with_capacity(events.len());
    let mut problems = Vec::new();
    for (index, input) in events.into_iter().enumerate() {
        match record::validate(input, &state.config.event_types, now) {
            Ok(event) => valid.push(event),
            Err(error) => problems.push(EventProblem { index, error }),
        }
    }
    if !problems.is_empty() {
        return Err(refusal(&state, caller, AppError::InvalidEvents(problems)).await);
    }
    let outcome = state.writer.submit(caller, valid, writer::LimitPolicy::Enforce).await?;
    Ok(BatchReceipt {
        ok: true,
        results: outcome
            .events
            .iter()
            .enumerate()
            .map(|(index, r)| BatchItemReceipt { index, id: r.id, duplicate: r.duplicate })
            .collect(),
        allowance: outcome.allowance.map(AllowanceInfo::from),
    })
}

/// The answer to a request refused for its content: `invalid`, unless the API key is not a live key, which is
/// answered 401 first (keys are normally resolved in the writing transaction, which a refused request never reaches).
#[cfg(feature = "ssr")]
async fn refusal(state: &crate::state::AppState, caller: crate::auth::caller::Caller, invalid: AppError) -> AppError {
    match crate::auth::caller::confirm(&state.pool, caller).await {
        Ok(()) => invalid,
        Err(err) => err,
    }
}

#[cfg(feature = "ssr")]
impl From<writer::Allowance> for AllowanceInfo {
    fn from(a: writer::Allowance) -> Self {
        AllowanceInfo { used: a.used, limit: a.limit, remaining: a.remaining(), warning: a.warning() }
    }
}

/// The signed-in user's AI token usage in the current billing period.
#[server(endpoint = "usage/summary")]
pub async fn get_usage_summary() -> Result<UsageSummary, AppError> {
    let state = crate::state::AppState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let period = period::for_user(&state.pool, &state.clock, user_id, Utc::now()).await?;
    // A session whose account was deleted is no session.
    totals::summary(&state.pool, user_id, AI_TOKENS_EVENT, &period).await?.ok_or(AppError::Unauthorized)
}
