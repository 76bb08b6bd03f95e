//! The `users` table.

use sqlx::PgPool;
use uuid::Uuid;

use super::error::AuthError;
use super::{check_new_password, normalize_email, password, CurrentUser};
use crate::error::Problem;

/// Creates an account after validating the email and password; a taken email is refused with
/// [`Problem::AccountExists`] (409).
pub async fn register(
    pool: &PgPool,
    email: &str,
    new_password: &str,
    usage_limit: Option<i64>,
) -> Result<Uuid, AuthError> {
    let email = normalize_email(email)?;
    check_new_password(new_password)?;
    if usage_limit.is_some_and(|limit| limit <= 0) {
        return Err(AuthError::Invalid("usage limit must be positive".into()));
    }
    let password_hash = password::hash(new_password.to_owned()).await?;
    let id = Uuid::new_v4();
    sqlx::query!(
        "INSERT INTO users (id, email, password_hash, usage_limit) VALUES ($1, $2, $3, $4)",
        id,
        &email,
        password_hash,
        usage_limit
    )
    .execute(pool)
    .await
    .map_err(|err| match err.as_database_error().and_then(|db| db.constraint()) {
        Some("users_email_key") => AuthError::Refused(Problem::AccountExists { email: email.clone() }),
        _ => AuthError::Database(err),
    })?;
    Ok(id)
}

/// The id of the account with this email and password, or [`AuthError::InvalidCredentials`].
pub async fn authenticate(pool: &PgPool, email: &str, candidate: &str) -> Result<Uuid, AuthError> {
    // A malformed email cannot have an account; answer as for a wrong password, after the same hashing work.
    let email = normalize_email(email).unwrap_or_default();
    let row = sqlx::query!("SELECT id, password_hash FROM users WHERE email = $1", &email).fetch_optional(pool).await?;
    let (id, hash) = row.map(|row| (row.id, row.password_hash)).unzip();
    if password::verify(candidate.to_owned(), hash).await? {
        id.ok_or(AuthError::InvalidCredentials)
    } else {
        Err(AuthError::InvalidCredentials)
    }
}

/// The account with this id, if it still exists.
pub async fn find(pool: &PgPool, id: Uuid) -> Result<Option<CurrentUser>, AuthError> {
    Ok(sqlx::query_as!(CurrentUser, "SELECT id, email FROM users WHERE id = $1", id).fetch_optional(pool).await?)
}

/// Sets an account's usage limit (`None`: unlimited) and, when given, its warning share.
pub async fn set_limit(
    pool: &PgPool,
    email: &str,
    usage_limit: Option<i64>,
    warning_percent: Option<i16>,
) -> Result<(), AuthError> {
    let email = normalize_email(email)?;
    let updated = sqlx::query!(
        "UPDATE users SET usage_limit = $2, usage_warning_percent = COALESCE($3, usage_warning_percent)
         WHERE email = $1",
        &email,
        usage_limit,
        warning_percent
    )
    .execute(pool)
    .await?
    .rows_affected();
    if updated == 1 {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!("no account for {email}")))
    }
}

/// The id of the account with this email, if any.
pub async fn find_id_by_email(pool: &PgPool, email: &str) -> Result<Option<Uuid>, AuthError> {
    let email = normalize_email(email)?;
    Ok(sqlx::query_scalar!("SELECT id FROM users WHERE email = $1", email).fetch_optional(pool).await?)
}
