//! A small Stripe API client: form-encoded requests as Stripe expects them, a pinned API version, an
//! `Idempotency-Key` on every POST, and Stripe's error JSON parsed into [`StripeError`] (with
//! `Stripe-Should-Retry` honoured by [`StripeError::is_retryable`]).

use serde_json::Value;

/// The API version every request asks for; the webhook parser handles this version's shapes (and older ones).
pub const STRIPE_VERSION: &str = "2025-03-31.basil";

/// A failed Stripe call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error (`{"error": {"type", "code", "message", …}}`).
    #[error("Stripe answered {status}: {message}")]
    Api { status: u16, kind: String, code: Option<String>, message: String, should_retry: Option<bool> },
    /// No answer: connection refused, reset or timed out.
    #[error("could not reach Stripe: {0}")]
    Network(String),
    /// An answer that is not what Stripe sends.
    #[error("unexpected answer from Stripe: {0}")]
    Decode(String),
}

impl StripeError {
    /// Whether the same request may succeed later. `Stripe-Should-Retry` decides when Stripe sent it; otherwise
    /// network errors, 409 (lock or idempotency conflicts), 429 and 5xx are retryable, as in Stripe's SDKs.
    pub fn is_retryable(&self) -> bool {
        match self {
            StripeError::Api { should_retry: Some(retry), .. } => *retry,
            StripeError::Api { status, .. } => *status == 409 || *status == 429 || *status >= 500,
            StripeError::Network(_) => true,
            StripeError::Decode(_) => false,
        }
    }
}

/// Talks to Stripe (or, in tests, to anything speaking its wire format at `base_url`).
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base_url: String,
    secret_key: String,
}

impl StripeClient {
    pub fn new(http: reqwest::Client, base_url: &str, secret_key: &str) -> Self {
        StripeClient { http, base_url: base_url.trim_end_matches('/').to_owned(), secret_key: secret_key.to_owned() }
    }

    /// POSTs `params` (bracketed keys, e.g. `line_items[0][price]`) to `path` and returns the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        params: &[(&str, String)],
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.secret_key)
            .header("Stripe-Version", STRIPE_VERSION)
            .header("Idempotency-Key", idempotency_key)
            .form(params)
            .send()
            .await
            .map_err(|err| StripeError::Network(err.without_url().to_string()))?;
        let status = response.status().as_u16();
        let should_retry = response
            .headers()
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        let body: Value = response.json().await.map_err(|err| StripeError::Decode(err.without_url().to_string()))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let error = &body["error"];
        Err(StripeError::Api {
            status,
            kind: error["type"].as_str().unwrap_or("api_error").to_owned(),
            code: error["code"].as_str().map(str::to_owned),
            message: error["message"].as_str().unwrap_or("no message").to_owned(),
            should_retry,
        })
    }

    /// Creates a Checkout Session subscribing a customer to `price_id` and returns its URL. `client_reference_id`
    /// comes back in `checkout.session.completed`, which links the customer to the user.
    pub async fn create_checkout_session(&self, checkout: &Checkout<'_>) -> Result<String, StripeError> {
        let mut params = vec![
            ("mode", "subscription".to_owned()),
            // A metered price takes no quantity.
            ("line_items[0][price]", checkout.price_id.to_owned()),
            ("client_reference_id", checkout.user_id.to_owned()),
            ("success_url", checkout.success_url.to_owned()),
            ("cancel_url", checkout.cancel_url.to_owned()),
        ];
        match checkout.customer {
            Some(customer) => params.push(("customer", customer.to_owned())),
            None => params.push(("customer_email", checkout.email.to_owned())),
        }
        let session = self.post("/v1/checkout/sessions", &params, checkout.idempotency_key).await?;
        session["url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| StripeError::Decode("checkout session without url".into()))
    }
}

/// What a Checkout Session is created from.
pub struct Checkout<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub customer: Option<&'a str>,
    pub price_id: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    pub idempotency_key: &'a str,
}

#[cfg(test)]
mod tests {
    use super::StripeError;

    fn api(status: u16, should_retry: Option<bool>) -> StripeError {
        StripeError::Api { status, kind: "api_error".into(), code: None, message: "x".into(), should_retry }
    }

    #[test]
    fn retry_follows_stripe_should_retry_then_the_status() {
        assert!(!api(500, Some(false)).is_retryable());
        assert!(api(400, Some(true)).is_retryable());
        assert!(api(429, None).is_retryable());
        assert!(api(409, None).is_retryable());
        assert!(api(503, None).is_retryable());
        assert!(!api(400, None).is_retryable());
        assert!(!api(401, None).is_retryable());
        assert!(StripeError::Network("reset".into()).is_retryable());
    }
}
