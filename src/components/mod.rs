//! The dashboard's cards: server components, rendered from the page's one read (the browser runs only
//! `crate::islands`).

pub mod api_keys;
pub mod billing_history;
pub mod error_notice;
pub mod usage_alerts;
pub mod usage_history;
pub mod usage_meter;

pub use api_keys::ApiKeys;
pub use billing_history::BillingHistory;
pub use error_notice::ErrorNotice;
pub use usage_alerts::UsageAlerts;
pub use usage_history::UsageHistoryCard;
pub use usage_meter::UsageMeter;
