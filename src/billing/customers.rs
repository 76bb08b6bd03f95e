//! Stripe customers for accounts: created at sign-up when Stripe is configured, and by the delivery worker for
//! accounts that have none yet (created before Stripe was configured, or while Stripe was unreachable).

use sqlx::PgPool;
use uuid::Uuid;

use crate::billing::stripe::StripeClient;
use crate::error::AppError;

/// Gives `user_id` a Stripe customer unless it has one, and returns the customer id. The Idempotency-Key is
/// derived from the account, so a retry after a lost answer gets the same customer instead of a second one.
pub async fn ensure(pool: &PgPool, stripe: &StripeClient, user_id: Uuid) -> Result<String, AppError> {
    let (email, existing): (String, Option<String>) =
        sqlx::query_as("SELECT email, stripe_customer_id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| AppError::Invalid(format!("no account {user_id}")))?;
    if let Some(customer) = existing {
        return Ok(customer);
    }
    let customer = stripe
        .create_customer(&email, &user_id.to_string(), &format!("tally-customer-{user_id}"))
        .await
        .map_err(|err| AppError::Upstream(format!("Stripe did not create a customer: {err}")))?;
    let mut tx = pool.begin().await?;
    let linked = crate::billing::events::attach_customer(&mut tx, user_id, &customer, false).await?;
    tx.commit().await?;
    if !linked {
        // Linked meanwhile (Checkout, `tally stripe link`): that link wins.
        let current: Option<String> = sqlx::query_scalar("SELECT stripe_customer_id FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(pool)
            .await?;
        return current.ok_or_else(|| AppError::Conflict(format!("{customer} is linked to another account")));
    }
    tracing::info!(user = %user_id, customer = %customer, "created Stripe customer");
    Ok(customer)
}

/// Creates customers for up to `limit` accounts without one; returns how many were created and whether one
/// failed (it is logged; the sweep stops there and the account is tried again later).
pub async fn create_missing(pool: &PgPool, stripe: &StripeClient, limit: i64) -> Result<(u64, bool), AppError> {
    let users: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE stripe_customer_id IS NULL ORDER BY created_at LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?;
    let mut created = 0;
    for user in users {
        match ensure(pool, stripe, user).await {
            Ok(_) => created += 1,
            Err(err) => {
                tracing::warn!(user = %user, error = %err, "could not create a Stripe customer; will retry");
                return Ok((created, true));
            }
        }
    }
    Ok((created, false))
}
