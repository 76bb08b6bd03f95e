//! The dashboard's data in one read: who is signed in, the meter, alerts, history, billing and API keys, gathered
//! by one SQL statement (`read.rs`) instead of one or two per card. The cards take their first value from it and
//! re-read their own part through their own server functions afterwards (a refresh, a key made, a period picked).

#[cfg(feature = "ssr")]
mod read;

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::auth::{ApiKeyInfo, CurrentUser};
use crate::billing::BillingOverview;
use crate::error::AppError;
use crate::usage::{AlertsOverview, UsageHistory, UsageSummary};

/// Everything the dashboard shows when it is first rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardData {
    pub user: CurrentUser,
    pub summary: UsageSummary,
    pub alerts: AlertsOverview,
    /// The current period's history.
    pub history: UsageHistory,
    pub billing: BillingOverview,
    pub api_keys: Vec<ApiKeyInfo>,
}

/// The signed-in user's dashboard: the session lookup and one statement.
#[server(endpoint = "dashboard")]
pub async fn get_dashboard() -> Result<DashboardData, AppError> {
    let state = crate::billing::BillingState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    read::dashboard(&state, user_id, chrono::Utc::now()).await?.ok_or(AppError::Unauthorized)
}

/// The page's one read, provided as context so each card takes its first value from it. A card re-reads its own
/// part through its own server function once anything changes (the live total, a key made, a period picked).
#[derive(Clone, Copy)]
pub struct Seed(pub Resource<Result<DashboardData, AppError>>);

impl Seed {
    /// The card's part of the page's read while `initial`, else a fresh read by `fetch`.
    pub async fn or_fetch<T, F>(
        seed: Option<Seed>,
        initial: bool,
        part: impl FnOnce(DashboardData) -> T,
        fetch: impl FnOnce() -> F,
    ) -> Result<T, AppError>
    where
        F: std::future::Future<Output = Result<T, AppError>>,
    {
        match seed {
            Some(Seed(read)) if initial => read.await.map(part),
            _ => fetch().await,
        }
    }
}
