//! Who is calling: a service with an API key, or a signed-in browser.

use axum::http::{header, HeaderMap};
use sqlx::PgPool;
use uuid::Uuid;

use super::api_key::{self, KeyHash};
use super::session;
use crate::error::AppError;

/// The caller of a request, as far as can be told without the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A signed-in user (the session was already looked up).
    User(Uuid),
    /// A well-formed API key, not yet looked up. The usage writer resolves the keys of a whole group of requests
    /// in one statement inside its transaction, instead of one query per request before it.
    ApiKey(KeyHash),
}

/// Identifies the caller: `Authorization: Bearer <api key>` when the header is present (a bad key is refused,
/// never silently replaced by the session), else the session's user.
pub async fn identify() -> Result<Caller, AppError> {
    identify_by(&request_headers().await?).await
}

/// The current request's headers (one copy; extract them once when several are needed).
pub async fn request_headers() -> Result<HeaderMap, AppError> {
    leptos_axum::extract().await.map_err(AppError::internal)
}

/// [`identify`] with headers already extracted.
pub async fn identify_by(headers: &HeaderMap) -> Result<Caller, AppError> {
    match api_key_of(headers)? {
        Some(hash) => Ok(Caller::ApiKey(hash)),
        None => session::require_user_id().await.map(Caller::User),
    }
}

/// The API key of `Authorization: Bearer <key>`; `None` without the header. A malformed header or key is refused,
/// never silently replaced by the session.
pub fn api_key_of(headers: &HeaderMap) -> Result<Option<KeyHash>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(None) };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .and_then(|key| api_key::lookup_hash(key.trim()))
        .map(Some)
        .ok_or(AppError::Unauthorized)
}

/// The user on whose behalf the current request acts, looked up now.
pub async fn user_id(pool: &PgPool) -> Result<Uuid, AppError> {
    match identify().await? {
        Caller::User(id) => Ok(id),
        Caller::ApiKey(hash) => Ok(api_key::owner(pool, hash).await?),
    }
}

/// Checks that `caller` is a live user or key, without recording anything.
pub async fn confirm(pool: &PgPool, caller: Caller) -> Result<(), AppError> {
    match caller {
        Caller::User(_) => Ok(()),
        Caller::ApiKey(hash) => Ok(api_key::owner(pool, hash).await.map(|_| ())?),
    }
}

/// The value of header `name`, if present; a value that is not text is a bad request.
pub fn header_value(headers: &HeaderMap, name: &str) -> Result<Option<String>, AppError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(|v| Some(v.to_owned()))
            .map_err(|_| AppError::BadRequest(format!("header {name} is not valid text"))),
    }
}

/// Refuses a body that is not declared as JSON (`Content-Type: application/json`, parameters allowed) with 415.
/// The JSON endpoints would parse a `text/plain` body as well; refusing it keeps them out of reach of plain HTML
/// forms, whose cross-site posts can carry `text/plain` but never `application/json`.
pub fn require_json(headers: &HeaderMap) -> Result<(), AppError> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        other => Err(AppError::UnsupportedMediaType(format!(
            "send the body as JSON with Content-Type: application/json (got {})",
            other.unwrap_or("no Content-Type")
        ))),
    }
}
