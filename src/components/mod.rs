//! Reusable view components.

pub mod ai_prompt;
pub mod api_keys;
pub mod usage_meter;

pub use ai_prompt::AiPrompt;
pub use api_keys::ApiKeys;
pub use usage_meter::UsageMeter;
