//! The billing history: the user's subscription and invoices, read for the dashboard.

use sqlx::PgPool;
use uuid::Uuid;

use super::{BillingCycle, BillingOverview, SubscriptionInfo};
use crate::error::AppError;

/// How many invoices the dashboard lists.
const SHOWN_CYCLES: i64 = 24;

/// `user_id`'s newest subscription and latest invoices, days in `timezone`.
pub async fn overview(pool: &PgPool, user_id: Uuid, timezone: &str) -> Result<BillingOverview, AppError> {
    let subscription: Option<SubscriptionInfo> = sqlx::query_as(
        "SELECT status, current_period_start, current_period_end, cancel_at_period_end
         FROM subscriptions WHERE user_id = $1 ORDER BY state_at DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    // A period ends at the first instant of the next one, so its last day is the day of `end` minus a moment.
    let cycles: Vec<BillingCycle> = sqlx::query_as(
        "SELECT stripe_invoice_id,
                to_char(period_start AT TIME ZONE $2, 'YYYY-MM-DD') AS first_day,
                to_char(GREATEST(period_start, period_end - interval '1 microsecond') AT TIME ZONE $2, 'YYYY-MM-DD')
                    AS last_day,
                amount_paid, currency, status
         FROM billing_cycles WHERE user_id = $1
         ORDER BY period_start DESC, created_at DESC
         LIMIT $3",
    )
    .bind(user_id)
    .bind(timezone)
    .bind(SHOWN_CYCLES)
    .fetch_all(pool)
    .await?;
    Ok(BillingOverview { subscription, can_subscribe: false, cycles, sync: Default::default() })
}

/// The email and Stripe customer (if linked) Checkout is opened for.
pub async fn checkout_identity(pool: &PgPool, user_id: Uuid) -> Result<(String, Option<String>), AppError> {
    sqlx::query_as("SELECT email, stripe_customer_id FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await?
        .ok_or(AppError::Unauthorized)
}
