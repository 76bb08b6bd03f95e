//! Completions: an OpenAI-compatible chat completions API when one is configured, otherwise a deterministic
//! offline model whose tokens are counted with OpenAI's o200k_base tokenizer (`tiktoken-rs`, bundled data).

use serde::Deserialize;
use uuid::Uuid;

use crate::config::Config;
use crate::error::AppError;
use crate::state::AppState;

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

/// Refuses with [`AppError::LimitExceeded`] when the user has a hard limit and nothing of it is left.
pub async fn ensure_allowance(state: &AppState, user_id: Uuid) -> Result<(), AppError> {
    let summary = crate::usage::current_summary(state, user_id).await?.ok_or(AppError::Unauthorized)?;
    match summary.limit {
        Some(limit) if summary.used >= limit => Err(AppError::LimitExceeded { limit, remaining: 0 }),
        _ => Ok(()),
    }
}

/// Completes `prompt` with the configured provider.
pub async fn complete(config: &Config, http: &reqwest::Client, prompt: &str) -> Result<Completion, AppError> {
    match &config.openai_api_key {
        Some(key) => complete_online(http, &config.openai_base_url, key, &config.openai_model, prompt).await,
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
) -> Result<Completion, AppError> {
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let body = serde_json::json!({ "model": model, "messages": [{ "role": "user", "content": prompt }] });
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
