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
pub mod summary;
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
    /// The meter's words, from the catalog (`meters.toml`).
    pub label: MeterLabel,
    /// Sum of the quantities recorded in the period.
    pub used: i64,
    /// The user's limit per period; `None` for no limit.
    pub limit: Option<i64>,
    /// What the period's usage costs so far, and a forecast; `None` when the meter has no known price.
    pub cost: Option<UsageCost>,
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

/// A meter's label and unit name in both languages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeterLabel {
    pub en: String,
    pub ja: String,
    pub unit_en: String,
    pub unit_ja: String,
}

impl MeterLabel {
    /// The label and the unit's name in `lang`.
    pub fn words(&self, lang: crate::format::Lang) -> (&str, &str) {
        match lang {
            crate::format::Lang::Ja => (&self.ja, &self.unit_ja),
            crate::format::Lang::En => (&self.en, &self.unit_en),
        }
    }
}

/// The period's charge for one meter, as the invoice will state it (`src/pricing.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageCost {
    /// Lower-case ISO 4217.
    pub currency: String,
    /// The charge for the usage so far, in the currency's minor unit (yen for JPY), rounded once as Stripe
    /// rounds the invoice line.
    pub so_far: i64,
    /// The charge at the period's end if usage continues at the period's pace so far; `None` while less than a
    /// tenth of the period has passed.
    pub forecast: Option<i64>,
    /// The usage that forecast assumes.
    pub forecast_used: Option<i64>,
    /// At the period's pace the hard limit would be reached before its end: the forecast is the limit's cost.
    pub forecast_capped: bool,
    /// The price of one unit in the minor unit, as Stripe writes it (`"0.00005"`), for per-unit prices.
    pub unit_amount: Option<String>,
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

/// A usage alert: the user's usage of a meter reached `threshold` % of its limit in the current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageAlert {
    pub event_type: String,
    pub threshold: i16,
    /// When it was crossed, in the billing time zone (`YYYY-MM-DD HH:MM`).
    pub crossed_local: String,
    pub used: i64,
    pub usage_limit: i64,
    pub crossed_at: DateTime<Utc>,
}

/// An alert the user set on a meter: at `amount` units, or at `amount` of money (the meter's currency, minor
/// unit), with its crossing in the current period if it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRuleInfo {
    pub id: Uuid,
    pub event_type: String,
    /// `units` or `money`.
    pub unit: String,
    pub amount: i64,
    /// The period's usage (and cost, for money alerts) when it was reached; `None` before.
    pub used: Option<i64>,
    pub cost: Option<i64>,
    pub crossed_at: Option<DateTime<Utc>>,
    pub crossed_local: Option<String>,
}

/// A meter an alert can be set on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertMeter {
    pub event_type: String,
    pub label: MeterLabel,
    /// The currency its price bills in; `None` without a known price (then alerts are set in units only).
    pub currency: Option<String>,
}

/// The alerts of a period as stored (`usage_alerts_of`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeriodAlerts {
    /// By meter, lowest threshold first.
    pub alerts: Vec<UsageAlert>,
    pub rules: Vec<AlertRuleInfo>,
}

/// The current period's alerts, the alerts the user set, and where they are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertsOverview {
    /// By meter, lowest threshold first.
    pub alerts: Vec<UsageAlert>,
    pub rules: Vec<AlertRuleInfo>,
    /// Every meter of the catalog, for labels and the form that adds an alert.
    pub meters: Vec<AlertMeter>,
    /// The billing time zone `crossed_local` is in.
    pub timezone: String,
    /// The URL alerts are POSTed to, if set.
    pub webhook_url: Option<String>,
    /// The secret they are signed with (shown to its owner only).
    pub webhook_secret: Option<String>,
}

impl AlertsOverview {
    /// The label of `event_type`'s meter (its name when the catalog no longer has it).
    pub fn meter(&self, event_type: &str) -> Option<&AlertMeter> {
        self.meters.iter().find(|m| m.event_type == event_type)
    }
}

#[cfg(feature = "ssr")]
impl AlertMeter {
    /// One per meter of `summaries` (all the catalog's, in order).
    pub fn all(summaries: &[UsageSummary]) -> Vec<AlertMeter> {
        summaries
            .iter()
            .map(|s| AlertMeter {
                event_type: s.event_type.clone(),
                label: s.label.clone(),
                currency: s.cost.as_ref().map(|c| c.currency.clone()),
            })
            .collect()
    }
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
    let event = match record::validate(input, state.config.meters.event_types(), now) {
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
        match record::validate(input, state.config.meters.event_types(), now) {
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

/// The signed-in user's usage of the primary meter (AI tokens) in the current billing period.
#[server(endpoint = "usage/summary")]
pub async fn get_usage_summary() -> Result<UsageSummary, AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let primary = state.config.meters.primary().event_type.clone();
    // A session whose account was deleted is no session.
    current_meter(&state, user_id, &primary).await?.ok_or(AppError::Unauthorized)
}

/// The signed-in user's meters the dashboard shows (the primary one, and each other with usage this period).
#[server(endpoint = "usage/meters")]
pub async fn get_usage_meters() -> Result<Vec<UsageSummary>, AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    shown_meters(&state, user_id).await?.ok_or(AppError::Unauthorized)
}

/// `user_id`'s usage of every meter (or only `only`) in their current billing period; `None` when the account
/// does not exist. One statement: the period lookup is part of it (the live stream re-reads this after every
/// change).
#[cfg(feature = "ssr")]
pub async fn current_meters(
    state: &UsageState,
    user_id: Uuid,
    only: Option<&str>,
) -> Result<Option<Vec<UsageSummary>>, AppError> {
    Ok(totals::summaries_at(&state.pool, &state.clock, &state.config.meters, user_id, only, Utc::now()).await?)
}

/// `user_id`'s usage of one meter of the catalog in their current billing period; `None` when the account does
/// not exist (callers check `event_type` against the catalog first).
#[cfg(feature = "ssr")]
pub async fn current_meter(
    state: &UsageState,
    user_id: Uuid,
    event_type: &str,
) -> Result<Option<UsageSummary>, AppError> {
    Ok(totals::summary_at(&state.pool, &state.clock, &state.config.meters, user_id, event_type, Utc::now()).await?)
}

/// The meters the dashboard shows `user_id` ([`summary::shown`]), read now; `None` when the account does not exist.
#[cfg(feature = "ssr")]
pub async fn shown_meters(state: &UsageState, user_id: Uuid) -> Result<Option<Vec<UsageSummary>>, AppError> {
    let meters = current_meters(state, user_id, None).await?;
    Ok(meters.map(|meters| summary::shown(&state.config.meters, meters)))
}

/// Per-day usage of one of the signed-in user's periods (`period`: its start, RFC 3339; default the current one).
#[server(endpoint = "usage/history")]
pub async fn get_usage_history(period: Option<String>) -> Result<UsageHistory, AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let (selected, periods) = history::periods(&state, user_id, period.as_deref()).await?;
    let timezone = state.config.billing_timezone.clone();
    let primary = &state.config.meters.primary().event_type;
    let days = history::daily(&state.pool, user_id, primary, &selected, &timezone).await?;
    Ok(UsageHistory { periods, selected, days, timezone })
}

/// The alerts of the signed-in user's current period, the alerts they set, and their alert webhook settings.
#[server(endpoint = "usage/alerts")]
pub async fn get_alerts() -> Result<AlertsOverview, AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let meters = current_meters(&state, user_id, None).await?.ok_or(AppError::Unauthorized)?;
    let period_start = meters.first().map(|m| m.period_start).ok_or(AppError::Internal)?;
    let row = sqlx::query!(
        r#"SELECT u.alert_webhook_url, u.alert_webhook_secret, a.alerts AS "alerts!: sqlx::types::Json<PeriodAlerts>"
           FROM users u CROSS JOIN LATERAL usage_alerts_of(u.id, $2, $3) AS a
           WHERE u.id = $1"#,
        user_id,
        period_start as _,
        &state.config.billing_timezone
    )
    .fetch_optional(&state.pool)
    .await?
    .ok_or(AppError::Unauthorized)?;
    let PeriodAlerts { alerts, rules } = row.alerts.0;
    Ok(AlertsOverview {
        alerts,
        rules,
        meters: AlertMeter::all(&meters),
        timezone: state.config.billing_timezone.clone(),
        webhook_url: row.alert_webhook_url,
        webhook_secret: row.alert_webhook_secret,
    })
}

/// Most alerts one user may set (they are checked in every recording transaction of the user).
#[cfg(feature = "ssr")]
const MAX_ALERT_RULES: i64 = 20;

/// Adds an alert on one of the signed-in user's meters: at `amount` units (`unit = units`), or at `amount` of
/// money in the meter's currency (`unit = money`, e.g. `1500` or `1,500` yen, `12.50` dollars).
#[server(endpoint = "usage/alert-rule")]
pub async fn add_alert_rule(
    #[server(rename = "eventType")] event_type: String,
    unit: String,
    amount: String,
) -> Result<(), AppError> {
    use crate::error::Problem;

    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    if !state.config.meters.contains(&event_type) {
        return Err(AppError::Invalid(format!("unknown meter \"{}\"", crate::error::excerpt(&event_type))));
    }
    let amount = match unit.as_str() {
        "units" => crate::format::parse_count(&amount),
        "money" => {
            let meter = current_meter(&state, user_id, &event_type).await?.ok_or(AppError::Unauthorized)?;
            let currency = meter.cost.map(|c| c.currency);
            let currency = currency.ok_or(AppError::Refused(Problem::AlertNoPrice))?;
            crate::format::parse_money(&amount, &currency)
        }
        _ => {
            return Err(AppError::Invalid(format!(
                "unit must be units or money, not \"{}\"",
                crate::error::excerpt(&unit)
            )))
        }
    }
    .ok_or(AppError::Refused(Problem::AlertAmount))?;
    let mut tx = state.pool.begin().await?;
    // Counted under the user's row lock, so two forms sent at once cannot pass the cap together.
    let count = sqlx::query_scalar!(
        r#"SELECT (SELECT count(*) FROM usage_alert_rules WHERE user_id = u.id) AS "count!"
           FROM users u WHERE u.id = $1 FOR NO KEY UPDATE"#,
        user_id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AppError::Unauthorized)?;
    if count >= MAX_ALERT_RULES {
        return Err(AppError::Refused(Problem::AlertTooMany { max: MAX_ALERT_RULES }));
    }
    sqlx::query!(
        "INSERT INTO usage_alert_rules (user_id, event_type, unit, amount) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
        user_id,
        event_type,
        unit,
        amount
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Removes one of the signed-in user's alerts (another user's id changes nothing).
#[server(endpoint = "usage/alert-rule-remove")]
pub async fn remove_alert_rule(id: Uuid) -> Result<(), AppError> {
    let state = UsageState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    sqlx::query!("DELETE FROM usage_alert_rules WHERE id = $1 AND user_id = $2", id, user_id)
        .execute(&state.pool)
        .await?;
    Ok(())
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
