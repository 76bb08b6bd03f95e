//! The composition root: builds each domain's handles once per app instance and hands them out. Domains never
//! import this module; each takes its own state (`AuthState`, `UsageState`, `BillingState`, `AiState`) from the
//! request's leptos context ([`AppState::provide_domains`]) or as axum state (`FromRef`).

use std::sync::Arc;

use axum::extract::FromRef;
use leptos::prelude::{provide_context, LeptosOptions};
use sqlx::PgPool;

use crate::ai::AiState;
use crate::auth::AuthState;
use crate::billing::BillingState;
use crate::config::Config;
use crate::usage::period::PeriodClock;
use crate::usage::writer::UsageWriter;
use crate::usage::UsageState;

/// Shared state of one app instance: plumbing (pool, config, options) and each domain's handles.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub pool: PgPool,
    pub config: Arc<Config>,
    /// The billing period clock, shared by the writer and the meter.
    pub clock: Arc<PeriodClock>,
    /// The group-commit writer every recorded event goes through.
    pub writer: UsageWriter,
    pub auth: AuthState,
    pub usage: UsageState,
    pub billing: BillingState,
    pub ai: AiState,
    /// The key form errors in page URLs are signed with (`page_errors.rs`), read from the database once.
    pub page_error_key: crate::page_errors::PageErrorKey,
}

impl AppState {
    /// Builds the state and starts the usage writer tasks and the live usage listener (on the current tokio
    /// runtime).
    pub fn new(leptos_options: LeptosOptions, pool: PgPool, config: Config) -> AppState {
        let config = Arc::new(config);
        let clock = Arc::new(PeriodClock::new(config.billing_timezone.clone()));
        let writer = UsageWriter::start(pool.clone(), clock.clone(), config.meters.clone(), config.ingest_writers);
        // Outbound HTTP (the AI provider, Stripe); one client, so connections are reused.
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build().unwrap_or_default();
        let usage = UsageState {
            pool: pool.clone(),
            config: config.clone(),
            clock: clock.clone(),
            writer: writer.clone(),
            live: crate::usage::live::LiveHub::start(pool.clone()),
            exports: Arc::new(tokio::sync::Semaphore::new((config.database_max_connections as usize / 4).max(1))),
            time: crate::clock::Clock::system(),
        };
        let billing = BillingState {
            pool: pool.clone(),
            config: config.clone(),
            stripe: crate::billing::stripe::StripeClient::from_config(http.clone(), &config),
            usage: usage.clone(),
        };
        let ai =
            AiState { pool: pool.clone(), config: config.clone(), http, clock: clock.clone(), writer: writer.clone() };
        let auth = AuthState { pool: pool.clone(), config: config.clone() };
        let page_error_key = crate::page_errors::PageErrorKey::new(pool.clone());
        AppState { leptos_options, pool, config, clock, writer, auth, usage, billing, ai, page_error_key }
    }

    /// Puts each domain's state in the current leptos context (server functions and server rendering).
    pub fn provide_domains(&self) {
        provide_context(self.auth.clone());
        provide_context(self.usage.clone());
        provide_context(self.billing.clone());
        provide_context(self.ai.clone());
    }
}
