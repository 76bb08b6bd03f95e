//! Billing's errors, with their source kept: the worker, setup, reconciliation, customers and the sync state return
//! these, so the worker's log and the command line name the real cause (the SQL error, Stripe's answer). A page or
//! API client gets the HTTP error instead, through the one mapping below.

use crate::billing::stripe::StripeError;
use crate::error::AppError;

/// What went wrong in billing.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Stripe(#[from] StripeError),
    /// No account with this id or email.
    #[error("no account {0}")]
    NoAccount(String),
    /// What is asked for conflicts with what is stored (a customer linked to another account).
    #[error("{0}")]
    Conflict(String),
    /// A value Tally cannot work with (a customer id that is not one, a meter that would bill wrong).
    #[error("{0}")]
    Invalid(String),
}

/// The HTTP side: status, code and wording come from [`AppError`]. Database failures are logged there (and become
/// 503 when the database is away); Stripe's answer is logged here and reported as a 502.
impl From<BillingError> for AppError {
    fn from(err: BillingError) -> AppError {
        match err {
            BillingError::Database(db) => AppError::from(db),
            BillingError::Stripe(stripe) => {
                tracing::warn!(error = %stripe, "a Stripe call failed");
                AppError::Upstream(format!("Stripe: {stripe}"))
            }
            BillingError::NoAccount(account) => AppError::Invalid(format!("no account {account}")),
            BillingError::Conflict(text) => AppError::Conflict(text),
            BillingError::Invalid(text) => AppError::Invalid(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_for_logs_and_mapped_for_http_in_one_place() {
        let away = BillingError::from(sqlx::Error::PoolTimedOut);
        assert!(away.to_string().starts_with("database: "), "{away}");
        assert_eq!(AppError::from(away).status_code(), 503);
        let refused = StripeError::Api {
            status: 400,
            kind: "invalid_request_error".into(),
            code: None,
            message: "No such customer: 'cus_x'".into(),
            should_retry: None,
        };
        let stripe = BillingError::from(refused);
        assert!(stripe.to_string().contains("No such customer"), "{stripe}");
        let http = AppError::from(stripe);
        assert_eq!((http.status_code(), http.code()), (502, "upstream"));
        assert_eq!(AppError::from(BillingError::Conflict("linked elsewhere".into())).status_code(), 409);
    }
}
