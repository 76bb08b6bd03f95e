//! Reusable view components.

pub mod usage_meter;

pub use usage_meter::UsageMeter;
