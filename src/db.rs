//! The PostgreSQL pool and the embedded migrations.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::Config;

/// Every migration in `migrations/`, compiled into the binary (`build.rs` makes cargo notice new files).
///
/// A database a newer release already migrated is accepted (`ignore_missing`): migrations are additive (new
/// tables, columns with defaults, functions; a column is dropped only by a release after the last one that read
/// it), so during a rolling deploy the old instances keep running beside the new, and a rollback by one release
/// runs on the newer schema. Each migration this binary knows must be applied, unchanged (sqlx checks checksums).
pub static MIGRATOR: Migrator = Migrator { ignore_missing: true, ..sqlx::migrate!() };

/// How the database's migrations compare with this binary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// Migrations this binary knows.
    pub known: usize,
    /// Known migrations not applied yet (`tally migrate` applies them).
    pub missing: Vec<i64>,
    /// Applied migrations this binary does not know: a newer release's (additive by policy).
    pub newer: Vec<i64>,
}

impl std::fmt::Display for SchemaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let applied = self.known - self.missing.len();
        write!(f, "{applied} of {} applied", self.known)?;
        if !self.missing.is_empty() {
            write!(f, "; missing {:?} (run `tally migrate`)", self.missing)?;
        }
        if !self.newer.is_empty() {
            write!(f, "; {} newer from a later release (additive)", self.newer.len())?;
        }
        Ok(())
    }
}

/// Reads which migrations the database has, without changing anything.
pub async fn schema_state(pool: &PgPool) -> Result<SchemaState, sqlx::Error> {
    // A database never migrated has no table yet (undefined_table, 42P01): "everything missing", not an error.
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .or_else(|err| match err.as_database_error().and_then(|db| db.code()) {
            Some(code) if code == "42P01" => Ok(Vec::new()),
            _ => Err(err),
        })?;
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    Ok(SchemaState {
        known: known.len(),
        missing: known.iter().filter(|v| !applied.contains(v)).copied().collect(),
        newer: applied.iter().filter(|v| !known.contains(v)).copied().collect(),
    })
}

/// For commands that only read: refuses a database that lacks migrations this binary needs, instead of migrating
/// it (only `serve`, `worker` and `migrate` change the schema).
pub async fn require_schema(pool: &PgPool) -> Result<(), DbSetupError> {
    let state = schema_state(pool).await.map_err(DbSetupError::Query)?;
    if state.missing.is_empty() {
        Ok(())
    } else {
        Err(DbSetupError::Behind(state.to_string()))
    }
}

/// Errors of connecting to and preparing the database at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("DATABASE_URL is not set: point it (or --database-url) at PostgreSQL; scripts/dev starts a local one")]
    NoDatabaseUrl,
    #[error("could not connect to PostgreSQL (is DATABASE_URL right and the server running?): {0}")]
    Connect(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("BILLING_TIMEZONE {0:?} is not a time zone PostgreSQL knows (try e.g. Asia/Tokyo or UTC)")]
    UnknownTimezone(String),
    #[error("database query failed: {0}")]
    Query(#[source] sqlx::Error),
    #[error("the database is behind this release: {0}")]
    Behind(String),
}

/// Opens the pool described by `config`.
/// Every connection carries the billing time zone as `tally.billing_timezone`, which the `usage_monthly` view reads.
pub async fn connect(config: &Config) -> Result<PgPool, DbSetupError> {
    if config.database_url.trim().is_empty() {
        return Err(DbSetupError::NoDatabaseUrl);
    }
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
