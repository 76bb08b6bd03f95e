//! Stripe customers for accounts: created at sign-up when Stripe is configured, and by the delivery worker for
//! accounts that have none yet (created before Stripe was configured, or while Stripe was unreachable).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::billing::error::BillingError;
use crate::billing::stripe::StripeClient;

/// Gives `user_id` a Stripe customer unless it has one, and returns the customer id. A customer made for the
/// account by an earlier attempt whose answer was lost is found by its `metadata[user_id]` first; the
/// Idempotency-Key names the account *and the attempt*, because Stripe replays a key's first answer, a 500
/// included, for 24 hours.
pub async fn ensure(pool: &PgPool, stripe: &StripeClient, user_id: Uuid) -> Result<String, BillingError> {
    let account = sqlx::query!("SELECT email, stripe_customer_id, customer_attempts FROM users WHERE id = $1", user_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| BillingError::NoAccount(user_id.to_string()))?;
    let (email, existing, attempts) = (account.email, account.stripe_customer_id, account.customer_attempts);
    if let Some(customer) = existing {
        return Ok(customer);
    }
    let customer = match stripe.find_customer_by_user(&user_id.to_string()).await? {
        Some(found) => found,
        None => {
            stripe
                .create_customer(&email, &user_id.to_string(), &format!("tally-customer-{user_id}-{attempts}"))
                .await?
        }
    };
    let mut tx = pool.begin().await?;
    let linked = crate::billing::events::attach_customer(&mut tx, user_id, &customer, false).await?;
    tx.commit().await?;
    if !linked {
        // Linked meanwhile (Checkout, `tally stripe link`): that link wins.
        let current =
            sqlx::query_scalar!("SELECT stripe_customer_id FROM users WHERE id = $1", user_id).fetch_one(pool).await?;
        return current.ok_or_else(|| BillingError::Conflict(format!("{customer} is linked to another account")));
    }
    tracing::info!(user = %user_id, customer = %customer, "created Stripe customer");
    Ok(customer)
}

/// Creates customers for up to `limit` accounts without one that are due; returns how many were created. An
/// account Stripe refuses is retried with its own exponential backoff (from 1 minute to 6 hours) and never holds
/// up the accounts after it.
pub async fn create_missing(
    pool: &PgPool,
    stripe: &StripeClient,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<u64, BillingError> {
    let users = sqlx::query_scalar!(
        "SELECT id FROM users
         WHERE stripe_customer_id IS NULL AND (customer_next_attempt_at IS NULL OR customer_next_attempt_at <= $2)
         ORDER BY customer_next_attempt_at NULLS FIRST, created_at
         LIMIT $1",
        limit,
        now as _
    )
    .fetch_all(pool)
    .await?;
    let mut created = 0;
    for user in users {
        match ensure(pool, stripe, user).await {
            Ok(_) => created += 1,
            Err(err) => {
                tracing::warn!(user = %user, error = %err, "could not create a Stripe customer; will retry");
                let attempts = sqlx::query_scalar!(
                    "UPDATE users SET customer_attempts = customer_attempts + 1, customer_last_error = $2
                     WHERE id = $1 RETURNING customer_attempts",
                    user,
                    err.to_string()
                )
                .fetch_one(pool)
                .await?;
                let delay = crate::retry::backoff(
                    attempts,
                    std::time::Duration::from_secs(60),
                    std::time::Duration::from_secs(6 * 3600),
                    crate::retry::random_unit(),
                );
                let next_attempt_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
                sqlx::query!(
                    "UPDATE users SET customer_next_attempt_at = $2 WHERE id = $1",
                    user,
                    next_attempt_at as _
                )
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(created)
}
