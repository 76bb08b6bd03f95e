//! The one error type of Tally's server functions and HTTP routes.
//!
//! Every variant carries only text that is safe to show a user: database errors, stack traces and secrets are
//! logged on the server by [`AppError::internal`] and reach the client as the generic [`AppError::Internal`].
//! The HTTP status of each variant is decided in one place, [`AppError::status_code`].

use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

use crate::i18n::{td_string, Locale};

/// An error with a short, user-facing message and a fixed HTTP status.
///
/// On the wire (server functions and JSON routes alike) it is `{"error": "<message>", "code": "<code>"}`, the
/// message in English; pages show it in the reader's language ([`AppError::localized`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireError", try_from = "WireError")]
pub enum AppError {
    /// The request is well-formed but a value is not acceptable (an event's quantity, a limit that is not
    /// positive…); what a person can type on a page is refused as [`AppError::Refused`] instead.
    Invalid(String),
    /// The request could not be read at all (missing or mistyped arguments, malformed body).
    BadRequest(String),
    /// No signed-in user (or no valid API key) where one is required.
    Unauthorized,
    /// A sign-in attempt with an unknown email or a wrong password; deliberately does not say which.
    InvalidCredentials,
    /// The request was refused for what it is, not for who sent it (a cross-site POST, for instance).
    Forbidden(String),
    /// The thing asked for does not exist, or is not the caller's (the two are not told apart).
    NotFound(String),
    /// The request body is larger than the server accepts.
    TooLarge(usize),
    /// The body is not in the format the endpoint reads (e.g. `text/plain` where JSON is expected).
    UnsupportedMediaType(String),
    /// The request conflicts with what is stored (a Stripe customer already linked to another account).
    Conflict(String),
    /// Some events of a batch are invalid; nothing of the batch was stored.
    InvalidEvents(Vec<EventProblem>),
    /// Recording would take the user past their hard usage limit for the period; nothing was recorded.
    LimitExceeded { limit: i64, remaining: i64 },
    /// Too many failed sign-in attempts from this address or for this account; try again after the given seconds.
    TooManyAttempts { retry_after_secs: u64 },
    /// A feature is not configured or a dependency is down; worth retrying later.
    Unavailable(String),
    /// A service Tally depends on (the AI provider) failed or answered nonsense.
    Upstream(String),
    /// A refusal the pages can show in the reader's language (see [`Problem`]).
    Refused(Problem),
    /// Something failed on the server; the details are in the server log only.
    Internal,
    /// The server function call itself failed (network, serialization): seen on the client side.
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
            AppError::Refused(problem) => problem.status_code(),
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
            AppError::Refused(problem) => problem.code(),
        }
    }

    /// The message in `locale`. The variants that carry free text (mostly refusals that only API clients and the
    /// command line meet) keep it in English.
    pub fn localized(&self, locale: Locale) -> String {
        match self {
            AppError::Unauthorized => td_string!(locale, error_sign_in).to_string(),
            AppError::InvalidCredentials => td_string!(locale, error_invalid_credentials).to_string(),
            AppError::TooLarge(bytes) => td_string!(locale, error_too_large, kib = bytes / 1024).to_string(),
            AppError::InvalidEvents(events) => {
                td_string!(locale, error_invalid_events, count = events.len()).to_string()
            }
            AppError::LimitExceeded { limit, remaining } => {
                td_string!(locale, error_limit_exceeded, remaining = *remaining, limit = *limit).to_string()
            }
            AppError::TooManyAttempts { retry_after_secs } => {
                td_string!(locale, error_too_many_attempts, minutes = retry_after_secs.div_ceil(60)).to_string()
            }
            AppError::Internal => td_string!(locale, error_internal).to_string(),
            AppError::Transport(detail) => td_string!(locale, error_transport, detail = detail).to_string(),
            AppError::BadRequest(detail) => td_string!(locale, error_bad_request, detail = detail).to_string(),
            AppError::Refused(problem) => problem.localized(locale),
            AppError::Invalid(text)
            | AppError::Forbidden(text)
            | AppError::NotFound(text)
            | AppError::UnsupportedMediaType(text)
            | AppError::Conflict(text)
            | AppError::Unavailable(text)
            | AppError::Upstream(text) => text.clone(),
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.localized(Locale::en))
    }
}

impl std::error::Error for AppError {}

/// A refusal of something a person typed on a page (sign-up, the prompt, a key name, an alert URL, a period) or a
/// state the page reports (Stripe not configured, the database down). It travels with the error, so the page
/// words it in the reader's language; the error's `message` and `code` stay what API clients always got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    EmailMissing,
    EmailTooLong {
        max: usize,
    },
    EmailInvalid {
        email: String,
    },
    PasswordTooShort {
        min: usize,
    },
    PasswordTooLong {
        max: usize,
    },
    AccountExists {
        email: String,
    },
    PromptMissing,
    PromptCharacters,
    PromptTooLong {
        max: usize,
    },
    KeyNameLength,
    NoSuchKey,
    UrlInvalid {
        url: String,
    },
    UrlNotWeb,
    UrlCredentials,
    UrlPrivate {
        host: String,
    },
    PeriodMalformed {
        period: String,
    },
    PeriodUnknown {
        period: String,
    },
    StripeNotConfigured,
    /// A Checkout for a user who has a live (or pending) subscription: a second one would bill every unit twice.
    AlreadySubscribed,
    /// "Manage billing" for an account that has no Stripe customer yet (nothing to manage).
    NoStripeCustomer,
    /// As many CSV exports as this instance allows are being downloaded; try again shortly.
    ExportsBusy,
    /// An alert amount that is not a positive number (of units, or of money in the meter's currency).
    AlertAmount,
    /// A money alert on a meter whose price Tally does not know.
    AlertNoPrice,
    /// More alerts than one user may set.
    AlertTooMany {
        max: i64,
    },
    /// PostgreSQL is down, restarting, read-only or out of disk. A commit whose answer was lost may have happened:
    /// the message says how to retry without counting twice.
    DatabaseUnavailable,
}

impl Problem {
    fn status_code(&self) -> u16 {
        match self {
            Problem::AccountExists { .. } | Problem::AlreadySubscribed => 409,
            Problem::NoStripeCustomer => 409,
            Problem::NoSuchKey => 404,
            Problem::StripeNotConfigured | Problem::ExportsBusy | Problem::DatabaseUnavailable => 503,
            _ => 422,
        }
    }

    /// The same codes the free-text variants answer with, so API clients see no difference.
    fn code(&self) -> &'static str {
        match self {
            Problem::AccountExists { .. } | Problem::AlreadySubscribed => "conflict",
            Problem::NoStripeCustomer => "conflict",
            Problem::NoSuchKey => "not_found",
            Problem::StripeNotConfigured | Problem::ExportsBusy | Problem::DatabaseUnavailable => "unavailable",
            _ => "invalid",
        }
    }

    /// The message in `locale`.
    pub fn localized(&self, locale: Locale) -> String {
        match self {
            Problem::EmailMissing => td_string!(locale, problem_email_missing).to_string(),
            Problem::EmailTooLong { max } => td_string!(locale, problem_email_too_long, max = *max).to_string(),
            Problem::EmailInvalid { email } => td_string!(locale, problem_email_invalid, email = email).to_string(),
            Problem::PasswordTooShort { min } => td_string!(locale, problem_password_too_short, min = *min).to_string(),
            Problem::PasswordTooLong { max } => td_string!(locale, problem_password_too_long, max = *max).to_string(),
            Problem::AccountExists { email } => td_string!(locale, problem_account_exists, email = email).to_string(),
            Problem::PromptMissing => td_string!(locale, problem_prompt_missing).to_string(),
            Problem::PromptCharacters => td_string!(locale, problem_prompt_characters).to_string(),
            Problem::PromptTooLong { max } => td_string!(locale, problem_prompt_too_long, max = *max).to_string(),
            Problem::KeyNameLength => td_string!(locale, problem_key_name_length).to_string(),
            Problem::NoSuchKey => td_string!(locale, problem_no_such_key).to_string(),
            Problem::UrlInvalid { url } => td_string!(locale, problem_url_invalid, url = url).to_string(),
            Problem::UrlNotWeb => td_string!(locale, problem_url_not_web).to_string(),
            Problem::UrlCredentials => td_string!(locale, problem_url_credentials).to_string(),
            Problem::UrlPrivate { host } => td_string!(locale, problem_url_private, host = host).to_string(),
            Problem::PeriodMalformed { period } => {
                td_string!(locale, problem_period_malformed, period = period).to_string()
            }
            Problem::PeriodUnknown { period } => {
                td_string!(locale, problem_period_unknown, period = period).to_string()
            }
            Problem::StripeNotConfigured => td_string!(locale, problem_stripe_not_configured).to_string(),
            Problem::AlreadySubscribed => td_string!(locale, problem_already_subscribed).to_string(),
            Problem::NoStripeCustomer => td_string!(locale, problem_no_stripe_customer).to_string(),
            Problem::ExportsBusy => td_string!(locale, problem_exports_busy).to_string(),
            Problem::AlertAmount => td_string!(locale, problem_alert_amount).to_string(),
            Problem::AlertNoPrice => td_string!(locale, problem_alert_no_price).to_string(),
            Problem::AlertTooMany { max } => td_string!(locale, problem_alert_too_many, max = *max).to_string(),
            Problem::DatabaseUnavailable => td_string!(locale, problem_database_unavailable).to_string(),
        }
    }
}

impl std::fmt::Display for Problem {
    /// The English wording, as API clients and the command line read it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.localized(Locale::en))
    }
}

impl From<Problem> for AppError {
    fn from(problem: Problem) -> Self {
        AppError::Refused(problem)
    }
}

/// What is wrong with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct EventProblem {
    /// Position of the event in the request's `events` array.
    pub index: usize,
    pub error: String,
}

/// The JSON shape of an [`AppError`] (the API's error body; `message` is added for server functions in the caller's
/// language).
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "ssr", schema(as = Error))]
pub struct WireError {
    /// What went wrong, in English (for logs and scripts).
    error: String,
    code: String,
    /// The same in the caller's language (`Accept-Language`, or the language cookie), on server-function errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
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
    /// What was refused, for pages to word in the reader's language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<Object>))]
    problem: Option<Problem>,
}

/// Largest request body accepted anywhere (server functions included).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The `T` the server put in the leptos context of this request (each domain's handles, see `state.rs`).
#[cfg(feature = "ssr")]
pub fn from_context<T: Clone + Send + Sync + 'static>() -> Result<T, AppError> {
    leptos::prelude::use_context::<T>()
        .ok_or_else(|| AppError::internal(format!("{} missing from the leptos context", std::any::type_name::<T>())))
}

/// Most characters of a caller's input an error message quotes.
pub const MAX_QUOTED_CHARS: usize = 64;

/// `text` as an error message may quote it: at most [`MAX_QUOTED_CHARS`] characters (then "…"), control characters
/// shown as `\u{..}` escapes. An error never echoes unbounded input.
pub fn excerpt(text: &str) -> String {
    let mut quoted: String = text
        .chars()
        .take(MAX_QUOTED_CHARS)
        .flat_map(|c| if c.is_control() { c.escape_unicode().collect::<Vec<_>>() } else { vec![c] })
        .collect();
    if text.chars().count() > MAX_QUOTED_CHARS {
        quoted.push('…');
    }
    quoted
}

impl From<AppError> for WireError {
    fn from(err: AppError) -> Self {
        let error = err.to_string();
        let code = err.code().to_owned();
        let wire = WireError {
            error,
            code,
            events: Vec::new(),
            limit: None,
            remaining: None,
            retry_after: None,
            message: None,
            problem: None,
        };
        match err {
            AppError::InvalidEvents(events) => WireError { events, ..wire },
            AppError::LimitExceeded { limit, remaining } => {
                WireError { limit: Some(limit), remaining: Some(remaining), ..wire }
            }
            AppError::TooManyAttempts { retry_after_secs } => WireError { retry_after: Some(retry_after_secs), ..wire },
            AppError::TooLarge(bytes) => WireError { limit: Some(bytes as i64), ..wire },
            AppError::Refused(problem) => WireError { problem: Some(problem), ..wire },
            _ => wire,
        }
    }
}

impl TryFrom<WireError> for AppError {
    type Error = String;

    fn try_from(wire: WireError) -> Result<Self, String> {
        if let Some(problem) = wire.problem {
            return Ok(AppError::Refused(problem));
        }
        // The detail of a message built around it: the English message with an empty detail is its prefix.
        let strip = |prefix: String| wire.error.strip_prefix(prefix.as_str()).unwrap_or(&wire.error).to_owned();
        Ok(match wire.code.as_str() {
            "invalid" => AppError::Invalid(wire.error),
            "bad_request" => AppError::BadRequest(strip(AppError::BadRequest(String::new()).to_string())),
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
            "transport" => AppError::Transport(strip(AppError::Transport(String::new()).to_string())),
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
        /// [`super::Problem::DatabaseUnavailable`] (503, with the retry advice; logged as a warning) when `err`
        /// says the database cannot serve right now; `None` for errors of the statement itself.
        pub fn database_unavailable(err: &sqlx::Error) -> Option<Self> {
            is_database_unavailable(err).then(|| {
                tracing::warn!(error = %err, "database unavailable");
                AppError::Refused(super::Problem::DatabaseUnavailable)
            })
        }
    }

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
    ///
    /// It also holds every `/api/…` error to the promised `{"error","code"}` shape: the rejections of axum's own
    /// extractors (a duplicate query parameter, a wrong method) answer `text/plain`, and are rewritten here, keeping
    /// their status, with at most a short, cleaned excerpt of their text (it may quote the request).
    pub async fn server_fn_error_status(request: Request, next: Next) -> Response {
        let api = request.uri().path().starts_with("/api/");
        let locale = crate::i18n::request_locale(request.headers());
        let response = next.run(request).await;
        let plain_error = (response.status().is_client_error() || response.status().is_server_error())
            && !response.headers().contains_key(SERVER_FN_ERROR_HEADER)
            && !response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|t| t.to_str().ok())
                .is_some_and(|t| t.starts_with("application/json"));
        if api && plain_error {
            return as_json_error(response).await;
        }
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
        parts.headers.remove(header::CONTENT_LENGTH);
        if let Some(value) = error.retry_after() {
            parts.headers.insert(header::RETRY_AFTER, value);
        }
        Response::from_parts(parts, Body::from(with_message(&bytes, &error, locale)))
    }

    /// The error body with `message`: the error in the request's language, for callers that show it to a person
    /// (the page's islands); `error` stays English for logs and scripts.
    fn with_message(body: &[u8], error: &AppError, locale: crate::i18n::Locale) -> Vec<u8> {
        let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(body) else { return body.to_vec() };
        fields.insert("message".into(), error.localized(locale).into());
        serde_json::to_vec(&fields).unwrap_or_else(|_| body.to_vec())
    }

    /// Most of a rejection's text an API error quotes.
    const MAX_QUOTED: usize = 200;

    /// A non-JSON error response as the JSON error of its status (the status kept).
    async fn as_json_error(response: Response) -> Response {
        let (parts, body) = response.into_parts();
        let text = axum::body::to_bytes(body, MAX_ERROR_BODY).await.unwrap_or_default();
        let detail: String = String::from_utf8_lossy(&text)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_QUOTED)
            .collect::<String>()
            .trim()
            .to_owned();
        let error = match parts.status.as_u16() {
            400 => AppError::BadRequest(detail),
            404 => AppError::NotFound("no such endpoint".into()),
            413 => AppError::TooLarge(crate::error::MAX_BODY_BYTES),
            415 => AppError::UnsupportedMediaType(detail),
            422 => AppError::Invalid(detail),
            status if status >= 500 => AppError::internal(format!("{status} without a JSON body: {detail}")),
            _ => AppError::BadRequest(detail),
        };
        let mut json = error.into_response();
        *json.status_mut() = parts.status;
        for name in [header::ALLOW, header::RETRY_AFTER] {
            if let Some(value) = parts.headers.get(&name) {
                json.headers_mut().insert(name, value.clone());
            }
        }
        json
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
            AppError::Refused(Problem::PasswordTooShort { min: 8 }),
            AppError::Refused(Problem::EmailInvalid { email: "not an email".into() }),
            AppError::Refused(Problem::DatabaseUnavailable),
        ] {
            assert_eq!(AppError::de(err.ser()), err);
        }
    }

    /// Every refusal a page can show, one of each kind.
    fn every_problem() -> Vec<Problem> {
        vec![
            Problem::EmailMissing,
            Problem::EmailTooLong { max: 254 },
            Problem::EmailInvalid { email: "nope".into() },
            Problem::PasswordTooShort { min: 8 },
            Problem::PasswordTooLong { max: 1024 },
            Problem::AccountExists { email: "a@b.c".into() },
            Problem::PromptMissing,
            Problem::PromptTooLong { max: 4000 },
            Problem::KeyNameLength,
            Problem::PromptCharacters,
            Problem::NoSuchKey,
            Problem::UrlInvalid { url: "x".into() },
            Problem::UrlNotWeb,
            Problem::UrlCredentials,
            Problem::UrlPrivate { host: "127.0.0.1".into() },
            Problem::PeriodMalformed { period: "x".into() },
            Problem::PeriodUnknown { period: "2020-01-01T00:00:00Z".into() },
            Problem::StripeNotConfigured,
            Problem::AlreadySubscribed,
            Problem::NoStripeCustomer,
            Problem::ExportsBusy,
            Problem::AlertAmount,
            Problem::AlertNoPrice,
            Problem::AlertTooMany { max: 20 },
            Problem::DatabaseUnavailable,
        ]
    }

    #[test]
    fn refusals_are_worded_in_both_languages_and_keep_their_values() {
        for problem in every_problem() {
            let err = AppError::Refused(problem.clone());
            let (en, ja) = (err.localized(Locale::en), err.localized(Locale::ja));
            assert_eq!(err.to_string(), en, "API clients get the English message");
            assert_ne!(en, ja, "{problem:?} has no Japanese wording");
            assert!(ja
                .chars()
                .any(|c| ('\u{3040}'..='\u{30ff}').contains(&c) || ('\u{4e00}'..='\u{9fff}').contains(&c)));
            for value in ["254", "nope", "8", "1024", "a@b.c", "4000", "2020-01-01T00:00:00Z"] {
                assert_eq!(en.contains(value), ja.contains(value), "{problem:?}: {value} in one language only");
            }
            // The round trip keeps the kind, so the browser can re-word it.
            assert_eq!(AppError::de(err.ser()), err);
        }
    }

    #[test]
    fn refusals_answer_api_clients_as_before() {
        let short = serde_json::to_value(AppError::Refused(Problem::PasswordTooShort { min: 8 })).unwrap();
        assert_eq!(short["error"], "password must be at least 8 characters");
        assert_eq!(short["code"], "invalid");
        assert_eq!(AppError::Refused(Problem::PasswordTooShort { min: 8 }).status_code(), 422);
        let taken = AppError::Refused(Problem::AccountExists { email: "a@b.c".into() });
        assert_eq!((taken.status_code(), taken.code()), (409, "conflict"));
        assert_eq!(taken.to_string(), "an account for a@b.c already exists");
        let down = AppError::Refused(Problem::DatabaseUnavailable);
        assert_eq!((down.status_code(), down.code()), (503, "unavailable"));
        assert_eq!(AppError::Refused(Problem::NoSuchKey).status_code(), 404);
    }

    #[test]
    fn fixed_messages_are_worded_in_both_languages() {
        let limit = AppError::LimitExceeded { limit: 1_000, remaining: 12 };
        assert_eq!(limit.to_string(), "usage limit reached: 12 of 1000 remain this period");
        assert!(limit.localized(Locale::ja).contains("上限"));
        assert_eq!(AppError::Unauthorized.localized(Locale::ja), "ログインしてください");
        assert_eq!(
            AppError::TooManyAttempts { retry_after_secs: 61 }.to_string(),
            "too many failed sign-in attempts; try again in 2 minutes"
        );
        assert_eq!(AppError::BadRequest("x".into()).to_string(), "malformed request: x");
        // Free text stays as it is, in both.
        let upstream = AppError::Upstream("the AI provider answered 500".into());
        assert_eq!(upstream.localized(Locale::ja), "the AI provider answered 500");
    }

    #[test]
    fn the_wire_format_carries_the_message_and_code() {
        let json = serde_json::to_value(AppError::InvalidCredentials).unwrap();
        assert_eq!(json, serde_json::json!({"error": "email or password is incorrect", "code": "invalid_credentials"}));
    }
}
