//! What every request handler and server function can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use sqlx::PgPool;

use crate::config::Config;
use crate::error::AppError;
use crate::usage::period::PeriodClock;
use crate::usage::writer::UsageWriter;

/// Shared state of one app instance. `leptos_axum` provides it as context to server functions and SSR.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub pool: PgPool,
    pub config: Arc<Config>,
    /// The billing period clock, shared by the writer and the meter.
    pub clock: Arc<PeriodClock>,
    /// The group-commit writer every recorded event goes through.
    pub writer: UsageWriter,
    /// Outbound HTTP (the AI provider); one client, so connections are reused.
    pub http: reqwest::Client,
    /// The Stripe API, when `STRIPE_SECRET_KEY` is set.
    pub stripe: Option<crate::billing::stripe::StripeClient>,
    /// Usage changes announced by any instance, for the live meters.
    pub live: crate::usage::live::LiveHub,
    /// CSV exports streaming now: each holds a database connection for its whole download (a slow client keeps
    /// it), so at most a quarter of the pool may be taken by them.
    pub exports: Arc<tokio::sync::Semaphore>,
    /// The key form errors in page URLs are signed with (`page_errors.rs`), read from the database once.
    page_error_key: Arc<tokio::sync::OnceCell<Vec<u8>>>,
}

impl AppState {
    /// Builds the state and starts the usage writer tasks and the live usage listener (on the current tokio
    /// runtime).
    pub fn new(leptos_options: LeptosOptions, pool: PgPool, config: Config) -> AppState {
        let clock = Arc::new(PeriodClock::new(pool.clone(), config.billing_timezone.clone()));
        let writer = UsageWriter::start(pool.clone(), clock.clone(), config.ingest_writers);
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap_or_default();
        let stripe = crate::billing::stripe::StripeClient::from_config(http.clone(), &config);
        let live = crate::usage::live::LiveHub::start(pool.clone());
        let exports = Arc::new(tokio::sync::Semaphore::new((config.database_max_connections as usize / 4).max(1)));
        AppState {
            leptos_options,
            pool,
            config: Arc::new(config),
            clock,
            writer,
            http,
            stripe,
            live,
            exports,
            page_error_key: Arc::default(),
        }
    }

    /// The key form errors in page URLs are signed with (see `page_errors.rs`).
    pub async fn page_error_key(&self) -> Result<Vec<u8>, sqlx::Error> {
        self.page_error_key.get_or_try_init(|| crate::page_errors::load_key(&self.pool)).await.cloned()
    }

    /// The state of the request being served (inside a server function or an SSR render).
    pub fn current() -> Result<AppState, AppError> {
        leptos::prelude::use_context::<AppState>()
            .ok_or_else(|| AppError::internal("AppState missing from the leptos context"))
    }
}
