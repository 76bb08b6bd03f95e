//! Accounts: sign-up, log-in and log-out with email and password, and the signed-in user.
//!
//! Passwords are hashed with Argon2id (`password-auth`); sessions live in PostgreSQL (`tower-sessions`), and the
//! session id is replaced at every sign-in so a session fixed before sign-in is worth nothing after it.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{AppError, Problem};

/// What accounts need from the server: the database and the settings.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct AuthState {
    pub pool: sqlx::PgPool,
    pub config: std::sync::Arc<crate::config::Config>,
}

#[cfg(feature = "ssr")]
impl AuthState {
    /// This request's, from the leptos context.
    pub fn current() -> Result<AuthState, AppError> {
        crate::error::from_context()
    }
}

#[cfg(feature = "ssr")]
pub mod api_key;
#[cfg(feature = "ssr")]
pub mod caller;
#[cfg(feature = "ssr")]
pub mod error;
#[cfg(feature = "ssr")]
pub mod password;
#[cfg(feature = "ssr")]
pub mod session;
#[cfg(feature = "ssr")]
pub mod throttle;
#[cfg(feature = "ssr")]
pub mod users;

/// Longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted; bounds the hashing work one request can ask for.
pub const MAX_PASSWORD_LEN: usize = 256;

/// The signed-in user, as the pages see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentUser {
    pub id: Uuid,
    pub email: String,
}

/// An API key as lists show it (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(sqlx::FromRow))]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub name: String,
    /// The key's first characters, e.g. `tly_live_Ab12`.
    pub display_prefix: String,
    pub created_at: DateTime<Utc>,
    /// When the key was last used (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key just created: the only moment its secret is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedApiKey {
    pub info: ApiKeyInfo,
    pub secret: String,
}

/// Normalises an email (trimmed, lower-case) and checks that it looks like one. Deliverability is not checked:
/// there is no mail step in Tally.
pub fn normalize_email(raw: &str) -> Result<String, Problem> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(Problem::EmailMissing);
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(Problem::EmailTooLong { max: MAX_EMAIL_LEN });
    }
    let valid = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if valid {
        Ok(email)
    } else {
        Err(Problem::EmailInvalid { email: crate::error::excerpt(raw.trim()) })
    }
}

/// Checks a new password's length (counted in characters, not bytes).
pub fn check_new_password(password: &str) -> Result<(), Problem> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        Err(Problem::PasswordTooShort { min: MIN_PASSWORD_LEN })
    } else if chars > MAX_PASSWORD_LEN {
        Err(Problem::PasswordTooLong { max: MAX_PASSWORD_LEN })
    } else {
        Ok(())
    }
}

/// Creates an account (its limits are the meters' defaults) and signs it in.
#[server(endpoint = "auth/signup")]
pub async fn signup(email: String, password: String) -> Result<(), AppError> {
    let state = AuthState::current()?;
    let parts: axum::http::request::Parts = leptos_axum::extract().await.map_err(AppError::internal)?;
    let ip = throttle::client_ip(&parts, state.config.trust_forwarded_for);
    // Counted before any hashing, taken emails included: sign-ups cannot be used to list accounts at speed.
    throttle::begin_signup(&state.pool, ip, throttle::SignupLimits::from_config(&state.config)).await?;
    // No Stripe call here: the delivery worker creates the customers of new accounts (and Checkout its user's), so
    // sign-up never waits for Stripe and accounts depend on no other domain.
    let user_id = users::register(&state.pool, &email, &password, &[]).await?;
    session::sign_in(user_id).await?;
    leptos_axum::redirect("/");
    Ok(())
}

/// Signs in with email and password. Failed attempts are throttled per account and address (see [`throttle`]).
#[server(endpoint = "auth/login")]
pub async fn login(email: String, password: String) -> Result<(), AppError> {
    let state = AuthState::current()?;
    let parts: axum::http::request::Parts = leptos_axum::extract().await.map_err(AppError::internal)?;
    let ip = throttle::client_ip(&parts, state.config.trust_forwarded_for);
    // Throttled as typed when it is not an email at all, so garbage cannot dodge the per-account count.
    let account = normalize_email(&email).unwrap_or_else(|_| email.trim().to_lowercase());
    // Counted before the password is checked; a wrong password leaves it counted.
    let attempt = throttle::begin(&state.pool, &account, ip).await?;
    let user_id = users::authenticate(&state.pool, &email, &password).await?;
    throttle::succeeded(&state.pool, attempt, &account, ip).await?;
    session::sign_in(user_id).await?;
    leptos_axum::redirect("/");
    Ok(())
}

/// Ends the session.
#[server(endpoint = "auth/logout")]
pub async fn logout() -> Result<(), AppError> {
    session::sign_out().await?;
    leptos_axum::redirect("/login");
    Ok(())
}

/// The signed-in user, or `None`.
#[server(endpoint = "auth/me")]
pub async fn get_current_user() -> Result<Option<CurrentUser>, AppError> {
    let state = AuthState::current()?;
    match session::user_id().await? {
        Some(id) => Ok(users::find(&state.pool, id).await?),
        None => Ok(None),
    }
}

/// The signed-in user's API keys.
#[server(endpoint = "keys/list")]
pub async fn list_api_keys() -> Result<Vec<ApiKeyInfo>, AppError> {
    let state = AuthState::current()?;
    let user_id = session::require_user_id().await?;
    Ok(api_key::list(&state.pool, user_id).await?)
}

/// Creates an API key for the signed-in user; the answer holds the secret, which is never shown again.
#[server(endpoint = "keys/create")]
pub async fn create_api_key(name: String) -> Result<CreatedApiKey, AppError> {
    let state = AuthState::current()?;
    let user_id = session::require_user_id().await?;
    let (info, secret) = api_key::create(&state.pool, user_id, &name).await?;
    Ok(CreatedApiKey { info, secret })
}

/// Revokes one of the signed-in user's API keys; it stops working at once.
#[server(endpoint = "keys/revoke")]
pub async fn revoke_api_key(id: Uuid) -> Result<(), AppError> {
    let state = AuthState::current()?;
    let user_id = session::require_user_id().await?;
    Ok(api_key::revoke(&state.pool, user_id, id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(normalize_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
    }

    #[test]
    fn malformed_emails_are_refused_with_a_message() {
        for raw in ["", "   ", "ada", "@example.com", "ada@", "ada@@example.com", "a da@example.com", "ada@.com"] {
            let err = normalize_email(raw).unwrap_err();
            assert_eq!(AppError::from(err).status_code(), 422, "{raw:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(normalize_email(&long).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn password_length_is_counted_in_characters() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("ちょうどじゅうもじです").is_ok());
        assert!(check_new_password(&"x".repeat(MAX_PASSWORD_LEN + 1)).is_err());
    }
}
