//! The billing history: the user's subscription and invoices, read for the dashboard.

use sqlx::PgPool;
use uuid::Uuid;

use super::{BillingCycle, BillingOverview, SubscriptionInfo};
use crate::error::AppError;

/// How many invoices the dashboard lists.
pub const SHOWN_CYCLES: i64 = 24;

/// `user_id`'s newest subscription and latest invoices, days in `timezone`.
pub async fn overview(pool: &PgPool, user_id: Uuid, timezone: &str) -> Result<BillingOverview, AppError> {
    let subscription = sqlx::query_as!(
        SubscriptionInfo,
        r#"SELECT status, current_period_start AS "current_period_start: _",
                  current_period_end AS "current_period_end: _", cancel_at_period_end
           FROM subscriptions WHERE user_id = $1 ORDER BY state_at DESC LIMIT 1"#,
        user_id
    )
    .fetch_optional(pool)
    .await?;
    // A period ends at the first instant of the next one, so its last day is the day of `end` minus a moment.
    let cycles = sqlx::query_as!(
        BillingCycle,
        r#"SELECT stripe_invoice_id,
                to_char(period_start AT TIME ZONE $2, 'YYYY-MM-DD') AS "first_day!",
                to_char(GREATEST(period_start, period_end - interval '1 microsecond') AT TIME ZONE $2, 'YYYY-MM-DD')
                    AS "last_day!",
                amount_paid, currency, status
         FROM billing_cycles WHERE user_id = $1
         ORDER BY period_start DESC, created_at DESC
         LIMIT $3"#,
        user_id,
        timezone,
        SHOWN_CYCLES
    )
    .fetch_all(pool)
    .await?;
    let account = sqlx::query!(
        r#"SELECT (SELECT count(*) FROM subscriptions WHERE user_id = $1 AND status = ANY($2)) AS "live!",
                  EXISTS (SELECT 1 FROM users WHERE id = $1 AND stripe_customer_id IS NOT NULL) AS "has_customer!""#,
        user_id,
        crate::usage::period::LIVE_STATUSES as _
    )
    .fetch_one(pool)
    .await?;
    let live = account.live;
    Ok(BillingOverview {
        subscription,
        can_subscribe: false,
        has_customer: account.has_customer,
        can_manage: false,
        cycles,
        sync: Default::default(),
        duplicate_subscription: live > 1,
    })
}

/// Opens Stripe Checkout for `user_id` and returns its URL, once per user: the user's checkout lock makes
/// concurrent requests (two tabs, a double click) wait for each other, a session opened in the last 23 hours (Stripe
/// expires them after 24) is handed out again, and a user with a live or pending subscription is refused, since a
/// second subscription would bill every unit twice.
pub async fn open_checkout(
    state: &super::BillingState,
    stripe: &super::stripe::StripeClient,
    price_ids: &[String],
    user_id: Uuid,
) -> Result<String, AppError> {
    let mut tx = state.pool.begin().await?;
    // An advisory lock, not the user's row: usage writers lock limited users' rows, and this one is held across
    // the Stripe call.
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended('tally-checkout:' || $1::uuid::text, 0))", user_id)
        .fetch_one(&mut *tx)
        .await?;
    let account = sqlx::query!(
        r#"SELECT u.email, u.stripe_customer_id,
                EXISTS (SELECT 1 FROM subscriptions s WHERE s.user_id = u.id AND s.status = ANY($2)) AS "subscribed!",
                (SELECT c.url FROM checkout_sessions c
                 WHERE c.user_id = u.id AND c.created_at > now() - interval '23 hours') AS "open?"
         FROM users u WHERE u.id = $1"#,
        user_id,
        crate::usage::period::LIVE_STATUSES as _
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AppError::Unauthorized)?;
    let (email, customer, subscribed, open) =
        (account.email, account.stripe_customer_id, account.subscribed, account.open);
    if subscribed {
        return Err(AppError::Refused(crate::error::Problem::AlreadySubscribed));
    }
    if let Some(url) = open {
        return Ok(url);
    }
    let base = state.config.public_url.trim_end_matches('/');
    let (success_url, cancel_url) = (format!("{base}/?checkout=success"), format!("{base}/?checkout=cancelled"));
    // New per session Tally opens (a saved Stripe error must not be replayed to every later attempt); a retry
    // of the same attempt cannot happen, since the lock and the stored session cover it.
    let idempotency_key = format!("checkout:{user_id}:{}", Uuid::new_v4());
    let checkout = super::stripe::Checkout {
        user_id: &user_id.to_string(),
        email: &email,
        customer: customer.as_deref(),
        price_ids,
        success_url: &success_url,
        cancel_url: &cancel_url,
        idempotency_key: &idempotency_key,
    };
    let (session_id, url) = stripe.create_checkout_session(&checkout).await.map_err(|err| {
        tracing::warn!(%err, "Stripe Checkout failed");
        AppError::Upstream("Stripe could not start the checkout; try again in a moment".into())
    })?;
    sqlx::query!(
        "INSERT INTO checkout_sessions (user_id, stripe_session_id, url) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET stripe_session_id = $2, url = $3, created_at = now()",
        user_id,
        &session_id,
        &url
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(url)
}
