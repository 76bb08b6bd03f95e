//! Billing: delivery of usage to Stripe's meter, Stripe customers, setup and reconciliation, webhooks (signature,
//! dedupe, subscriptions, paid invoices) and the billing history users see.

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::AppError;

#[cfg(feature = "ssr")]
pub mod customers;
#[cfg(feature = "ssr")]
pub mod delivery;
#[cfg(feature = "ssr")]
pub mod events;
#[cfg(feature = "ssr")]
pub mod history;
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
#[cfg_attr(feature = "ssr", derive(sqlx::FromRow))]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionInfo {
    pub status: String,
    pub current_period_start: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
}

/// One invoice: paid, or a failed payment attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(sqlx::FromRow))]
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
    let state = crate::state::AppState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let mut overview = history::overview(&state.pool, user_id, &state.config.billing_timezone).await?;
    // This period's events: what the customer is about to be billed for.
    let period = crate::usage::period::current(&state, user_id).await?;
    overview.sync = status::for_user(&state.pool, user_id, period.kind(), period.start, period.end).await?;
    overview.sync.stripe_configured = state.stripe.is_some();
    let live = overview.subscription.as_ref().is_some_and(|s| LIVE_STATUSES.contains(&s.status.as_str()));
    overview.can_subscribe = state.stripe.is_some() && state.config.stripe_price_id.is_some() && !live;
    Ok(overview)
}

/// Subscription statuses that bill: a user in one of them is not offered another subscription.
pub const LIVE_STATUSES: &[&str] = &["active", "trialing", "past_due", "unpaid", "incomplete"];

/// Starts Stripe Checkout for the signed-in user's subscription and redirects the browser to it.
#[server(endpoint = "billing/checkout")]
pub async fn start_checkout() -> Result<(), AppError> {
    let state = crate::state::AppState::current()?;
    let user_id = crate::auth::session::require_user_id().await?;
    let (Some(stripe), Some(price_id)) = (state.stripe.as_ref(), state.config.stripe_price_id.as_deref()) else {
        return Err(AppError::Refused(crate::error::Problem::StripeNotConfigured));
    };
    let url = history::open_checkout(&state, stripe, price_id, user_id).await?;
    leptos_axum::redirect(&url);
    Ok(())
}

/// Currencies whose amounts have no minor unit (Stripe's zero-decimal list).
const ZERO_DECIMAL: &[&str] =
    &["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];
/// Currencies with three decimals.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Formats an amount in minor units for its currency: `190 usd` → `$1.90`, `1500 jpy` → `¥1,500`.
pub fn format_money(amount_minor: i64, currency: &str) -> String {
    let currency = currency.to_ascii_lowercase();
    let decimals: u32 = if ZERO_DECIMAL.contains(&currency.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&currency.as_str()) {
        3
    } else {
        2
    };
    let scale = 10_i64.pow(decimals);
    let whole = crate::components::usage_meter::format_thousands(amount_minor.abs() / scale);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let number = if decimals == 0 {
        whole
    } else {
        format!("{whole}.{:0width$}", amount_minor.abs() % scale, width = decimals as usize)
    };
    match currency.as_str() {
        "jpy" => format!("{sign}¥{number}"),
        "usd" => format!("{sign}${number}"),
        "eur" => format!("{sign}€{number}"),
        "gbp" => format!("{sign}£{number}"),
        other => format!("{sign}{number} {}", other.to_uppercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::format_money;

    #[test]
    fn money_is_formatted_by_its_currencys_minor_unit() {
        assert_eq!(format_money(190, "usd"), "$1.90");
        assert_eq!(format_money(123_456_789, "usd"), "$1,234,567.89");
        assert_eq!(format_money(1_500, "jpy"), "¥1,500");
        assert_eq!(format_money(5, "JPY"), "¥5");
        assert_eq!(format_money(1_234, "kwd"), "1.234 KWD");
        assert_eq!(format_money(7, "eur"), "€0.07");
        assert_eq!(format_money(-250, "gbp"), "-£2.50");
        assert_eq!(format_money(100, "krw"), "100 KRW");
    }
}
