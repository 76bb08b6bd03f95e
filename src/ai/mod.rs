//! The example AI route: a prompt in, a completion out, its tokens recorded as `ai_token_consumed`.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::AppError;

#[cfg(feature = "ssr")]
pub mod generate;

/// What the AI route needs from the server: the database, the settings, an HTTP client for the provider, and the
/// usage period clock and writer its tokens are recorded with.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct AiState {
    pub pool: sqlx::PgPool,
    pub config: std::sync::Arc<crate::config::Config>,
    pub http: reqwest::Client,
    pub clock: std::sync::Arc<crate::usage::period::PeriodClock>,
    pub writer: crate::usage::writer::UsageWriter,
}

#[cfg(feature = "ssr")]
impl AiState {
    /// This request's, from the leptos context.
    pub fn current() -> Result<AiState, AppError> {
        crate::error::from_context()
    }
}

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 8_000;

/// `POST /api/ai/generate`'s body, as the OpenAPI description shows it.
#[cfg(feature = "ssr")]
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // A schema: only its shape is used.
pub struct GenerateRequest {
    prompt: String,
}

/// A completion and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Generation {
    pub text: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// The usage event the tokens were recorded as.
    pub usage_event_id: Uuid,
}

/// Answers `prompt` for the caller (session or API key) and records the tokens used: `POST /api/ai/generate`
/// with `{"prompt": "..."}`.
#[cfg_attr(feature = "ssr", utoipa::path(
    post, path = "/api/ai/generate", tag = "ai",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "The completion; its tokens are recorded as usage", body = Generation),
        (status = 400, description = "Malformed JSON or a missing prompt", body = crate::error::WireError),
        (status = 401, description = "No session and no valid API key", body = crate::error::WireError),
        (status = 415, description = "Not application/json", body = crate::error::WireError),
        (status = 422, description = "An empty or too long prompt", body = crate::error::WireError),
        (status = 429, description = "Nothing left of the period's limit", body = crate::error::WireError),
        (status = 502, description = "The AI provider failed; nothing recorded", body = crate::error::WireError),
    ),
    security(("api_key" = []))
))]
#[server(endpoint = "ai/generate", input = server_fn::codec::Json)]
pub async fn generate(prompt: String) -> Result<Generation, AppError> {
    use crate::usage::writer::{LimitPolicy, NewEvent};

    let state = AiState::current()?;
    crate::auth::caller::require_json(&crate::auth::caller::request_headers().await?)?;
    let user_id = crate::auth::caller::user_id(&state.pool).await?;
    let prompt = prompt.trim();
    if prompt.is_empty() {
        return Err(AppError::Refused(crate::error::Problem::PromptMissing));
    }
    if prompt.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(AppError::Refused(crate::error::Problem::PromptCharacters));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(AppError::Refused(crate::error::Problem::PromptTooLong { max: MAX_PROMPT_CHARS }));
    }
    // Refuse before spending tokens when nothing is left. Once the model has answered, its tokens are recorded
    // even past the limit: they were consumed, and an unbilled unit is a lost unit.
    // The call's upper bound is held against the limit until its real count is recorded.
    let reservation = generate::reserve(&state, user_id, prompt).await?;
    let completion = generate::complete(&state.config, &state.http, prompt, reservation.max_completion_tokens).await;
    let completion = match completion {
        Ok(completion) => completion,
        Err(err) => {
            generate::release(&state.pool, &reservation).await?;
            return Err(err);
        }
    };
    let event = NewEvent {
        // The catalog's primary meter (`ai_token_consumed` as shipped).
        event_type: state.config.meters.primary().event_type.clone(),
        quantity: completion.total_tokens,
        metadata: serde_json::json!({
            "model": completion.model,
            "promptTokens": completion.prompt_tokens,
            "completionTokens": completion.completion_tokens,
        }),
        // The completion's id: if this request is retried after the model answered, the tokens count once.
        idempotency_key: Some(format!("ai:{}", completion.request_id)),
        occurred_at: chrono::Utc::now(),
    };
    let caller = crate::auth::caller::Caller::User(user_id);
    let outcome = state.writer.submit(caller, vec![event], LimitPolicy::RecordAnyway).await;
    // Recorded (or not): either way the hold goes; the recorded tokens now count instead.
    generate::release(&state.pool, &reservation).await?;
    let outcome = outcome?;
    let recorded = outcome.events.first().ok_or(AppError::Internal)?;
    Ok(Generation {
        text: completion.text,
        model: completion.model,
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        total_tokens: completion.total_tokens,
        usage_event_id: recorded.id,
    })
}
