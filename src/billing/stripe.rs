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
    /// Whether Stripe refused a meter event because it already holds one with this identifier: the event was
    /// delivered before (a retry after a lost answer), so it counts as delivered.
    pub fn is_duplicate_identifier(&self) -> bool {
        match self {
            StripeError::Api { status: 400, code, message, .. } => {
                code.as_deref() == Some("duplicate_meter_event") || message.contains("already exists with identifier")
            }
            _ => false,
        }
    }

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

    /// The client `config` asks for (`STRIPE_API_BASE`, `STRIPE_SECRET_KEY`); `None` without a key.
    pub fn from_config(http: reqwest::Client, config: &crate::config::Config) -> Option<Self> {
        let key = config.stripe_secret_key.as_deref()?;
        Some(StripeClient::new(http, &config.stripe_api_base, key))
    }

    /// Whether the key is a live-mode key (`sk_live_…`/`rk_live_…`): Stripe's rate limits differ by mode.
    pub fn is_live(&self) -> bool {
        self.secret_key.contains("_live_")
    }

    /// POSTs `params` (bracketed keys, e.g. `line_items[0][price]`) to `path` and returns the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        params: &[(&str, String)],
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        let request =
            self.http.post(format!("{}{path}", self.base_url)).header("Idempotency-Key", idempotency_key).form(params);
        self.send(request).await
    }

    /// GETs `path` with `query` and returns the JSON answer.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, StripeError> {
        self.send(self.http.get(format!("{}{path}", self.base_url)).query(query)).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, StripeError> {
        let response = request
            .bearer_auth(&self.secret_key)
            .header("Stripe-Version", STRIPE_VERSION)
            .send()
            .await
            .map_err(|err| StripeError::Network(err.without_url().to_string()))?;
        let status = response.status().as_u16();
        let should_retry = response
            .headers()
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        // A body cut off mid-way leaves the outcome unknown: that is a network failure (retry), not a bad answer.
        let bytes = response.bytes().await.map_err(|err| StripeError::Network(err.without_url().to_string()))?;
        let body: Value = match serde_json::from_slice(&bytes) {
            Ok(body) => body,
            // A proxy's HTML 502 is still a 502: keep the status so the retry rules apply.
            Err(_) if !(200..300).contains(&status) => Value::Null,
            Err(err) => return Err(StripeError::Decode(format!("HTTP {status}, body is not JSON: {err}"))),
        };
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

    /// Reports usage to a meter (`POST /v1/billing/meter_events`). The value goes as a decimal string, the time as
    /// unix seconds, both as Stripe's form encoding expects.
    pub async fn create_meter_event(&self, event: &MeterEvent<'_>, idempotency_key: &str) -> Result<(), StripeError> {
        let params = [
            ("event_name", event.event_name.to_owned()),
            (CUSTOMER_PAYLOAD, event.customer.to_owned()),
            (VALUE_PAYLOAD, event.value.to_string()),
            ("identifier", event.identifier.to_owned()),
            ("timestamp", event.timestamp.to_string()),
        ];
        self.post("/v1/billing/meter_events", &params, idempotency_key).await.map(drop)
    }

    /// Creates a customer for an account (`metadata[user_id]` points back to it) and returns its id.
    pub async fn create_customer(
        &self,
        email: &str,
        user_id: &str,
        idempotency_key: &str,
    ) -> Result<String, StripeError> {
        let params = [("email", email.to_owned()), ("metadata[user_id]", user_id.to_owned())];
        let customer = self.post("/v1/customers", &params, idempotency_key).await?;
        string_field(&customer, "id")
    }

    /// The customer Tally created for `user_id` (`metadata[user_id]`), if one exists: found before creating one, so
    /// that an attempt whose answer was lost never leaves a second customer behind.
    pub async fn find_customer_by_user(&self, user_id: &str) -> Result<Option<String>, StripeError> {
        if !user_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(StripeError::Decode(format!("not a user id: {user_id:?}")));
        }
        let query = [("query", format!("metadata['user_id']:'{user_id}'"))];
        let page = self.get("/v1/customers/search", &query).await?;
        Ok(page["data"].as_array().and_then(|found| found.first()).and_then(|c| c["id"].as_str()).map(str::to_owned))
    }

    /// The active meters of the account.
    /// Every meter of the account, active or not (an event name belongs to one meter either way).
    pub async fn list_meters(&self) -> Result<Vec<Meter>, StripeError> {
        let list = self.get("/v1/billing/meters", &[("limit", "100".into())]).await?;
        decode(&list["data"])
    }

    /// Creates a SUM meter for `event_name`, mapping customers by `payload[stripe_customer_id]`.
    pub async fn create_meter(&self, display_name: &str, event_name: &str, key: &str) -> Result<Meter, StripeError> {
        let params = [
            ("display_name", display_name.to_owned()),
            ("event_name", event_name.to_owned()),
            ("default_aggregation[formula]", METER_FORMULA.to_owned()),
            ("customer_mapping[type]", "by_id".to_owned()),
            ("customer_mapping[event_payload_key]", CUSTOMER_PAYLOAD_KEY.to_owned()),
            ("value_settings[event_payload_key]", VALUE_PAYLOAD_KEY.to_owned()),
        ];
        decode(&self.post("/v1/billing/meters", &params, key).await?)
    }

    /// The active price with this `lookup_key`, if there is one (with its tiers, which Stripe lists only when
    /// asked).
    pub async fn find_price(&self, lookup_key: &str) -> Result<Option<Price>, StripeError> {
        let query =
            [("lookup_keys[0]", lookup_key.to_owned()), ("active", "true".into()), ("expand[0]", "data.tiers".into())];
        let list = self.get("/v1/prices", &query).await?;
        list["data"].as_array().and_then(|prices| prices.first()).map(Price::from_json).transpose()
    }

    /// Creates a product.
    pub async fn create_product(&self, name: &str, key: &str) -> Result<String, StripeError> {
        string_field(&self.post("/v1/products", &[("name", name.to_owned())], key).await?, "id")
    }

    /// Creates a monthly metered price on `meter`.
    pub async fn create_metered_price(&self, price: &NewMeteredPrice<'_>, key: &str) -> Result<Price, StripeError> {
        let params = [
            ("product", price.product.to_owned()),
            ("currency", price.currency.to_owned()),
            ("unit_amount_decimal", price.unit_amount_decimal.to_owned()),
            ("recurring[interval]", "month".to_owned()),
            ("recurring[usage_type]", "metered".to_owned()),
            ("recurring[meter]", price.meter.to_owned()),
            ("lookup_key", price.lookup_key.to_owned()),
            ("nickname", price.nickname.to_owned()),
        ];
        Price::from_json(&self.post("/v1/prices", &params, key).await?)
    }

    /// The usage Stripe has aggregated for `customer` on `meter` in `[start, end)` (unix seconds, whole minutes).
    pub async fn meter_usage(&self, meter: &str, customer: &str, start: i64, end: i64) -> Result<i64, StripeError> {
        let path = format!("/v1/billing/meters/{meter}/event_summaries");
        let mut total = 0_i64;
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![
                ("customer", customer.to_owned()),
                ("start_time", start.to_string()),
                ("end_time", end.to_string()),
                ("limit", "100".to_owned()),
            ];
            if let Some(after) = &after {
                query.push(("starting_after", after.clone()));
            }
            let page = self.get(&path, &query).await?;
            let summaries: Vec<MeterEventSummary> = decode(&page["data"])?;
            // Stripe sends the aggregate as a JSON number; usage is whole tokens.
            total += summaries.iter().map(|s| s.aggregated_value.round() as i64).sum::<i64>();
            match (page["has_more"].as_bool(), summaries.last()) {
                (Some(true), Some(last)) => after = Some(last.id.clone()),
                _ => return Ok(total),
            }
        }
    }

    /// A v2 event with its details (`GET /v2/core/events/{id}`): thin webhook notifications carry only the id.
    pub async fn get_v2_event(&self, id: &str) -> Result<Value, StripeError> {
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(StripeError::Decode(format!("not an event id: {id:?}")));
        }
        self.get(&format!("/v2/core/events/{id}"), &[]).await
    }

    /// Creates a Checkout Session subscribing a customer to `price_ids` (one item per meter) and returns its id and
    /// URL. `client_reference_id`
    /// comes back in `checkout.session.completed`, which links the customer to the user.
    pub async fn create_checkout_session(&self, checkout: &Checkout<'_>) -> Result<(String, String), StripeError> {
        let items: Vec<String> = (0..checkout.price_ids.len()).map(|i| format!("line_items[{i}][price]")).collect();
        let mut params: Vec<(&str, String)> = vec![
            ("mode", "subscription".to_owned()),
            ("client_reference_id", checkout.user_id.to_owned()),
            ("success_url", checkout.success_url.to_owned()),
            ("cancel_url", checkout.cancel_url.to_owned()),
        ];
        // Metered prices take no quantity.
        for (name, price) in items.iter().zip(checkout.price_ids) {
            params.push((name, price.clone()));
        }
        match checkout.customer {
            Some(customer) => params.push(("customer", customer.to_owned())),
            None => params.push(("customer_email", checkout.email.to_owned())),
        }
        let session = self.post("/v1/checkout/sessions", &params, checkout.idempotency_key).await?;
        Ok((string_field(&session, "id")?, string_field(&session, "url")?))
    }
}

impl StripeClient {
    /// Creates a customer portal session (payment method, invoices, cancellation) for `customer` and returns its
    /// URL; the portal's "return" link leads to `return_url`.
    pub async fn create_billing_portal_session(&self, customer: &str, return_url: &str) -> Result<String, StripeError> {
        let params = [("customer", customer.to_owned()), ("return_url", return_url.to_owned())];
        // A session is cheap and short-lived: each click opens its own; the retries of one click share this key.
        let idempotency_key = format!("portal:{customer}:{}", uuid::Uuid::new_v4());
        let session = self.post("/v1/billing_portal/sessions", &params, &idempotency_key).await?;
        string_field(&session, "url")
    }
}

fn string_field(object: &Value, field: &str) -> Result<String, StripeError> {
    object[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| StripeError::Decode(format!("answer without {field}: {object}")))
}

fn decode<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, StripeError> {
    T::deserialize(value).map_err(|err| StripeError::Decode(err.to_string()))
}

/// One meter event, as [`StripeClient::create_meter_event`] sends it.
pub struct MeterEvent<'a> {
    pub event_name: &'a str,
    pub customer: &'a str,
    pub value: i64,
    /// Stripe refuses a second event with the same identifier (for at least 24 hours).
    pub identifier: &'a str,
    /// Unix seconds; Stripe accepts the past 35 days up to 5 minutes ahead.
    pub timestamp: i64,
}

/// How Tally's meter aggregates: every event's value adds to the period's total.
pub const METER_FORMULA: &str = "sum";
/// The payload key of a meter event that names the customer (the meter's `customer_mapping`).
pub const CUSTOMER_PAYLOAD_KEY: &str = "stripe_customer_id";
/// The payload key of a meter event that carries the usage (the meter's `value_settings`).
pub const VALUE_PAYLOAD_KEY: &str = "value";
const CUSTOMER_PAYLOAD: &str = "payload[stripe_customer_id]";
const VALUE_PAYLOAD: &str = "payload[value]";

/// A Stripe billing meter, with the settings that decide what it bills.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Meter {
    pub id: String,
    pub event_name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub default_aggregation: MeterAggregation,
    #[serde(default)]
    pub customer_mapping: MeterCustomerMapping,
    #[serde(default)]
    pub value_settings: MeterValueSettings,
    /// `hour` or `day` for a pre-aggregated meter, which keeps only the latest event of each window.
    #[serde(default)]
    pub event_time_window: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MeterAggregation {
    #[serde(default)]
    pub formula: String,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MeterCustomerMapping {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub event_payload_key: String,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MeterValueSettings {
    #[serde(default)]
    pub event_payload_key: String,
}

impl Meter {
    /// What in this meter would make it bill Tally's meter events wrongly (empty when it bills them right). A
    /// meter cannot be changed after it is created, except its display name.
    pub fn differences(&self) -> Vec<String> {
        let mut differences = Vec::new();
        if self.status != "active" {
            differences.push(format!("it is {} (it accepts no meter events)", self.status));
        }
        if self.default_aggregation.formula != METER_FORMULA {
            differences.push(format!(
                "it aggregates by {:?}, not {METER_FORMULA:?} (it would not add the events up)",
                self.default_aggregation.formula
            ));
        }
        if self.customer_mapping.kind != "by_id" || self.customer_mapping.event_payload_key != CUSTOMER_PAYLOAD_KEY {
            differences.push(format!(
                "it finds the customer {} by payload key {:?}, not by_id by {CUSTOMER_PAYLOAD_KEY:?} (Stripe would \
                 refuse every event Tally sends)",
                self.customer_mapping.kind, self.customer_mapping.event_payload_key
            ));
        }
        if self.value_settings.event_payload_key != VALUE_PAYLOAD_KEY {
            differences.push(format!(
                "it reads the value from payload key {:?}, not {VALUE_PAYLOAD_KEY:?}",
                self.value_settings.event_payload_key
            ));
        }
        if let Some(window) = &self.event_time_window {
            differences.push(format!(
                "it is pre-aggregated per {window} (event_time_window), so it would keep only the latest event of \
                 each {window} instead of their sum"
            ));
        }
        differences
    }
}

/// A Stripe price: the fields Tally reads, and the whole object as Stripe sent it (what `meter_prices` keeps and
/// `crate::pricing` computes costs from).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Price {
    pub id: String,
    pub product: String,
    #[serde(default)]
    pub lookup_key: Option<String>,
    #[serde(default)]
    pub recurring: Option<PriceRecurring>,
    #[serde(skip)]
    pub json: Value,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PriceRecurring {
    #[serde(default)]
    pub meter: Option<String>,
}

impl Price {
    pub fn from_json(json: &Value) -> Result<Price, StripeError> {
        let mut price: Price = decode(json)?;
        price.json = json.clone();
        Ok(price)
    }
}

/// What [`StripeClient::create_metered_price`] creates.
pub struct NewMeteredPrice<'a> {
    pub product: &'a str,
    pub meter: &'a str,
    /// Lower-case ISO 4217, e.g. `jpy`.
    pub currency: &'a str,
    /// Per unit (token), in the currency's smallest unit, as a decimal string (e.g. `0.00005` yen).
    pub unit_amount_decimal: &'a str,
    pub lookup_key: &'a str,
    pub nickname: &'a str,
}

#[derive(Debug, serde::Deserialize)]
struct MeterEventSummary {
    id: String,
    aggregated_value: f64,
}

/// What a Checkout Session is created from.
pub struct Checkout<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub customer: Option<&'a str>,
    /// One metered price per meter.
    pub price_ids: &'a [String],
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
