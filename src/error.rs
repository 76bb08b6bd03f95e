//! The one error type of Tally's server functions and HTTP routes.
//!
//! Every variant carries only text that is safe to show a user: database errors, stack traces and secrets are
//! logged on the server by [`AppError::internal`] and reach the client as the generic [`AppError::Internal`].
//! The HTTP status of each variant is decided in one place, [`AppError::status_code`].

use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

/// An error with a short, user-facing message and a fixed HTTP status.
///
/// On the wire (server functions and JSON routes alike) it is `{"error": "<message>", "code": "<code>"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(into = "WireError", try_from = "WireError")]
pub enum AppError {
    /// The request is well-formed but a value is not acceptable (a bad email, a short password…).
    #[error("{0}")]
    Invalid(String),
    /// The request could not be read at all (missing or mistyped arguments, malformed body).
    #[error("{BAD_REQUEST_PREFIX}{0}")]
    BadRequest(String),
    /// No signed-in user (or no valid API key) where one is required.
    #[error("please sign in")]
    Unauthorized,
    /// A sign-in attempt with an unknown email or a wrong password; deliberately does not say which.
    #[error("email or password is incorrect")]
    InvalidCredentials,
    /// The request was refused for what it is, not for who sent it (a cross-site POST, for instance).
    #[error("{0}")]
    Forbidden(String),
    /// The thing asked for does not exist, or is not the caller's (the two are not told apart).
    #[error("{0}")]
    NotFound(String),
    /// The request body is larger than the server accepts.
    #[error("the request body is larger than {} KiB", .0 / 1024)]
    TooLarge(usize),
    /// The body is not in the format the endpoint reads (e.g. `text/plain` where JSON is expected).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request conflicts with what is stored (an email that already has an account).
    #[error("{0}")]
    Conflict(String),
    /// Some events of a batch are invalid; nothing of the batch was stored.
    #[error("{} of the events are invalid; nothing was recorded", .0.len())]
    InvalidEvents(Vec<EventProblem>),
    /// Recording would take the user past their hard usage limit for the period; nothing was recorded.
    #[error("usage limit reached: {remaining} of {limit} remain this period")]
    LimitExceeded { limit: i64, remaining: i64 },
    /// Too many failed sign-in attempts from this address or for this account; try again after the given seconds.
    #[error("too many failed sign-in attempts; try again in {} minutes", .retry_after_secs.div_ceil(60))]
    TooManyAttempts { retry_after_secs: u64 },
    /// A feature is not configured or a dependency is down; worth retrying later.
    #[error("{0}")]
    Unavailable(String),
    /// A service Tally depends on (the AI provider) failed or answered nonsense.
    #[error("{0}")]
    Upstream(String),
    /// Something failed on the server; the details are in the server log only.
    #[error("something went wrong on our side; please try again")]
    Internal,
    /// The server function call itself failed (network, serialization): seen on the client side.
    #[error("{TRANSPORT_PREFIX}{0}")]
    Transport(String),
}

impl AppError {
    /// The HTTP status this error is answered with, for server functions and plain routes alike.
    pub fn status_code(&self) -> u16 {
        match self {
            AppError::BadRequest(_) => 400,
            AppError::Unauthorized | AppError::InvalidCredentials => 401,
            AppError::Forbidden(_) => 403,
            AppError::NotFound(_) => 404,
            AppError::TooLarge(_) => 413,
            AppError::UnsupportedMediaType(_) => 415,
            AppError::Conflict(_) => 409,
            AppError::Invalid(_) | AppError::InvalidEvents(_) => 422,
            AppError::LimitExceeded { .. } | AppError::TooManyAttempts { .. } => 429,
            AppError::Internal => 500,
            AppError::Upstream(_) | AppError::Transport(_) => 502,
            AppError::Unavailable(_) => 503,
        }
    }

    /// A short machine-readable name of the variant, for JSON error bodies and tests.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Invalid(_) => "invalid",
            AppError::BadRequest(_) => "bad_request",
            AppError::Unauthorized => "unauthorized",
            AppError::InvalidCredentials => "invalid_credentials",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::TooLarge(_) => "too_large",
            AppError::UnsupportedMediaType(_) => "unsupported_media_type",
            AppError::Conflict(_) => "conflict",
            AppError::InvalidEvents(_) => "invalid_events",
            AppError::LimitExceeded { .. } => "limit_exceeded",
            AppError::TooManyAttempts { .. } => "too_many_attempts",
            AppError::Upstream(_) => "upstream",
            AppError::Unavailable(_) => "unavailable",
            AppError::Internal => "internal",
            AppError::Transport(_) => "transport",
        }
    }
}

/// What is wrong with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventProblem {
    /// Position of the event in the request's `events` array.
    pub index: usize,
    pub error: String,
}

/// The JSON shape of an [`AppError`].
#[derive(Serialize, Deserialize)]
struct WireError {
    error: String,
    code: String,
    /// Per-event problems of a rejected batch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<EventProblem>,
    /// Limit and allowance left, when a hard limit refused the request; the byte limit of a body too large.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remaining: Option<i64>,
    /// Seconds until another attempt is allowed (also sent as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

/// Largest request body accepted anywhere (server functions included).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

const BAD_REQUEST_PREFIX: &str = "malformed request: ";
const TRANSPORT_PREFIX: &str = "could not reach Tally: ";

impl From<AppError> for WireError {
    fn from(err: AppError) -> Self {
        let error = err.to_string();
        let code = err.code().to_owned();
        let wire = WireError { error, code, events: Vec::new(), limit: None, remaining: None, retry_after: None };
        match err {
            AppError::InvalidEvents(events) => WireError { events, ..wire },
            AppError::LimitExceeded { limit, remaining } => {
                WireError { limit: Some(limit), remaining: Some(remaining), ..wire }
            }
            AppError::TooManyAttempts { retry_after_secs } => WireError { retry_after: Some(retry_after_secs), ..wire },
            AppError::TooLarge(bytes) => WireError { limit: Some(bytes as i64), ..wire },
            _ => wire,
        }
    }
}

impl TryFrom<WireError> for AppError {
    type Error = String;

    fn try_from(wire: WireError) -> Result<Self, String> {
        let strip = |prefix: &str| wire.error.strip_prefix(prefix).unwrap_or(&wire.error).to_owned();
        Ok(match wire.code.as_str() {
            "invalid" => AppError::Invalid(wire.error),
            "bad_request" => AppError::BadRequest(strip(BAD_REQUEST_PREFIX)),
            "unauthorized" => AppError::Unauthorized,
            "invalid_credentials" => AppError::InvalidCredentials,
            "forbidden" => AppError::Forbidden(wire.error),
            "not_found" => AppError::NotFound(wire.error),
            "too_large" => AppError::TooLarge(wire.limit.ok_or("too_large without limit")? as usize),
            "unsupported_media_type" => AppError::UnsupportedMediaType(wire.error),
            "conflict" => AppError::Conflict(wire.error),
            "invalid_events" => AppError::InvalidEvents(wire.events),
            "limit_exceeded" => AppError::LimitExceeded {
                limit: wire.limit.ok_or("limit_exceeded without limit")?,
                remaining: wire.remaining.ok_or("limit_exceeded without remaining")?,
            },
            "too_many_attempts" => AppError::TooManyAttempts {
                retry_after_secs: wire.retry_after.ok_or("too_many_attempts without retry_after")?,
            },
            "upstream" => AppError::Upstream(wire.error),
            "unavailable" => AppError::Unavailable(wire.error),
            "internal" => AppError::Internal,
            "transport" => AppError::Transport(strip(TRANSPORT_PREFIX)),
            other => return Err(format!("unknown error code {other:?}")),
        })
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            // The body limit cut off a body sent without a length (http-body-util's `LengthLimitError`); the
            // server function machinery reports it as unreadable arguments. A test pins this message.
            ServerFnErrorErr::Args(msg) | ServerFnErrorErr::Deserialization(msg)
                if msg.contains("length limit exceeded") =>
            {
                AppError::TooLarge(MAX_BODY_BYTES)
            }
            ServerFnErrorErr::Args(msg)
            | ServerFnErrorErr::MissingArg(msg)
            | ServerFnErrorErr::Deserialization(msg)
            | ServerFnErrorErr::UnsupportedRequestMethod(msg) => AppError::BadRequest(msg),
            ServerFnErrorErr::Request(msg) | ServerFnErrorErr::Response(msg) => AppError::Transport(msg),
            // Registration, middleware, serialization and server errors are faults of ours, not of the caller.
            other => AppError::internal(other),
        }
    }
}

#[cfg(feature = "ssr")]
mod ssr {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::middleware::Next;
    use axum::response::{IntoResponse, Response};
    use leptos::server_fn::error::{FromServerFnError, SERVER_FN_ERROR_HEADER};

    use super::AppError;

    impl AppError {
        /// Logs `cause` on the server and returns the generic [`AppError::Internal`], so the cause (SQL, paths,
        /// secrets) never reaches a response body.
        pub fn internal(cause: impl std::fmt::Display) -> Self {
            tracing::error!(%cause, "internal error");
            AppError::Internal
        }

        /// The `Retry-After` header value of errors that say when to come back.
        fn retry_after(&self) -> Option<HeaderValue> {
            match self {
                AppError::TooManyAttempts { retry_after_secs } => Some(HeaderValue::from(*retry_after_secs)),
                _ => None,
            }
        }

        /// The status as an [`axum::http::StatusCode`].
        pub fn http_status(&self) -> StatusCode {
            StatusCode::from_u16(self.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }

    impl From<sqlx::Error> for AppError {
        fn from(err: sqlx::Error) -> Self {
            AppError::database_unavailable(&err).unwrap_or_else(|| AppError::internal(err))
        }
    }

    impl AppError {
        /// [`AppError::Unavailable`] with the retry advice (logged as a warning) when `err` says the database
        /// cannot serve right now; `None` for errors of the statement itself.
        pub fn database_unavailable(err: &sqlx::Error) -> Option<Self> {
            is_database_unavailable(err).then(|| {
                tracing::warn!(error = %err, "database unavailable");
                AppError::Unavailable(DATABASE_UNAVAILABLE.into())
            })
        }
    }

    /// The answer while PostgreSQL is down, restarting, read-only or out of disk. A commit whose answer was lost
    /// may have happened: the message says how to retry without counting twice.
    const DATABASE_UNAVAILABLE: &str = "the database is not accepting writes right now; retry in a moment \
         (with the same Idempotency-Key an event counts once)";

    /// Whether `err` says the database cannot serve right now (and a retry later may succeed), rather than that
    /// the statement is wrong: lost or refused connections, shutdown, read-only mode, a full disk.
    fn is_database_unavailable(err: &sqlx::Error) -> bool {
        match err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 25006: read-only transaction; 53: insufficient resources (disk full,
                // out of memory, too many connections); 57P01-57P03: shutdown or startup in progress.
                code.starts_with("08") || code == "25006" || code.starts_with("53") || code.starts_with("57P")
            }),
            _ => false,
        }
    }

    /// JSON routes answer errors in the same shape as server functions, with the variant's status.
    impl IntoResponse for AppError {
        fn into_response(self) -> Response {
            let retry_after = self.retry_after();
            let mut response = (self.http_status(), axum::Json(self)).into_response();
            if let Some(value) = retry_after {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }

    /// Largest server function error body this layer decodes (real ones are well under 1 KiB).
    const MAX_ERROR_BODY: usize = 64 * 1024;

    /// Middleware: gives server function error responses the status of their [`AppError`]. The server function
    /// machinery answers every error with 500, including the argument errors it raises before our code runs;
    /// this puts a 400, 401, 422… on them, from [`AppError::status_code`].
    pub async fn server_fn_error_status(request: Request, next: Next) -> Response {
        let response = next.run(request).await;
        if response.status() != StatusCode::INTERNAL_SERVER_ERROR
            || !response.headers().contains_key(SERVER_FN_ERROR_HEADER)
        {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
            return AppError::internal("unreadable server function error body").into_response();
        };
        let error = AppError::de(bytes.clone());
        parts.status = error.http_status();
        parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(value) = error.retry_after() {
            parts.headers.insert(header::RETRY_AFTER, value);
        }
        Response::from_parts(parts, Body::from(bytes))
    }
}

#[cfg(feature = "ssr")]
pub use ssr::server_fn_error_status;

#[cfg(not(feature = "ssr"))]
impl AppError {
    /// On the client there is nothing to log to; the cause stays out of the message all the same.
    pub fn internal(_cause: impl std::fmt::Display) -> Self {
        AppError::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_never_show_their_cause() {
        let err = AppError::internal("duplicate key value violates unique constraint \"users_email_key\"");
        assert_eq!(err, AppError::Internal);
        assert!(!err.to_string().contains("users_email_key"));
        assert_eq!(err.status_code(), 500);
    }

    #[test]
    fn argument_errors_are_bad_requests() {
        let err = AppError::from_server_fn_error(ServerFnErrorErr::MissingArg("email".into()));
        assert_eq!(err.status_code(), 400);
        assert_eq!(err.code(), "bad_request");
    }

    #[test]
    fn every_variant_round_trips_through_the_wire_format() {
        for err in [
            AppError::Invalid("quantity must be positive".into()),
            AppError::BadRequest("missing field `password`".into()),
            AppError::Unauthorized,
            AppError::InvalidCredentials,
            AppError::Forbidden("cross-site request refused".into()),
            AppError::NotFound("no such API key".into()),
            AppError::TooLarge(1024 * 1024),
            AppError::UnsupportedMediaType("send JSON".into()),
            AppError::Conflict("an account for a@b.c already exists".into()),
            AppError::InvalidEvents(vec![EventProblem { index: 3, error: "quantity must be positive".into() }]),
            AppError::LimitExceeded { limit: 1_000, remaining: 12 },
            AppError::TooManyAttempts { retry_after_secs: 61 },
            AppError::Upstream("the AI provider answered 500".into()),
            AppError::Unavailable("Stripe webhooks are not configured".into()),
            AppError::Internal,
            AppError::Transport("connection refused".into()),
        ] {
            assert_eq!(AppError::de(err.ser()), err);
        }
    }

    #[test]
    fn the_wire_format_carries_the_message_and_code() {
        let json = serde_json::to_value(AppError::InvalidCredentials).unwrap();
        assert_eq!(json, serde_json::json!({"error": "email or password is incorrect", "code": "invalid_credentials"}));
    }
}
