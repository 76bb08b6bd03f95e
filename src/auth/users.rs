//! The `users` table.

use sqlx::PgPool;
use uuid::Uuid;

use super::error::AuthError;
use super::{check_new_password, normalize_email, password, CurrentUser};
use crate::error::Problem;

/// Creates an account after validating the email and password; a taken email is refused with
/// [`Problem::AccountExists`] (409). `own_limits` are limits of its own per event type (`None`: unlimited); every
/// other meter applies its default limit (`meters.toml`).
pub async fn register(
    pool: &PgPool,
    email: &str,
    new_password: &str,
    own_limits: &[(String, Option<i64>)],
) -> Result<Uuid, AuthError> {
    let email = normalize_email(email)?;
    check_new_password(new_password)?;
    if own_limits.iter().any(|(_, limit)| limit.is_some_and(|limit| limit <= 0)) {
        return Err(AuthError::Invalid("usage limit must be positive".into()));
    }
    let password_hash = password::hash(new_password.to_owned()).await?;
    let id = Uuid::new_v4();
    let (types, limits): (Vec<String>, Vec<Option<i64>>) = own_limits.iter().cloned().unzip();
    // One statement: the account and its own limits exist together or not at all.
    sqlx::query!(
        "WITH account AS (INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3) RETURNING id)
         INSERT INTO usage_limits (user_id, event_type, usage_limit)
         SELECT account.id, own.event_type, own.usage_limit
         FROM account CROSS JOIN unnest($4::text[], $5::bigint[]) AS own (event_type, usage_limit)",
        id,
        &email,
        password_hash,
        &types,
        &limits as &[Option<i64>]
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

/// What an account's limit on one event type becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitChoice {
    /// A limit of its own (`None`: unlimited).
    Own(Option<i64>),
    /// The meter's default (`meters.toml`) again.
    Default,
}

/// Sets an account's limit on `event_type` and, when given, its warning share (one for all its meters).
pub async fn set_limit(
    pool: &PgPool,
    email: &str,
    event_type: &str,
    choice: LimitChoice,
    warning_percent: Option<i16>,
) -> Result<(), AuthError> {
    let email = normalize_email(email)?;
    let (own, limit) = match choice {
        LimitChoice::Own(limit) => (true, limit),
        LimitChoice::Default => (false, None),
    };
    // One statement: the warning share and the limit change together, under the row lock writers check limits by.
    let found = sqlx::query_scalar!(
        r#"WITH account AS (
               UPDATE users SET usage_warning_percent = COALESCE($3, usage_warning_percent)
               WHERE email = $1 RETURNING id
           ), cleared AS (
               DELETE FROM usage_limits l USING account
               WHERE l.user_id = account.id AND l.event_type = $2 AND NOT $4
           ), own AS (
               INSERT INTO usage_limits (user_id, event_type, usage_limit)
               SELECT id, $2, $5 FROM account WHERE $4
               ON CONFLICT (user_id, event_type) DO UPDATE SET usage_limit = EXCLUDED.usage_limit
           )
           SELECT count(*) AS "found!" FROM account"#,
        &email,
        event_type,
        warning_percent,
        own,
        limit
    )
    .fetch_one(pool)
    .await?;
    if found == 1 {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!("no account for {email}")))
    }
}

/// An account's limit on each meter of `catalog` (`usage_limit_of`: its own, else the meter's default;
/// `None`: unlimited), and whether it is its own.
pub async fn limits(
    pool: &PgPool,
    catalog: &crate::meters::Catalog,
    user_id: Uuid,
) -> Result<Vec<(String, Option<i64>, bool)>, AuthError> {
    let (types, defaults): (Vec<String>, Vec<Option<i64>>) =
        catalog.meters().iter().map(|m| (m.event_type.clone(), m.limit)).unzip();
    let rows = sqlx::query!(
        r#"SELECT m.event_type AS "event_type!", l.usage_limit AS "limit",
                  EXISTS (SELECT 1 FROM usage_limits o WHERE o.user_id = $1 AND o.event_type = m.event_type)
                      AS "own!"
           FROM unnest($2::text[], $3::bigint[]) WITH ORDINALITY AS m (event_type, default_limit, position)
           CROSS JOIN LATERAL usage_limit_of($1, m.event_type, m.default_limit) AS l
           ORDER BY m.position"#,
        user_id,
        &types,
        &defaults as &[Option<i64>]
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.event_type, row.limit, row.own)).collect())
}

/// The id of the account with this email, if any.
pub async fn find_id_by_email(pool: &PgPool, email: &str) -> Result<Option<Uuid>, AuthError> {
    let email = normalize_email(email)?;
    Ok(sqlx::query_scalar!("SELECT id FROM users WHERE email = $1", email).fetch_optional(pool).await?)
}
