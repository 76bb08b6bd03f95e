//! The signed-in user of the current request, kept in a `tower-sessions` session.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tower_sessions::Session;
use uuid::Uuid;

use crate::error::AppError;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "tally_session";

/// Session key under which the signed-in user's id is stored.
const USER_ID_KEY: &str = "user_id";
/// Session key holding the day (UTC) the session's expiry was last pushed back.
const RENEWED_ON_KEY: &str = "renewed_on";
/// A session ends after this many days without use.
pub const IDLE_DAYS: i64 = 14;

/// The session of the request being served.
async fn current() -> Result<Session, AppError> {
    leptos_axum::extract::<Session>().await.map_err(AppError::internal)
}

/// The signed-in user's id, if any.
pub async fn user_id() -> Result<Option<Uuid>, AppError> {
    user_of(&current().await?).await
}

/// The user signed in with `session`, if any (for plain axum routes, which get the session as an extractor).
pub async fn user_of(session: &Session) -> Result<Option<Uuid>, AppError> {
    session.get::<Uuid>(USER_ID_KEY).await.map_err(AppError::internal)
}

/// The signed-in user's id, or [`AppError::Unauthorized`].
pub async fn require_user_id() -> Result<Uuid, AppError> {
    user_id().await?.ok_or(AppError::Unauthorized)
}

/// Signs `user_id` in, under a new session id (defeats session fixation).
pub async fn sign_in(user_id: Uuid) -> Result<(), AppError> {
    let session = current().await?;
    session.cycle_id().await.map_err(AppError::internal)?;
    session.insert(USER_ID_KEY, user_id).await.map_err(AppError::internal)
}

/// Ends the session: its row is deleted and the cookie cleared.
pub async fn sign_out() -> Result<(), AppError> {
    current().await?.flush().await.map_err(AppError::internal)
}

/// Middleware: keeps a signed-in session alive while it is used. `tower-sessions` stores a new expiry only when a
/// session changes; marking the day of use changes it at most once a day, so a session ends [`IDLE_DAYS`] after its
/// last use rather than after sign-in, for one write per user and day instead of one per request.
pub async fn renew_while_used(session: Session, request: Request, next: Next) -> Response {
    if session.id().is_some() && !request.uri().path().starts_with("/pkg/") {
        if let Ok(Some(_)) = user_of(&session).await {
            let today = chrono::Utc::now().date_naive().to_string();
            if session.get::<String>(RENEWED_ON_KEY).await.ok().flatten().as_deref() != Some(today.as_str()) {
                if let Err(err) = session.insert(RENEWED_ON_KEY, today).await {
                    tracing::warn!(error = %err, "could not renew a session");
                }
            }
        }
    }
    next.run(request).await
}
