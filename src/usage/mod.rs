//! Usage: what a user has consumed in the current billing period, against their limit.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::AppError;

#[cfg(feature = "ssr")]
pub mod alert_webhooks;
#[cfg(feature = "ssr")]
pub mod alerts;
#[cfg(feature = "ssr")]
pub mod allowance;
#[cfg(feature = "ssr")]
pub mod history;
#[cfg(feature = "ssr")]
pub mod live;
pub mod meter;
#[cfg(feature = "ssr")]
pub mod period;
#[cfg(feature = "ssr")]
pub mod record;
#[cfg(feature = "ssr")]
pub mod totals;
#[cfg(feature = "ssr")]
pub mod writer;

/// What usage needs from the server: the database, the settings, the period clock, the writer, the live hub and
/// the export slots. Provided per request in the leptos context (and to the usage routes as axum state).
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct UsageState {
    pub pool: sqlx::PgPool,
    pub config: std::sync::Arc<crate::config::Config>,
    pub clock: std::sync::Arc<period::PeriodClock>,
    pub writer: writer::UsageWriter,
    pub live: live::LiveHub,
    /// CSV exports streaming now: each holds a database connection for its whole download (a slow client keeps
    /// it), so at most a quarter of the pool may be taken by them.
    pub exports: std::sync::Arc<tokio::sync::Semaphore>,
    /// The time recording reads: when an event without `occurredAt` happened, and what Stripe's window and an
    /// invoice's grace are measured from (tests move it).
    pub time: crate::clock::Clock,
}

/// Usage's plain HTTP routes (its server functions register themselves): the live meter stream, the CSV export
/// and the allowance services ask for. Generic over the app's state, which only has to hand out a [`UsageState`].
#[cfg(feature = "ssr")]
pub fn router<S>() -> axum::Router<S>
where
    UsageState: axum::extract::FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    axum::Router::new()
        .route(live::PATH, axum::routing::get(live::stream))
        .route(history::EXPORT_PATH, axum::routing::get(history::export))
        .route(allowance::PATH, axum::routing::get(allowance::allowance))
}

#[cfg(feature = "ssr")]
impl UsageState {
    /// This request's, from the leptos context.
    pub fn current() -> Result<UsageState, AppError> {
        crate::error::from_context()
    }
}

/// Where the browser opens the live usage stream (server-sent events).
pub const LIVE_PATH: &str = "/api/usage/live";
/// Where a period's usage events are downloaded as CSV.
pub const EXPORT_PATH: &str = "/api/usage/export.csv";

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
    /// The share of the limit, in percent, from which API answers carry `warning: true` (`users.usage_warning_percent`).
    pub warning_percent: i16,
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

/// A billing period a user can look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeriodChoice {
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// First and last day in the billing time zone (`YYYY-MM-DD`).
    pub first_day: String,
    pub last_day: String,
}

/// One day's total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD` in the billing time zone.
    pub day: String,
    pub quantity: i64,
}

/// Per-day usage of one period, and the periods there are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageHistory {
    /// Newest first; the first is the current period.
    pub periods: Vec<PeriodChoice>,
    pub selected: PeriodChoice,
    /// Every day of the selected period, in order.
    pub days: Vec<DayUsage>,
    pub timezone: String,
}

/// A usage alert: the user's usage reached `threshold` % of their limit in the current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageAlert {
    pub threshold: i16,
    /// When it was crossed, in the billing time zone (`YYYY-MM-DD HH:MM`).
    pub crossed_local: String,
    pub used: i64,
    pub usage_limit: i64,
    pub crossed_at: DateTime<Utc>,
}

/// The current period's alerts and where they are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertsOverview {
    /// Lowest threshold first.
    pub alerts: Vec<UsageAlert>,
    /// The billing time zone `crossed_local` is in.
    pub timezone: String,
    /// The URL alerts are POSTed to, if set.
    pub webhook_url: Option<String>,
    /// The secret they are signed with (shown to its owner only).
    pub webhook_secret: Option<String>,
}

/// One usage event as a caller sends it (an element of a batch's `events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EventInput {
    pub event_type: String,
    /// Kept as a JSON number so that `1.5` gets a clear 422 instead of a parse error.
    #[cfg_attr(feature = "ssr", schema(value_type = i64, minimum = 1, maximum = 1_000_000_000_000_i64))]
    pub quantity: serde_json::Number,
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<Object>))]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// When the usage happened (RFC 3339), for clients that buffer or backfill; default: when it is received.
    #[serde(default)]
    pub occurred_at: Option<String>,
}

/// `POST /api/usage/record`'s body, as the OpenAPI description shows it: the server function's arguments (its
/// `Idempotency-Key` is a header).
#[cfg(feature = "ssr")]
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // A schema: only its shape is used.
pub struct RecordRequest {
    /// The metered event type (`ai_token_consumed`).
    event_type: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    quantity: i64,
    /// Any JSON object of at most 4 KiB.
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// When the usage happened (RFC 3339 with an offset): inside Stripe's window and an open invoice.
    occurred_at: Option<String>,
}

/// `POST /api/usage/batch`'s body, as the OpenAPI description shows it.
#[cfg(feature = "ssr")]
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // A schema: only its shape is used.
pub struct BatchRequest {
    /// 1 to 1,000 events, recorded all or nothing.
    events: Vec<EventInput>,
}

/// The answer to a recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchItemReceipt {
    pub index: usize,
    pub id: Uuid,
    pub duplicate: bool,
}

/// The answer to a batch: every event recorded (or a duplicate), in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchReceipt {
    pub ok: bool,
    pub results: Vec<BatchItemReceipt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<AllowanceInfo>,
}

/// Records one usage event for the caller (API key or session): `POST /api/usage/record` with
/// `{"eventType": "ai_token_consumed", "quantity": 1234, "metadata": {...}}` and an optional `Idempotency-Key`.
#[cfg_attr(feature = "ssr", utoipa::path(
    post, path = "/api/usage/record", tag = "usage",
    request_body = RecordRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Recording again with the same key changes nothing")),
    responses(
        (status = 200, description = "Recorded (or a duplicate of an earlier event)", body = RecordReceipt),
        (status = 400, description = "Malformed JSON or missing fields", body = crate::error::WireError),
        (status = 401, description = "No session and no valid API key", body = crate::error::WireError),
        (status = 415, description = "Not application/json", body = crate::error::WireError),
        (status = 422, description = "An invalid value (quantity, event type, metadata, occurredAt…)", body = crate::error::WireError),
        (status = 429, description = "The hard limit would be passed", body = crate::error::WireError),
        (status = 503, description = "The database is unavailable; retry with the same Idempotency-Key", body = crate::error::WireError),
    ),
    security(("api_key" = []))
))]
#[server(endpoint = "usage/record", input = server_fn::codec::Json)]
pub async fn record_usage(
    #[server(rename = "eventType")] event_type: String,
    quantity: serde_json::Number,
    #[server(default)] metadata: Option<serde_json::Value>,
    #[server(rename = "occurredAt")]
    #[server(default)]
    occurred_at: Option<String>,
) -> Result<RecordReceipt, AppError> {
    let state = UsageState::current()?;
    let headers = crate::auth::caller::request_headers().await?;
    crate::auth::caller::require_json(&headers)?;
    let caller = crate::auth::caller::identify_by(&headers).await?;
    let idempotency_key = crate::auth::caller::header_value(&headers, "idempotency-key")?;
    let input = EventInput { event_type, quantity, metadata, idempotency_key, occurred_at };
    let now = state.time.now();
    let explicit = input.occurred_at.is_some();
    let event = match record::validate(input, &state.config.event_types, now) {
        Ok(event) => event,
        Err(problem) => return Err(refusal(&state, caller, AppError::Invalid(problem)).await),
    };
    if explicit {
        if let Some(problem) = record::closed_periods(&state, caller, &[(0, event.occurred_at)], now).await?.pop() {
            return Err(AppError::Invalid(problem.error));
        }
    }
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
#[cfg_attr(feature = "ssr", utoipa::path(
    post, path = "/api/usage/batch", tag = "usage",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Every event recorded (or a duplicate), in request order", body = BatchReceipt),
        (status = 400, description = "Malformed JSON or missing fields", body = crate::error::WireError),
        (status = 401, description = "No session and no valid API key", body = crate::error::WireError),
        (status = 415, description = "Not application/json", body = crate::error::WireError),
        (status = 422, description = "Invalid events (each named in `events`) or a batch of 0 or over 1,000 events; nothing stored", body = crate::error::WireError),
        (status = 429, description = "The hard limit would be passed; nothing stored", body = crate::error::WireError),
        (status = 503, description = "The database is unavailable", body = crate::error::WireError),
    ),
    security(("api_key" = []))
))]
#[server(endpoint = "usage/batch", input = server_fn::codec::Json)]
pub async fn record_usage_batch(events: Vec<EventInput>) -> Result<BatchReceipt, AppError> {
    use crate::error::EventProblem;

    let state = UsageState::current()?;
    let headers = crate::auth::caller::request_headers().await?;
    crate::auth::caller::require_json(&headers)?;
    let caller = crate::auth::caller::identify_by(&headers).await?;
    if events.is_empty() || events.len() > record::MAX_BATCH_EVENTS {
        let problem = format!("a batch holds 1 to {} events, not {}", record::MAX_BATCH_EVENTS, events.len());
        return Err(refusal(&state, caller, AppError::Invalid(problem)).await);
    }
    let now = state.time.now();
    let mut valid = Vec::with_capacity(events.len());
    let mut explicit = Vec::new();
    let mut problems = Vec::new();
    for (index, input) in events.into_iter().enumerate() {
        let own_time = input.occurred_at.is_some();
        match record::validate(input, &state.config.event_types, now) {
            Ok(event) => {
                if own_time {
                    explicit.push((index, event.occurred_at));
                }
                valid.push(event);
            }
            Err(error) => problems.push(EventProblem { index, error }),
        }
    }
    if !problems.is_empty() {
        return Err(refusal(&state, caller, AppError::InvalidEvents(problems)).await);
    }
    if !explicit.is_empty() {
        let closed = record::closed_periods(&state, caller, &explicit, now).await?;
        if !closed.is_empty() {
            return Err(AppError::InvalidEvents(closed));
        }
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
async fn refusal(state: &UsageState, caller: crate::auth::caller::Caller, invalid: AppError) -> AppError {
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
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    // A session whose account was deleted is no session.
    current_summary(&state, user_id).await?.ok_or(AppError::Unauthorized)
}

/// `user_id`'s AI token usage in their current billing period; `None` when the account does not exist. One
/// statement: the period lookup is part of it (the live stream re-reads this after every change).
#[cfg(feature = "ssr")]
pub async fn current_summary(state: &UsageState, user_id: Uuid) -> Result<Option<UsageSummary>, AppError> {
    Ok(totals::summary_at(&state.pool, &state.clock, user_id, AI_TOKENS_EVENT, Utc::now()).await?)
}

/// Per-day usage of one of the signed-in user's periods (`period`: its start, RFC 3339; default the current one).
#[server(endpoint = "usage/history")]
pub async fn get_usage_history(period: Option<String>) -> Result<UsageHistory, AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let (selected, periods) = history::periods(&state, user_id, period.as_deref()).await?;
    let timezone = state.config.billing_timezone.clone();
    let days = history::daily(&state.pool, user_id, AI_TOKENS_EVENT, &selected, &timezone).await?;
    Ok(UsageHistory { periods, selected, days, timezone })
}

/// The alerts of the signed-in user's current period, and their alert webhook settings.
#[server(endpoint = "usage/alerts")]
pub async fn get_alerts() -> Result<AlertsOverview, AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let period = period::current(&state, user_id).await?;
    let alerts = sqlx::query_as!(
        UsageAlert,
        r#"SELECT threshold, used, usage_limit, crossed_at AS "crossed_at: _",
                  to_char(crossed_at AT TIME ZONE $4, 'YYYY-MM-DD HH24:MI') AS "crossed_local!"
           FROM usage_alerts
           WHERE user_id = $1 AND event_type = $2 AND period_start = $3 ORDER BY threshold"#,
        user_id,
        AI_TOKENS_EVENT,
        period.start as _,
        &state.config.billing_timezone
    )
    .fetch_all(&state.pool)
    .await?;
    let webhook = sqlx::query!("SELECT alert_webhook_url, alert_webhook_secret FROM users WHERE id = $1", user_id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(AppError::Unauthorized)?;
    let (webhook_url, webhook_secret) = (webhook.alert_webhook_url, webhook.alert_webhook_secret);
    let timezone = state.config.billing_timezone.clone();
    Ok(AlertsOverview { alerts, timezone, webhook_url, webhook_secret })
}

/// Sets (or, with an empty `url`, removes) the URL the signed-in user's alerts are POSTed to. The signing secret
/// is created with the first URL and kept after.
#[server(endpoint = "usage/alert-webhook")]
pub async fn set_alert_webhook(url: String) -> Result<(), AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let url = url.trim();
    if url.is_empty() {
        sqlx::query!("UPDATE users SET alert_webhook_url = NULL WHERE id = $1", user_id).execute(&state.pool).await?;
        return Ok(());
    }
    let parsed = url::Url::parse(url)
        .map_err(|_| AppError::Refused(crate::error::Problem::UrlInvalid { url: crate::error::excerpt(url) }))?;
    if url.len() > 2000 {
        return Err(AppError::Refused(crate::error::Problem::UrlNotWeb));
    }
    crate::outbound::check_url(&parsed, state.config.alert_webhook_allow_private).map_err(|refusal| {
        AppError::Refused(match refusal {
            crate::outbound::Refusal::NotWeb => crate::error::Problem::UrlNotWeb,
            crate::outbound::Refusal::Credentials => crate::error::Problem::UrlCredentials,
            crate::outbound::Refusal::Private { host } => crate::error::Problem::UrlPrivate { host },
        })
    })?;
    let secret = alert_webhooks::new_secret()?;
    sqlx::query!(
        "UPDATE users SET alert_webhook_url = $2, alert_webhook_secret = coalesce(alert_webhook_secret, $3)
         WHERE id = $1",
        user_id,
        parsed.as_str(),
        secret
    )
    .execute(&state.pool)
    .await?;
    Ok(())
}
