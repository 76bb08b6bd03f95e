//! Usage history: per-day totals of a billing period (days in the billing time zone), the periods a user can
//! look back on, and the CSV export of a period's events.

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use futures::StreamExt;
use sqlx::PgPool;
use tower_sessions::Session;
use uuid::Uuid;

use super::period::{self, BillingPeriod};
use super::UsageState;
use super::{DayUsage, PeriodChoice};
use crate::error::{AppError, Problem};

/// The periods `user_id` has usage in (from the period counters, newest first), with the current one always
/// first even when it is still empty, and the one `wanted` names (its start, RFC 3339), else the current one.
pub async fn periods(
    state: &UsageState,
    user_id: Uuid,
    wanted: Option<&str>,
) -> Result<(PeriodChoice, Vec<PeriodChoice>), AppError> {
    let current = period::current(state, user_id).await?;
    let timezone = &state.config.billing_timezone;
    // Subscription periods, and the calendar months not wholly covered by them (SQL function
    // `usage_period_choices`, which the dashboard's one read calls too).
    let choices = sqlx::query_as!(
        PeriodChoice,
        r#"SELECT period_start AS "period_start!: _", period_end AS "period_end!: _", first_day AS "first_day!",
                  last_day AS "last_day!"
           FROM usage_period_choices($1, $2)"#,
        user_id,
        timezone
    )
    .fetch_all(&state.pool)
    .await?;
    let choices = with_current(choices, PeriodChoice::from(&current));
    let selected = match wanted {
        None => choices[0].clone(),
        // A period that is not the caller's is refused rather than swapped for the current one: an export labelled
        // with the wrong period would be a wrong number on a customer's desk.
        Some(raw) => {
            let start = DateTime::parse_from_rfc3339(raw)
                .map_err(|_| AppError::Refused(Problem::PeriodMalformed { period: crate::error::excerpt(raw) }))?;
            choices
                .iter()
                .find(|p| p.period_start == start)
                .cloned()
                .ok_or_else(|| AppError::Refused(Problem::PeriodUnknown { period: crate::error::excerpt(raw) }))?
        }
    };
    Ok((selected, choices))
}

/// The period list as the history card offers it: the current period first, even while it is still empty.
pub fn with_current(mut choices: Vec<PeriodChoice>, current: PeriodChoice) -> Vec<PeriodChoice> {
    choices.retain(|c| c.period_start != current.period_start);
    choices.insert(0, current);
    choices
}

impl From<&BillingPeriod> for PeriodChoice {
    fn from(period: &BillingPeriod) -> Self {
        PeriodChoice {
            period_start: period.start,
            period_end: period.end,
            first_day: period.first_day.clone(),
            last_day: period.last_day.clone(),
        }
    }
}

/// Every day of `period` in `timezone` with `user_id`'s total of `event_type` that day (0 for quiet days).
///
/// Sums the quarter-hour buckets the writer keeps (`usage_quarter_hour_totals`), so the cost follows the period's
/// length rather than its events; the partial quarter hours at a period edge not on a quarter hour come from the
/// events themselves. Local days are whole quarter hours in every time zone in use.
pub async fn daily(
    pool: &PgPool,
    user_id: Uuid,
    event_type: &str,
    period: &PeriodChoice,
    timezone: &str,
) -> Result<Vec<DayUsage>, AppError> {
    Ok(sqlx::query_as!(
        DayUsage,
        r#"SELECT day AS "day!", quantity AS "quantity!" FROM usage_days($1, $2, $3, $4, $5)"#,
        user_id,
        event_type,
        period.period_start as _,
        period.period_end as _,
        timezone
    )
    .fetch_all(pool)
    .await?)
}

/// One CSV line's worth of a usage event.
pub struct ExportRow {
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// Seconds east of UTC of the billing time zone at that instant.
    pub utc_offset: i32,
    pub event_type: String,
    pub quantity: i64,
    pub idempotency_key: Option<String>,
    pub stripe_status: Option<String>,
}

impl ExportRow {
    /// The CSV header, matching [`ExportRow::record`].
    pub const HEADER: [&'static str; 6] = ["id", "occurred_at", "event_type", "quantity", "idempotency_key", "stripe"];

    /// The row's fields; the time in ISO 8601 with the billing time zone's offset.
    pub fn record(&self) -> [String; 6] {
        let offset = FixedOffset::east_opt(self.utc_offset).unwrap_or(FixedOffset::east_opt(0).expect("UTC"));
        [
            self.id.to_string(),
            self.occurred_at.with_timezone(&offset).to_rfc3339_opts(SecondsFormat::Micros, false),
            self.event_type.clone(),
            self.quantity.to_string(),
            self.idempotency_key.clone().unwrap_or_default(),
            self.stripe_status.clone().unwrap_or_default(),
        ]
    }
}

/// The statement behind the export: a period's events in time order, streamed by the caller.
/// Where the CSV export is downloaded from.
pub const EXPORT_PATH: &str = super::EXPORT_PATH;

/// `?period=<start, RFC 3339>`; default the current period.
#[derive(Debug, serde::Deserialize)]
pub struct ExportQuery {
    pub period: Option<String>,
}

/// `GET /api/usage/export.csv`: the signed-in user's usage events of one period as CSV, streamed from the
/// database in chunks (memory stays flat for millions of rows). A database failure mid-way aborts the download
/// instead of ending it as if complete.
#[utoipa::path(
    get, path = "/api/usage/export.csv", tag = "usage",
    params(("period" = Option<String>, Query, description = "The period's start (RFC 3339); default the current period")),
    responses(
        (status = 200, description = "The period's events as CSV (id, occurred_at, event_type, quantity, …)", content_type = "text/csv", body = String),
        (status = 401, description = "No session (the export is for signed-in users)", body = crate::error::WireError),
        (status = 422, description = "A malformed or unknown period", body = crate::error::WireError),
        (status = 503, description = "Too many exports at once; try again in a minute", body = crate::error::WireError),
    ),
    security(("session" = []))
)]
pub async fn export(
    State(state): State<UsageState>,
    session: Session,
    Query(query): Query<ExportQuery>,
) -> Result<Response, AppError> {
    let user_id = crate::auth::session::user_of(&session).await?.ok_or(AppError::Unauthorized)?;
    let (selected, _) = periods(&state, user_id, query.period.as_deref()).await?;
    // Held by the streaming task until the last row is sent or the client goes away.
    let permit = state.exports.clone().try_acquire_owned().map_err(|_| AppError::Refused(Problem::ExportsBusy))?;
    let filename = format!("tally-usage-{}-{}.csv", selected.first_day, selected.last_day);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let pool = state.pool.clone();
    let timezone = state.config.billing_timezone.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut rows = sqlx::query_as!(
            ExportRow,
            r#"SELECT e.id, e.occurred_at AS "occurred_at: _",
                      extract(epoch FROM (e.occurred_at AT TIME ZONE $4) - (e.occurred_at AT TIME ZONE 'UTC'))::int
                          AS "utc_offset!",
                      e.event_type, e.quantity, e.idempotency_key, o.status AS "stripe_status?"
               FROM usage_events e LEFT JOIN meter_event_outbox o ON o.usage_event_id = e.id
               WHERE e.user_id = $1 AND e.occurred_at >= $2 AND e.occurred_at < $3
               ORDER BY e.occurred_at, e.id"#,
            user_id,
            selected.period_start as _,
            selected.period_end as _,
            &timezone
        )
        .fetch(&pool);
        let mut header = true;
        loop {
            // Up to a thousand rows per chunk, encoded by the csv crate (quoting, escaping).
            let mut csv = csv::Writer::from_writer(Vec::with_capacity(64 * 1024));
            let mut failure = None;
            if std::mem::take(&mut header) {
                failure = csv.write_record(ExportRow::HEADER).err();
            }
            let mut rows_in_chunk = 0;
            while rows_in_chunk < 1_000 && failure.is_none() {
                match rows.next().await {
                    Some(Ok(row)) => failure = csv.write_record(row.record()).err(),
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "CSV export failed mid-way");
                        let _ = sender.send(Err(std::io::Error::other("the export could not be completed"))).await;
                        return;
                    }
                    None => break,
                }
                rows_in_chunk += 1;
            }
            let chunk = match (failure, csv.into_inner()) {
                (None, Ok(bytes)) => Ok(Bytes::from(bytes)),
                _ => Err(std::io::Error::other("the export could not be encoded")),
            };
            let done = chunk.is_err() || rows_in_chunk < 1_000;
            if sender.send(chunk).await.is_err() || done {
                return; // finished, failed, or the client went away
            }
        }
    });
    // Fused: a consumer may poll again after the end (the compression layer does), and an unfused `unfold` panics.
    let body = Body::from_stream(
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        })
        .fuse(),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\"")),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        body,
    )
        .into_response())
}
