//! Completions: an OpenAI-compatible chat completions API when one is configured, otherwise a deterministic
//! offline model whose tokens are counted with OpenAI's o200k_base tokenizer (`tiktoken-rs`, bundled data).

use serde::Deserialize;
use uuid::Uuid;

use super::AiState;
use crate::config::Config;
use crate::error::AppError;

/// Name the offline model reports.
pub const OFFLINE_MODEL: &str = "tally-offline-echo";

/// A completion with its token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub text: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// The provider's id of this completion (ours for the offline model).
    pub request_id: String,
}

/// Most completion tokens one call may produce (sent to the provider as `max_tokens`).
pub const MAX_COMPLETION_TOKENS: i64 = 1_024;
/// Tokens a chat request adds around the prompt (role markers), reserved on top of the prompt's own.
const CHAT_OVERHEAD_TOKENS: i64 = 16;
/// How long a reservation counts if its call never settles it (the process died): longer than any call.
const RESERVATION_SECONDS: f64 = 600.0;

/// Tokens held for one AI call until its real count is recorded.
#[derive(Debug)]
pub struct Reservation {
    /// `None` for users without a hard limit: nothing to hold.
    id: Option<Uuid>,
    /// The call's `max_tokens`: at most what the reservation leaves room for.
    pub max_completion_tokens: i64,
}

/// Holds an upper bound of the tokens a call for `prompt` can consume against the user's hard limit, or refuses
/// with [`AppError::LimitExceeded`] when it does not fit. The limit check sees the recorded usage *and* the calls
/// in flight (their reservations), under a lock on the user's row, so N concurrent calls cannot overshoot the limit
/// by N completions. The bound: the prompt's tokens plus `max_tokens`, which is lowered to what is left (the
/// offline model's answer is known before the call, so exactly that). [`release`] settles it once the real count
/// is recorded (or the call failed).
pub async fn reserve(state: &AiState, user_id: Uuid, prompt: &str) -> Result<Reservation, AppError> {
    let mut tx = state.pool.begin().await?;
    let catalog = &state.config.meters;
    let event_type = &catalog.primary().event_type;
    let limit = sqlx::query_scalar!(
        "SELECT l.usage_limit FROM users u CROSS JOIN LATERAL usage_limit_of(u.id, $2, $3) AS l
         WHERE u.id = $1 FOR UPDATE OF u",
        user_id,
        event_type,
        catalog.default_limit(event_type)
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(limit) = limit.ok_or(AppError::Unauthorized)? else {
        return Ok(Reservation { id: None, max_completion_tokens: MAX_COMPLETION_TOKENS });
    };
    // Read on the locked transaction's own connection: calls waiting for the lock hold connections too.
    let used =
        crate::usage::totals::summary_at(&mut *tx, &state.clock, catalog, user_id, event_type, chrono::Utc::now())
            .await?
            .map_or(0, |summary| summary.used);
    sqlx::query!("DELETE FROM ai_reservations WHERE user_id = $1 AND expires_at <= now()", user_id)
        .execute(&mut *tx)
        .await?;
    let held = sqlx::query_scalar!(
        r#"SELECT coalesce(sum(tokens), 0)::bigint AS "held!" FROM ai_reservations WHERE user_id = $1"#,
        user_id
    )
    .fetch_one(&mut *tx)
    .await?;
    let left = limit - used - held;
    let (bound, max_completion_tokens) = match state.config.openai_api_key {
        None => (complete_offline(prompt).total_tokens, MAX_COMPLETION_TOKENS),
        Some(_) => {
            let prompt_tokens = count_tokens(prompt) + CHAT_OVERHEAD_TOKENS;
            let max_completion = MAX_COMPLETION_TOKENS.min(left - prompt_tokens);
            (prompt_tokens + max_completion, max_completion)
        }
    };
    if max_completion_tokens < 1 || bound > left {
        return Err(AppError::LimitExceeded { limit, remaining: (limit - used).max(0) });
    }
    let id = Uuid::now_v7();
    sqlx::query!(
        "INSERT INTO ai_reservations (id, user_id, tokens, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        id,
        user_id,
        bound,
        RESERVATION_SECONDS
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Reservation { id: Some(id), max_completion_tokens })
}

/// Settles a reservation: its call's real tokens are recorded (or it failed), so the hold goes.
pub async fn release(pool: &sqlx::PgPool, reservation: &Reservation) -> Result<(), AppError> {
    if let Some(id) = reservation.id {
        sqlx::query!("DELETE FROM ai_reservations WHERE id = $1", id).execute(pool).await?;
    }
    Ok(())
}

/// Completes `prompt` with the configured provider, producing at most `max_completion_tokens`.
pub async fn complete(
    config: &Config,
    http: &reqwest::Client,
    prompt: &str,
    max_completion_tokens: i64,
) -> Result<Completion, AppError> {
    match &config.openai_api_key {
        Some(key) => {
            let model = &config.openai_model;
            complete_online(http, &config.openai_base_url, key, model, prompt, max_completion_tokens).await
        }
        None => Ok(complete_offline(prompt)),
    }
}

/// Counts tokens as OpenAI's current models do (o200k_base).
pub fn count_tokens(text: &str) -> i64 {
    tiktoken_rs::o200k_base_singleton().encode_with_special_tokens(text).len() as i64
}

/// The offline model: a deterministic answer (the same prompt always gets the same text and token counts).
pub fn complete_offline(prompt: &str) -> Completion {
    let words = prompt.split_whitespace().count();
    let echoed: String = prompt.chars().take(200).collect();
    let text = format!(
        "(offline model) Your prompt has {words} word{} and {} tokens. No AI provider is configured, so this \
         answer only echoes it: \u{201c}{echoed}\u{201d}",
        if words == 1 { "" } else { "s" },
        count_tokens(prompt),
    );
    let prompt_tokens = count_tokens(prompt);
    let completion_tokens = count_tokens(&text);
    Completion {
        text,
        model: OFFLINE_MODEL.to_owned(),
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        request_id: format!("offline-{}", Uuid::new_v4()),
    }
}

#[derive(Deserialize)]
struct ChatCompletion {
    id: String,
    model: String,
    choices: Vec<Choice>,
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct TokenUsage {
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
}

async fn complete_online(
    http: &reqwest::Client,
    base_url: &str,
    api_key: &str,
    model: &str,
    prompt: &str,
    max_completion_tokens: i64,
) -> Result<Completion, AppError> {
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let body = serde_json::json!({
        "model": model,
        "messages": [{ "role": "user", "content": prompt }],
        "max_tokens": max_completion_tokens,
    });
    let response = http.post(&url).bearer_auth(api_key).json(&body).send().await.map_err(|err| {
        tracing::warn!(%err, "AI provider unreachable");
        AppError::Upstream("the AI provider could not be reached; try again".into())
    })?;
    let status = response.status();
    if !status.is_success() {
        tracing::warn!(%status, "AI provider refused the request");
        return Err(AppError::Upstream(format!("the AI provider answered {status}; try again")));
    }
    let completion: ChatCompletion = response.json().await.map_err(|err| {
        tracing::warn!(%err, "AI provider answered something that is not a chat completion");
        AppError::Upstream("the AI provider's answer could not be read".into())
    })?;
    // The provider's own count is what it bills; without it, refuse rather than guess.
    let usage = completion
        .usage
        .filter(|u| u.total_tokens > 0 && u.prompt_tokens >= 0 && u.completion_tokens >= 0)
        .ok_or_else(|| AppError::Upstream("the AI provider did not report token usage".into()))?;
    let text = completion.choices.into_iter().next().and_then(|c| c.message.content).unwrap_or_default();
    Ok(Completion {
        text,
        model: completion.model,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        total_tokens: usage.total_tokens,
        request_id: completion.id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offline_model_is_deterministic_and_counts_real_tokens() {
        let a = complete_offline("Summarise the billing period rules.");
        let b = complete_offline("Summarise the billing period rules.");
        assert_eq!((a.text.as_str(), a.total_tokens), (b.text.as_str(), b.total_tokens));
        assert_ne!(a.request_id, b.request_id, "each call is its own request");
        assert_eq!(a.total_tokens, a.prompt_tokens + a.completion_tokens);
        // o200k_base: "hello world" is two tokens.
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(a.prompt_tokens, count_tokens("Summarise the billing period rules."));
    }
}
