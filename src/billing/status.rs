//! What an operator needs to know about Stripe sync: undelivered meter events and events no user matched.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::AppError;

/// The sync state, as `tally stripe status` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// Meter event outbox rows per status, e.g. `("awaiting_customer", 12)`.
    pub outbox: Vec<(String, i64)>,
    pub unmatched_events: i64,
    /// The latest unmatched webhook events: id, type, customer, received.
    pub latest_unmatched: Vec<(String, String, Option<String>, DateTime<Utc>)>,
    pub meter_error_reports: i64,
}

/// Reads the sync state.
pub async fn read(pool: &PgPool) -> Result<SyncStatus, AppError> {
    let outbox = sqlx::query_as("SELECT status, count(*) FROM meter_event_outbox GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await?;
    let unmatched_events =
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE outcome = 'unmatched'").fetch_one(pool).await?;
    let latest_unmatched = sqlx::query_as(
        "SELECT id, type, stripe_customer_id, received_at FROM stripe_events
         WHERE outcome = 'unmatched' ORDER BY received_at DESC LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    let meter_error_reports = sqlx::query_scalar("SELECT count(*) FROM meter_error_reports").fetch_one(pool).await?;
    Ok(SyncStatus { outbox, unmatched_events, latest_unmatched, meter_error_reports })
}

/// Links an account to an existing Stripe customer (and the subscriptions already received for it).
pub async fn link_customer(pool: &PgPool, email: &str, customer: &str) -> Result<(), AppError> {
    if !customer.starts_with("cus_") || customer.len() > 255 {
        return Err(AppError::Invalid(format!("{customer:?} is not a Stripe customer id (cus_…)")));
    }
    let email = crate::auth::normalize_email(email)?;
    let mut tx = pool.begin().await?;
    let user: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1").bind(&email).fetch_optional(&mut *tx).await?;
    let user = user.ok_or_else(|| AppError::Invalid(format!("no account for {email}")))?;
    if !crate::billing::events::attach_customer(&mut tx, user, customer, true).await? {
        return Err(AppError::Conflict(format!("{customer} is already linked to another account")));
    }
    tx.commit().await?;
    Ok(())
}
