//! What every request handler and server function can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use leptos::prelude::LeptosOptions;
use sqlx::PgPool;

use crate::config::Config;
use crate::error::AppError;

/// Shared state of one app instance. `leptos_axum` provides it as context to server functions and SSR.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub pool: PgPool,
    pub config: Arc<Config>,
}

impl AppState {
    /// The state of the request being served (inside a server function or an SSR render).
    pub fn current() -> Result<AppState, AppError> {
        leptos::prelude::use_context::<AppState>()
            .ok_or_else(|| AppError::internal("AppState missing from the leptos context"))
    }
}
