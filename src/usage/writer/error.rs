//! Why usage was not recorded. Cloned to every submission of a failed group, so the database's error is shared;
//! [`From<WriteError> for AppError`] is the one table that turns it into the HTTP answer.

use std::sync::Arc;

use crate::error::AppError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The API key is unknown or revoked, or the account is gone: nothing was recorded.
    #[error("unknown or revoked API key, or the account no longer exists")]
    UnknownCaller,
    /// Recording would pass the hard limit of the period; nothing of the submission was recorded.
    #[error("usage limit of {event_type} reached: {remaining} of {limit} remain this period")]
    LimitExceeded { event_type: String, limit: i64, remaining: i64 },
    /// The transaction failed: nothing of the submission was stored.
    #[error("usage commit failed: {0}")]
    Database(Arc<sqlx::Error>),
    /// The writer tasks are gone (the server is stopping).
    #[error("the usage writer {0}")]
    Stopped(&'static str),
}

impl From<sqlx::Error> for WriteError {
    fn from(err: sqlx::Error) -> Self {
        WriteError::Database(Arc::new(err))
    }
}

impl From<WriteError> for AppError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::UnknownCaller => AppError::Unauthorized,
            WriteError::LimitExceeded { limit, remaining, .. } => AppError::LimitExceeded { limit, remaining },
            WriteError::Database(ref db) => {
                AppError::database_unavailable(db).unwrap_or_else(|| AppError::internal(err))
            }
            WriteError::Stopped(_) => AppError::internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_for_logs_and_mapped_for_http_in_one_place() {
        let down = WriteError::from(sqlx::Error::PoolTimedOut);
        assert!(down.to_string().contains("pool timed out"), "{down}");
        assert_eq!(AppError::from(down).status_code(), 503);
        let broken = WriteError::from(sqlx::Error::RowNotFound);
        assert_eq!(AppError::from(broken), AppError::Internal);
        assert_eq!(AppError::from(WriteError::UnknownCaller), AppError::Unauthorized);
        let limit = AppError::from(WriteError::LimitExceeded {
            event_type: "image_generated".into(),
            limit: 100,
            remaining: 10,
        });
        assert_eq!(limit, AppError::LimitExceeded { limit: 100, remaining: 10 });
    }
}
