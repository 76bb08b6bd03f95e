//! The dashboard's data in one read: who is signed in, the meter, alerts, history, billing and API keys, gathered
//! by one SQL statement (`read.rs`) instead of one or two per card. The page renders every card from it; the live
//! island re-reads the whole page.

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
    /// The meters shown: the primary one, and each other with usage this period.
    pub meters: Vec<UsageSummary>,
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
