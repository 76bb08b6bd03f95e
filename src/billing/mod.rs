//! Billing: delivery of usage to Stripe's meter, Stripe customers, setup and reconciliation, webhooks (signature,
//! dedupe, subscriptions, paid invoices) and the billing history users see.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

/// What billing needs from the server: the database, the settings, Stripe (when configured) and usage's handles
/// (billing reports usage and its periods).
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct BillingState {
    pub pool: sqlx::PgPool,
    pub config: std::sync::Arc<crate::config::Config>,
    pub stripe: Option<stripe::StripeClient>,
    pub usage: crate::usage::UsageState,
}

/// Billing's plain HTTP routes (its server functions register themselves): Stripe's webhook endpoint. Generic
/// over the app's state, which only has to hand out a [`BillingState`].
#[cfg(feature = "ssr")]
pub fn router<S>() -> axum::Router<S>
where
    BillingState: axum::extract::FromRef<S>,
    S: Clone + Send + Sync + 'static,
{
    axum::Router::new().route(webhook::PATH, axum::routing::post(webhook::receive))
}

#[cfg(feature = "ssr")]
impl BillingState {
    /// This request's, from the leptos context.
    pub fn current() -> Result<BillingState, AppError> {
        crate::error::from_context()
    }

    /// Fills in what the configuration decides: whether usage is being sent to Stripe, and whether to offer
    /// "Subscribe" (Stripe configured, a metered price saved by `tally stripe setup`, no live subscription).
    pub fn complete(&self, overview: &mut BillingOverview, priced: bool) {
        overview.sync.stripe_configured = self.stripe.is_some();
        let live = overview
            .subscription
            .as_ref()
            .is_some_and(|s| crate::usage::period::LIVE_STATUSES.contains(&s.status.as_str()));
        overview.can_subscribe = self.stripe.is_some() && priced && !live;
        overview.can_manage = self.stripe.is_some() && overview.has_customer;
    }
}

#[cfg(feature = "ssr")]
pub mod customers;
#[cfg(feature = "ssr")]
pub mod delivery;
#[cfg(feature = "ssr")]
pub mod error;
#[cfg(feature = "ssr")]
pub mod events;
#[cfg(feature = "ssr")]
pub mod history;
#[cfg(feature = "ssr")]
pub mod prices;
#[cfg(feature = "ssr")]
pub mod reconcile;
#[cfg(feature = "ssr")]
pub mod setup;
#[cfg(feature = "ssr")]
pub mod signature;
#[cfg(feature = "ssr")]
pub mod status;
#[cfg(feature = "ssr")]
pub mod stripe;
#[cfg(feature = "ssr")]
pub mod uncertain;
#[cfg(feature = "ssr")]
pub mod webhook;

/// The user's Stripe subscription as last reported by Stripe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionInfo {
    pub status: String,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
}

/// One invoice: paid, or a failed payment attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BillingCycle {
    pub stripe_invoice_id: String,
    /// First and last day of the billed period in the billing time zone (`YYYY-MM-DD`).
    pub first_day: String,
    pub last_day: String,
    /// Minor units of `currency`.
    pub amount_paid: i64,
    pub currency: String,
    /// `paid` or `payment_failed`.
    pub status: String,
}

/// What the dashboard shows about billing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BillingOverview {
    pub subscription: Option<SubscriptionInfo>,
    /// Stripe Checkout is configured and the user has no live subscription: offer "Subscribe".
    pub can_subscribe: bool,
    /// The user has a Stripe customer.
    #[serde(default)]
    pub has_customer: bool,
    /// Stripe is configured and the user has a customer: offer "Manage billing" (Stripe's customer portal).
    #[serde(default)]
    pub can_manage: bool,
    /// Newest first.
    pub cycles: Vec<BillingCycle>,
    /// The user has more than one live subscription: every unit is billed once per subscription.
    #[serde(default)]
    pub duplicate_subscription: bool,
    /// How far the user's usage has reached Stripe's meter.
    pub sync: MeterSync,
}

/// The user's usage events by delivery state, with the reasons for those not delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterSync {
    /// The server has a Stripe key: pending events are being sent.
    pub stripe_configured: bool,
    pub delivered: i64,
    pub pending: i64,
    pub awaiting_customer: i64,
    pub failed: i64,
    pub expired: i64,
    /// Stripe's answer to the latest failed event.
    pub last_failure: Option<String>,
    /// Stripe's answer to the latest attempt that will be retried.
    pub last_retry_error: Option<String>,
    /// Usage events in meter events that Stripe reported it could not count (meter error reports).
    pub reported_by_stripe: i64,
    /// Stripe's message for the latest of those.
    pub last_report: Option<String>,
}

/// The signed-in user's subscription and invoices.
#[server(endpoint = "billing/overview")]
pub async fn get_billing_overview() -> Result<BillingOverview, AppError> {
    let state = BillingState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let mut overview = history::overview(&state.pool, user_id, &state.config.billing_timezone).await?;
    // This period's events: what the customer is about to be billed for.
    let period = crate::usage::period::current(&state.usage, user_id).await?;
    overview.sync = status::for_user(&state.pool, user_id, period.period()).await?;
    let priced = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM meter_prices) AS "priced!""#)
        .fetch_one(&state.pool)
        .await?;
    state.complete(&mut overview, priced);
    Ok(overview)
}

/// Opens Stripe's customer portal for the signed-in user (payment method, invoices, cancellation) and redirects the
/// browser to it; the portal's return link leads back to the dashboard.
#[server(endpoint = "billing/portal")]
pub async fn open_billing_portal() -> Result<(), AppError> {
    let state = BillingState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let Some(stripe) = state.stripe.as_ref() else {
        return Err(AppError::Refused(crate::error::Problem::StripeNotConfigured));
    };
    let customer = sqlx::query_scalar!("SELECT stripe_customer_id FROM users WHERE id = $1", user_id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(AppError::Unauthorized)?
        .ok_or(AppError::Refused(crate::error::Problem::NoStripeCustomer))?;
    let return_url = format!("{}/", state.config.public_url.trim_end_matches('/'));
    let url = stripe.create_billing_portal_session(&customer, &return_url).await.map_err(|err| {
        tracing::warn!(%err, "Stripe customer portal failed");
        AppError::Upstream("Stripe could not open the billing portal; try again in a moment".into())
    })?;
    leptos_axum::redirect(&url);
    Ok(())
}

/// Starts Stripe Checkout for the signed-in user's subscription and redirects the browser to it.
#[server(endpoint = "billing/checkout")]
pub async fn start_checkout() -> Result<(), AppError> {
    let state = BillingState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let Some(stripe) = state.stripe.as_ref() else {
        return Err(AppError::Refused(crate::error::Problem::StripeNotConfigured));
    };
    let items = prices::subscription_items(&state.pool, &state.config.meters).await?;
    if items.is_empty() {
        return Err(AppError::Refused(crate::error::Problem::StripeNotConfigured));
    }
    // Checkout subscribes the user's own customer (the worker creates missing ones too, but not necessarily yet).
    if state.config.delivery.create_customers {
        customers::ensure(&state.pool, stripe, user_id).await?;
    }
    let url = history::open_checkout(&state, stripe, &items, user_id).await?;
    leptos_axum::redirect(&url);
    Ok(())
}
