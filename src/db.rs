//! The PostgreSQL pool and the embedded migrations.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::Config;

/// Every migration in `migrations/`, compiled into the binary (`build.rs` makes cargo notice new files).
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Errors of connecting to and preparing the database at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("could not connect to PostgreSQL (is DATABASE_URL right and the server running?): {0}")]
    Connect(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("BILLING_TIMEZONE {0:?} is not a time zone PostgreSQL knows (try e.g. Asia/Tokyo or UTC)")]
    UnknownTimezone(String),
    #[error("database query failed: {0}")]
    Query(#[source] sqlx::Error),
}

/// Opens the pool described by `config`.
/// Every connection carries the billing time zone as `tally.billing_timezone`, which the `usage_monthly` view reads.
pub async fn connect(config: &Config) -> Result<PgPool, DbSetupError> {
    let options = config
        .database_url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(DbSetupError::Connect)?
        .options([("tally.billing_timezone", config.billing_timezone.as_str())]);
    PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .connect_with(options)
        .await
        .map_err(DbSetupError::Connect)
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), DbSetupError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Fails early, with a clear message, when PostgreSQL does not know the configured billing time zone; otherwise
/// every period computation would fail later, request by request.
pub async fn check_timezone(pool: &PgPool, timezone: &str) -> Result<(), DbSetupError> {
    let known =
        sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1) AS "known!""#, timezone)
            .fetch_one(pool)
            .await
            .map_err(DbSetupError::Query)?;
    if known {
        Ok(())
    } else {
        Err(DbSetupError::UnknownTimezone(timezone.to_owned()))
    }
}
