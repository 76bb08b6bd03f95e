//! Tally: usage-based billing on Stripe Billing Meters, as one Leptos SSR crate.
//!
//! Shared modules (pages, components, domain types and their server functions) compile for the server (`ssr`)
//! and the browser (`hydrate`); the modules below the `ssr` gate exist only on the server. Pages and components
//! render on the server only: the browser bundle holds the `islands` and what they call.

#![recursion_limit = "256"]

pub mod ai;
pub mod app;
pub mod auth;
pub mod billing;
pub mod components;
pub mod dashboard;
pub mod error;
pub mod format;
pub mod i18n;
pub mod islands;
pub mod pages;
pub mod usage;

#[cfg(feature = "ssr")]
pub mod cli;
#[cfg(feature = "ssr")]
pub use tally_clock as clock;
#[cfg(feature = "ssr")]
pub mod config;
#[cfg(feature = "ssr")]
pub mod connections;
#[cfg(feature = "ssr")]
pub mod db;
#[cfg(feature = "ssr")]
pub mod meters;
#[cfg(feature = "ssr")]
pub mod openapi;
#[cfg(feature = "ssr")]
pub mod ops;
#[cfg(feature = "ssr")]
pub mod outbound;
#[cfg(feature = "ssr")]
pub mod page_errors;
#[cfg(feature = "ssr")]
pub mod pricing;
#[cfg(feature = "ssr")]
pub mod retry;
#[cfg(feature = "ssr")]
pub mod server;
#[cfg(feature = "ssr")]
pub mod state;
#[cfg(feature = "ssr")]
pub mod telemetry;

/// Entry point of the browser bundle (Leptos's island loader calls it): gives the page's islands their behaviour.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    islands::start();
}
