//! Who is calling: a service with an API key, or a signed-in browser.

use axum::http::{header, HeaderMap};
use sqlx::PgPool;
use uuid::Uuid;

use super::{api_key, session};
use crate::error::AppError;

/// The user on whose behalf the current request acts: `Authorization: Bearer <api key>` when the header is
/// present (a bad key is refused, never silently replaced by the session), else the session's user.
pub async fn user_id(pool: &PgPool) -> Result<Uuid, AppError> {
    let headers: HeaderMap = leptos_axum::extract().await.map_err(AppError::internal)?;
    match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                .map(str::trim)
                .ok_or(AppError::Unauthorized)?;
            api_key::authenticate(pool, key).await
        }
        None => session::require_user_id().await,
    }
}

/// The value of a request header of the current request, if present and valid UTF-8.
pub async fn header_value(name: &str) -> Result<Option<String>, AppError> {
    let headers: HeaderMap = leptos_axum::extract().await.map_err(AppError::internal)?;
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.to_owned()))
            .map_err(|_| AppError::BadRequest(format!("header {name} is not valid text"))),
    }
}
