//! The signed-in user of the current request, kept in a `tower-sessions` session.

use tower_sessions::Session;
use uuid::Uuid;

use crate::error::AppError;

/// Session key under which the signed-in user's id is stored.
const USER_ID_KEY: &str = "user_id";

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
