//! What an operator needs to know about Stripe sync: undelivered meter events and events no user matched.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::billing::error::BillingError;

/// An account whose Stripe customer could not be created yet: email, attempts, Stripe's answer, next attempt.
pub type CustomerFailure = (String, i32, Option<String>, Option<DateTime<Utc>>);

/// The sync state, as `tally stripe status` prints it (and `--json` writes it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncStatus {
    /// Meter event outbox rows per status, e.g. `("awaiting_customer", 12)`.
    pub outbox: Vec<(String, i64)>,
    pub unmatched_events: i64,
    /// The latest unmatched webhook events: id, type, customer, received.
    pub latest_unmatched: Vec<(String, String, Option<String>, DateTime<Utc>)>,
    pub meter_error_reports: i64,
    /// Meter events Stripe refused, by reason: (Stripe's message, usage events).
    pub failures: Vec<(String, i64)>,
    /// Deliveries waiting for a retry: identifier, attempts, last error, next attempt.
    pub retrying: Vec<(String, i32, String, DateTime<Utc>)>,
    /// Deliveries whose outcome is unknown and that are settled from the meter summaries before anything is sent
    /// again: identifier, quantity, why it is not settled yet, next look.
    pub uncertain: Vec<(String, i64, Option<String>, DateTime<Utc>)>,
    /// Usage that missed its period's invoice and was moved onto the next one: customer, period it was used in,
    /// units, deliveries.
    pub late: Vec<(String, DateTime<Utc>, i64, i64)>,
    /// Live subscriptions that duplicate another of the same user: subscription, the other, customer.
    pub duplicate_subscriptions: Vec<(String, String, String)>,
    /// Customers Tally could not create yet: email, attempts, Stripe's answer, next attempt.
    pub customer_failures: Vec<CustomerFailure>,
    /// Finalized invoice lines of the last 35 days whose quantity differs from what Tally delivered in their period.
    pub invoice_differences: Vec<crate::billing::reconcile::InvoiceCheck>,
}

/// Reads the sync state.
pub async fn read(pool: &PgPool) -> Result<SyncStatus, BillingError> {
    let outbox =
        sqlx::query!(r#"SELECT status, count(*) AS "count!" FROM meter_event_outbox GROUP BY status ORDER BY status"#)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| (row.status, row.count))
            .collect();
    let unmatched_events =
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM stripe_events WHERE outcome = 'unmatched'"#)
            .fetch_one(pool)
            .await?;
    let latest_unmatched = sqlx::query!(
        r#"SELECT id, type AS kind, stripe_customer_id, received_at AS "received_at: DateTime<Utc>"
           FROM stripe_events WHERE outcome = 'unmatched' ORDER BY received_at DESC LIMIT 10"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.id, row.kind, row.stripe_customer_id, row.received_at))
    .collect();
    let meter_error_reports =
        sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM meter_error_reports"#).fetch_one(pool).await?;
    let failures = sqlx::query!(
        r#"SELECT coalesce(last_error, 'no reason recorded') AS "reason!", count(*) AS "count!"
           FROM meter_event_outbox WHERE status = 'failed' GROUP BY 1 ORDER BY 2 DESC LIMIT 10"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.reason, row.count))
    .collect();
    let retrying = sqlx::query!(
        r#"SELECT identifier, attempts, last_error AS "last_error!", next_attempt_at AS "next_attempt_at: DateTime<Utc>"
           FROM meter_deliveries
           WHERE status = 'pending' AND last_error IS NOT NULL ORDER BY next_attempt_at LIMIT 10"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.identifier, row.attempts, row.last_error, row.next_attempt_at))
    .collect();
    let uncertain = sqlx::query!(
        r#"SELECT identifier, quantity, last_error, next_attempt_at AS "next_attempt_at: DateTime<Utc>"
           FROM meter_deliveries WHERE status = 'uncertain' ORDER BY next_attempt_at LIMIT 10"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.identifier, row.quantity, row.last_error, row.next_attempt_at))
    .collect();
    let late = sqlx::query!(
        r#"SELECT stripe_customer_id, late_from_period_start AS "period_start!: DateTime<Utc>",
                  sum(quantity)::bigint AS "units!", count(*) AS "deliveries!"
           FROM meter_deliveries
           WHERE late_from_period_start IS NOT NULL GROUP BY 1, 2 ORDER BY 2 DESC, 1 LIMIT 20"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.stripe_customer_id, row.period_start, row.units, row.deliveries))
    .collect();
    let duplicate_subscriptions = sqlx::query!(
        r#"SELECT stripe_subscription_id, duplicate_of AS "duplicate_of!", stripe_customer_id FROM subscriptions
           WHERE duplicate_of IS NOT NULL AND status = ANY($1) ORDER BY state_at DESC"#,
        crate::usage::period::LIVE_STATUSES as _
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.stripe_subscription_id, row.duplicate_of, row.stripe_customer_id))
    .collect();
    let customer_failures = sqlx::query!(
        r#"SELECT email, customer_attempts, customer_last_error,
                  customer_next_attempt_at AS "customer_next_attempt_at: DateTime<Utc>"
           FROM users
           WHERE stripe_customer_id IS NULL AND customer_attempts > 0 ORDER BY customer_next_attempt_at LIMIT 10"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.email, row.customer_attempts, row.customer_last_error, row.customer_next_attempt_at))
    .collect();
    let recent = crate::billing::reconcile::InvoiceFilter {
        since: Utc::now() - chrono::Duration::days(35),
        event_name: None,
        price: None,
        invoice: None,
    };
    let invoice_differences = crate::billing::reconcile::invoices(pool, &recent)
        .await?
        .into_iter()
        .filter(|line| !line.matches() && line.invoice_status.as_deref() != Some("draft"))
        .collect();
    Ok(SyncStatus {
        outbox,
        unmatched_events,
        latest_unmatched,
        meter_error_reports,
        failures,
        retrying,
        uncertain,
        late,
        duplicate_subscriptions,
        customer_failures,
        invoice_differences,
    })
}

/// One user's events by delivery state, of those that occurred in `period` (`stripe_configured` is left for the
/// caller, who knows the config), counted from the period counters of its kind (`Calendar` counters tile all usage,
/// so any run of whole months can be summed; `Subscription` for one period).
///
/// One statement, and its cost follows the *undelivered* events, not the period's: delivered = the period's event
/// count from `usage_period_totals` (written with every event) minus the undelivered rows, counted from a partial
/// index on (user, time the event occurred) without touching the events. `period` must be one of the user's
/// billing periods or made of whole ones (counters are kept per period): the dashboard passes the current period,
/// `tally user show` all time.
pub async fn for_user(
    pool: &PgPool,
    user_id: uuid::Uuid,
    period: crate::usage::period::Period,
) -> Result<crate::billing::MeterSync, BillingError> {
    let counts = sqlx::query_as!(
        SyncCounts,
        r#"SELECT events AS "events!", pending AS "pending!", awaiting_customer AS "awaiting_customer!",
                  failed AS "failed!", expired AS "expired!", last_failure, last_retry_error,
                  reported AS "reported!", last_report
           FROM meter_sync($1, $2, $3, $4)"#,
        user_id,
        period.span.start as _,
        period.span.end as _,
        period.kind.as_str()
    )
    .fetch_one(pool)
    .await?;
    Ok(counts.into())
}

/// The columns of the SQL function `meter_sync`: what [`for_user`] and the dashboard's one read get back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCounts {
    /// Every event of the period, delivered or not.
    pub events: i64,
    pub pending: i64,
    pub awaiting_customer: i64,
    pub failed: i64,
    pub expired: i64,
    pub last_failure: Option<String>,
    pub last_retry_error: Option<String>,
    pub reported: i64,
    pub last_report: Option<String>,
}

impl From<SyncCounts> for crate::billing::MeterSync {
    /// `stripe_configured` is left for the caller, who knows the config.
    fn from(c: SyncCounts) -> Self {
        crate::billing::MeterSync {
            reported_by_stripe: c.reported,
            last_report: c.last_report,
            stripe_configured: false,
            delivered: c.events - c.pending - c.awaiting_customer - c.failed - c.expired,
            pending: c.pending,
            awaiting_customer: c.awaiting_customer,
            failed: c.failed,
            expired: c.expired,
            last_failure: c.last_failure,
            last_retry_error: c.last_retry_error,
        }
    }
}

/// Links an account to an existing Stripe customer (and the subscriptions already received for it).
pub async fn link_customer(pool: &PgPool, email: &str, customer: &str) -> Result<(), BillingError> {
    if !customer.starts_with("cus_") || customer.len() > 255 {
        return Err(BillingError::Invalid(format!("{customer:?} is not a Stripe customer id (cus_…)")));
    }
    let email = crate::auth::normalize_email(email).map_err(|err| BillingError::Invalid(err.to_string()))?;
    let mut tx = pool.begin().await?;
    let user = sqlx::query_scalar!("SELECT id FROM users WHERE email = $1", &email).fetch_optional(&mut *tx).await?;
    let user = user.ok_or_else(|| BillingError::NoAccount(email.to_owned()))?;
    if !crate::billing::events::attach_customer(&mut tx, user, customer, true).await? {
        return Err(BillingError::Conflict(format!("{customer} is already linked to another account")));
    }
    tx.commit().await?;
    Ok(())
}
