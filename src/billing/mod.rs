//! Billing: Stripe webhooks (signature, dedupe, subscriptions, paid invoices).

#[cfg(feature = "ssr")]
pub mod events;
#[cfg(feature = "ssr")]
pub mod signature;
#[cfg(feature = "ssr")]
pub mod webhook;
