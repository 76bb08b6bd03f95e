//! What can go wrong in accounts, passwords, API keys and sign-in throttling. Keeps its source (the database's
//! own error, the hashing task's), so the CLI and the log name the cause; [`From<AuthError> for AppError`] is the
//! one table that turns it into the HTTP answer (status, code, wording in both languages).

use crate::error::{AppError, Problem};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A refusal a person can fix (email, password, key name), worded in both languages by [`Problem`].
    #[error("{0}")]
    Refused(Problem),
    /// Unknown email or wrong password; deliberately does not say which.
    #[error("email or password is incorrect")]
    InvalidCredentials,
    /// A malformed, unknown or revoked API key; one answer for all three.
    #[error("the API key is malformed, unknown or revoked")]
    UnknownKey,
    #[error("too many attempts; try again in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    /// An operator's request that names nothing (the CLI's `--limit 0`, an email without an account).
    #[error("{0}")]
    Invalid(String),
    #[error("password hashing did not finish: {0}")]
    Hashing(#[source] tokio::task::JoinError),
    #[error("the operating system's random source failed: {0}")]
    Random(getrandom::Error),
}

impl From<Problem> for AuthError {
    fn from(problem: Problem) -> Self {
        AuthError::Refused(problem)
    }
}

impl From<AuthError> for AppError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Database(err) => AppError::from(err),
            AuthError::Refused(problem) => AppError::Refused(problem),
            AuthError::InvalidCredentials => AppError::InvalidCredentials,
            AuthError::UnknownKey => AppError::Unauthorized,
            AuthError::Throttled { retry_after_secs } => AppError::TooManyAttempts { retry_after_secs },
            AuthError::Invalid(text) => AppError::Invalid(text),
            err @ (AuthError::Hashing(_) | AuthError::Random(_)) => AppError::internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_for_logs_and_mapped_for_http_in_one_place() {
        let down = AuthError::Database(sqlx::Error::PoolTimedOut);
        assert!(down.to_string().contains("pool timed out"), "{down}");
        assert_eq!(AppError::from(down).status_code(), 503);
        assert_eq!(AppError::from(AuthError::UnknownKey), AppError::Unauthorized);
        assert_eq!(AppError::from(AuthError::Throttled { retry_after_secs: 9 }).status_code(), 429);
        let taken = AuthError::from(Problem::AccountExists { email: "a@b.c".into() });
        assert_eq!(taken.to_string(), "an account for a@b.c already exists");
        assert_eq!(AppError::from(taken).status_code(), 409);
    }
}
