//! The Stripe endpoints the double answers, with Stripe's parameter rules and error shapes.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Map, Value};

use crate::server::Hangup;
use crate::{AcceptedEvent, Inner, Saved, StripeDouble};

/// Stripe keeps identifiers for at least 24 hours; the double for exactly that long.
const IDENTIFIER_WINDOW_SECONDS: i64 = 24 * 3600;
/// Meter event timestamps: the past 35 calendar days up to 5 minutes ahead.
const PAST_WINDOW_SECONDS: i64 = 35 * 24 * 3600;
const FUTURE_WINDOW_SECONDS: i64 = 300;

type Params = Vec<(String, String)>;

/// One answer, with what Stripe would save under the request's Idempotency-Key.
struct Answer {
    status: u16,
    body: Value,
    should_retry: Option<bool>,
    /// The endpoint ran: the answer is saved under the Idempotency-Key. (Requests refused before running — bad
    /// parameters, rate limits — are not saved, so they may be retried with the same key.)
    executed: bool,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer { status: 200, body, should_retry: None, executed: true }
    }

    fn error(status: u16, kind: &str, code: Option<&str>, message: String, param: Option<&str>) -> Answer {
        let mut error = json!({ "type": kind, "message": message });
        if let Some(code) = code {
            error["code"] = json!(code);
            error["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")));
        }
        if let Some(param) = param {
            error["param"] = json!(param);
        }
        Answer { status, body: json!({ "error": error }), should_retry: None, executed: false }
    }

    fn invalid(message: String, param: &str) -> Answer {
        Answer::error(400, "invalid_request_error", None, message, Some(param))
    }

    fn missing(param: &str) -> Answer {
        let message = format!("Missing required param: {param}.");
        Answer::error(400, "invalid_request_error", Some("parameter_missing"), message, Some(param))
    }

    fn into_response(self, request_id: &str, idempotency_key: Option<&str>) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert("request-id", value);
        }
        if let Some(value) = idempotency_key.and_then(|k| HeaderValue::from_str(k).ok()) {
            headers.insert("idempotency-key", value);
        }
        if let Some(retry) = self.should_retry {
            headers.insert("stripe-should-retry", HeaderValue::from_static(if retry { "true" } else { "false" }));
        }
        response
    }
}

/// Now, in unix seconds, by the double's clock (tests move it, see [`tally_clock::Clock`]).
fn now(inner: &Inner) -> i64 {
    inner.clock.now().timestamp()
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `prefix[key]=value` parameters as a JSON object (e.g. `metadata`).
fn nested(params: &Params, prefix: &str) -> Value {
    let mut object = Map::new();
    for (key, value) in params {
        if let Some(inner) =
            key.strip_prefix(prefix).and_then(|k| k.strip_prefix('[')).and_then(|k| k.strip_suffix(']'))
        {
            object.insert(inner.to_owned(), json!(value));
        }
    }
    Value::Object(object)
}

/// Refuses the first parameter that is neither in `exact` nor under one of `prefixes` (`metadata[…]`).
fn only(params: &Params, exact: &[&str], prefixes: &[&str]) -> Result<(), Answer> {
    for (key, _) in params {
        let known = exact.contains(&key.as_str())
            || prefixes.iter().any(|p| key.strip_prefix(p).is_some_and(|rest| rest.starts_with('[')));
        if !known {
            let message = format!("Received unknown parameter: {key}");
            return Err(Answer::error(400, "invalid_request_error", Some("parameter_unknown"), message, Some(key)));
        }
    }
    Ok(())
}

fn require<'a>(params: &'a Params, name: &str) -> Result<&'a str, Answer> {
    param(params, name).filter(|v| !v.is_empty()).ok_or_else(|| Answer::missing(name))
}

fn integer(params: &Params, name: &str) -> Result<Option<i64>, Answer> {
    match param(params, name) {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| Answer::invalid(format!("Invalid integer: {raw}"), name)),
    }
}

fn list(url: &str, data: Vec<Value>) -> Value {
    json!({ "object": "list", "data": data, "has_more": false, "url": url })
}

/// Every request that is not a control request lands here.
pub(super) async fn handle(
    State(double): State<StripeDouble>,
    hangup: Option<Extension<Hangup>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = { double.lock().new_id("req") };
    let idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let respond = |answer: Answer| answer.into_response(&request_id, idempotency_key.as_deref());

    let key = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let expected = double.lock().secret_key.clone();
    if key != Some(expected.as_str()) {
        let message = match key {
            None => "You did not provide an API key. You need to provide your API key in the Authorization header, \
                     using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
                .to_owned(),
            Some(key) => format!("Invalid API Key provided: {}***", key.chars().take(8).collect::<String>()),
        };
        return respond(Answer::error(401, "invalid_request_error", None, message, None));
    }

    let raw = if method == Method::GET { uri.query().unwrap_or_default().as_bytes().to_vec() } else { body.to_vec() };
    let params: Params = form_urlencoded::parse(&raw).into_owned().collect();
    let path = uri.path().to_owned();

    if method == Method::POST && path == "/v1/billing/meter_events" {
        let hangup = hangup.map(|Extension(h)| h);
        return meter_event(&double, hangup, &params, idempotency_key.as_deref(), &request_id).await;
    }

    let mut inner = double.lock();
    *inner.state.calls.entry(format!("{method} {path}")).or_default() += 1;
    let fingerprint = fingerprint(&method, &path, &params);
    if method == Method::POST {
        if let Some(answer) = replay(&inner, idempotency_key.as_deref(), &fingerprint) {
            return respond(answer);
        }
    }
    let answer = route(&mut inner, &method, &path, &params).unwrap_or_else(|refusal| refusal);
    if method == Method::POST {
        save(&mut inner, idempotency_key.as_deref(), fingerprint, &answer);
    }
    respond(answer)
}

fn fingerprint(method: &Method, path: &str, params: &Params) -> String {
    let mut sorted = params.clone();
    sorted.sort();
    format!("{method} {path} {sorted:?}")
}

/// The saved answer for a reused Idempotency-Key, or the refusal when the parameters differ.
fn replay(inner: &Inner, key: Option<&str>, fingerprint: &str) -> Option<Answer> {
    let saved = inner.idempotency.get(key?)?;
    if saved.fingerprint != fingerprint {
        let message = format!(
            "Keys for idempotent requests can only be used with the same parameters they were first used with. \
             Try using a key other than '{}' if you meant to execute a different request.",
            key.unwrap_or_default()
        );
        return Some(Answer::error(400, "idempotency_error", None, message, None));
    }
    Some(Answer { status: saved.status, body: saved.body.clone(), should_retry: saved.should_retry, executed: true })
}

fn save(inner: &mut Inner, key: Option<&str>, fingerprint: String, answer: &Answer) {
    if let (Some(key), true) = (key, answer.executed) {
        let saved =
            Saved { fingerprint, status: answer.status, body: answer.body.clone(), should_retry: answer.should_retry };
        inner.idempotency.insert(key.to_owned(), saved);
    }
}

fn route(inner: &mut Inner, method: &Method, path: &str, params: &Params) -> Result<Answer, Answer> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "billing", "meters"]) => list_meters(inner, params),
        ("POST", ["v1", "billing", "meters"]) => create_meter(inner, params),
        ("GET", ["v1", "billing", "meters", id, "event_summaries"]) => event_summaries(inner, id, params),
        ("POST", ["v1", "customers"]) => create_customer(inner, params),
        ("GET", ["v1", "customers", "search"]) => search_customers(inner, params),
        ("POST", ["v1", "products"]) => create_product(inner, params),
        ("POST", ["v1", "prices"]) => create_price(inner, params),
        ("GET", ["v1", "prices"]) => list_prices(inner, params),
        ("POST", ["v1", "checkout", "sessions"]) => create_checkout_session(inner, params),
        ("POST", ["v1", "billing_portal", "sessions"]) => create_billing_portal_session(inner, params),
        ("GET", ["v2", "core", "events", id]) => match inner.v2_events.get(*id) {
            Some(event) => Ok(Answer::ok(event.clone())),
            None => {
                let message = format!("No such event: '{id}'");
                Err(Answer::error(404, "invalid_request_error", Some("resource_missing"), message, Some("id")))
            }
        },
        _ => {
            let message = format!("Unrecognized request URL ({method}: {path}).");
            Err(Answer::error(404, "invalid_request_error", None, message, None))
        }
    }
}

/// Inserts an active SUM meter and returns its id.
pub(super) fn insert_meter(inner: &mut Inner, display_name: &str, event_name: &str) -> String {
    let id = inner.new_id("mtr");
    let created = now(inner);
    inner.meters.push(json!({
        "id": id, "object": "billing.meter", "created": created, "updated": created,
        "display_name": display_name, "event_name": event_name, "event_time_window": null, "status": "active",
        "status_transitions": { "deactivated_at": null },
        "customer_mapping": { "type": "by_id", "event_payload_key": "stripe_customer_id" },
        "default_aggregation": { "formula": "sum" },
        "value_settings": { "event_payload_key": "value" }, "livemode": false
    }));
    inner.state.meters += 1;
    id
}

fn list_meters(inner: &Inner, params: &Params) -> Result<Answer, Answer> {
    only(params, &["status", "limit", "starting_after", "ending_before"], &["expand"])?;
    let status = param(params, "status");
    let data = inner.meters.iter().filter(|m| status.is_none_or(|s| m["status"] == s)).cloned().collect();
    Ok(Answer::ok(list("/v1/billing/meters", data)))
}

fn create_meter(inner: &mut Inner, params: &Params) -> Result<Answer, Answer> {
    only(
        params,
        &["display_name", "event_name", "event_time_window"],
        &["default_aggregation", "customer_mapping", "value_settings", "expand"],
    )?;
    let display_name = require(params, "display_name")?;
    let event_name = require(params, "event_name")?;
    let formula = require(params, "default_aggregation[formula]")?;
    if !["sum", "count", "last"].contains(&formula) {
        return Err(Answer::invalid(format!("Invalid formula: {formula}"), "default_aggregation[formula]"));
    }
    if inner.meters.iter().any(|m| m["event_name"] == event_name) {
        let message = format!("A meter with event_name '{event_name}' already exists.");
        return Err(Answer::invalid(message, "event_name"));
    }
    let id = insert_meter(inner, display_name, event_name);
    let meter = inner.meters.last_mut().expect("just inserted");
    meter["default_aggregation"]["formula"] = json!(formula);
    if let Some(key) = param(params, "customer_mapping[event_payload_key]") {
        meter["customer_mapping"]["event_payload_key"] = json!(key);
    }
    if let Some(key) = param(params, "value_settings[event_payload_key]") {
        meter["value_settings"]["event_payload_key"] = json!(key);
    }
    if let Some(window) = param(params, "event_time_window") {
        if !["hour", "day"].contains(&window) {
            return Err(Answer::invalid(format!("Invalid event_time_window: {window}"), "event_time_window"));
        }
        meter["event_time_window"] = json!(window);
    }
    debug_assert_eq!(meter["id"], id);
    Ok(Answer::ok(meter.clone()))
}

fn event_summaries(inner: &Inner, meter_id: &str, params: &Params) -> Result<Answer, Answer> {
    only(
        params,
        &["customer", "start_time", "end_time", "value_grouping_window", "limit", "starting_after"],
        &["expand"],
    )?;
    let Some(meter) = inner.meters.iter().find(|m| m["id"] == meter_id) else {
        let message = format!("No such billing meter: '{meter_id}'");
        return Err(Answer::error(404, "invalid_request_error", Some("resource_missing"), message, Some("id")));
    };
    let customer = require(params, "customer")?;
    let start = integer(params, "start_time")?.ok_or_else(|| Answer::missing("start_time"))?;
    let end = integer(params, "end_time")?.ok_or_else(|| Answer::missing("end_time"))?;
    for (name, value) in [("start_time", start), ("end_time", end)] {
        if value % 60 != 0 {
            return Err(Answer::invalid(format!("{name} must be aligned to minute boundaries."), name));
        }
    }
    if end <= start {
        return Err(Answer::invalid("end_time must be after start_time.".into(), "end_time"));
    }
    if param(params, "value_grouping_window").is_some() {
        let message = "The Stripe double only answers ungrouped summaries.".to_owned();
        return Err(Answer::invalid(message, "value_grouping_window"));
    }
    let event_name = meter["event_name"].as_str().unwrap_or_default();
    let total: i64 = inner
        .events
        .iter()
        .filter(|e| e.customer == customer && e.event_name == event_name && start <= e.timestamp && e.timestamp < end)
        .map(|e| e.value)
        .sum();
    let summary = json!({
        "id": format!("mtrusg_{meter_id}_{start}"), "object": "billing.meter_event_summary",
        "aggregated_value": total as f64, "start_time": start, "end_time": end, "livemode": false, "meter": meter_id
    });
    Ok(Answer::ok(list(&format!("/v1/billing/meters/{meter_id}/event_summaries"), vec![summary])))
}

/// `GET /v1/customers/search` for the one query form Tally sends: `metadata['KEY']:'VALUE'`.
fn search_customers(inner: &Inner, params: &Params) -> Result<Answer, Answer> {
    only(params, &["query", "limit", "page"], &["expand"])?;
    let query = require(params, "query")?;
    let parsed = query
        .strip_prefix("metadata['")
        .and_then(|rest| rest.split_once("']:'"))
        .and_then(|(key, value)| Some((key, value.strip_suffix('\'')?)));
    let Some((key, value)) = parsed else {
        return Err(Answer::invalid(format!("The double only answers metadata queries, not {query:?}"), "query"));
    };
    let data = inner.customers.iter().filter(|c| c["metadata"][key] == value).cloned().collect();
    let mut answer = list("/v1/customers/search", data);
    answer["object"] = json!("search_result");
    Ok(Answer::ok(answer))
}

fn create_customer(inner: &mut Inner, params: &Params) -> Result<Answer, Answer> {
    only(params, &["email", "name", "description", "phone"], &["metadata", "expand", "address"])?;
    if param(params, "email").is_some_and(|email| inner.faults.customer_error_emails.iter().any(|e| e == email)) {
        inner.state.injected_faults += 1;
        let mut answer = Answer::error(500, "api_error", None, "An unknown error occurred.".into(), None);
        answer.executed = true;
        return Err(answer);
    }
    let id = inner.new_id("cus");
    let customer = json!({
        "id": id, "object": "customer", "created": now(inner), "email": param(params, "email"),
        "name": param(params, "name"), "metadata": nested(params, "metadata"), "livemode": false
    });
    inner.customers.push(customer.clone());
    inner.state.customers += 1;
    Ok(Answer::ok(customer))
}

fn create_product(inner: &mut Inner, params: &Params) -> Result<Answer, Answer> {
    only(params, &["name", "description", "active", "unit_label"], &["metadata", "expand"])?;
    let name = require(params, "name")?;
    let id = inner.new_id("prod");
    let product = json!({
        "id": id, "object": "product", "created": now(inner), "name": name, "active": true,
        "metadata": nested(params, "metadata"), "livemode": false
    });
    inner.products.push(product.clone());
    inner.state.products += 1;
    Ok(Answer::ok(product))
}

fn create_price(inner: &mut Inner, params: &Params) -> Result<Answer, Answer> {
    only(
        params,
        &[
            "currency",
            "product",
            "unit_amount",
            "unit_amount_decimal",
            "lookup_key",
            "transfer_lookup_key",
            "nickname",
            "billing_scheme",
            "tax_behavior",
            "active",
        ],
        &["recurring", "product_data", "transform_quantity", "metadata", "expand"],
    )?;
    let currency = require(params, "currency")?;
    let product = match param(params, "product") {
        Some(product) if inner.products.iter().any(|p| p["id"] == product) => product.to_owned(),
        Some(product) => {
            let message = format!("No such product: '{product}'");
            return Err(Answer::error(
                400,
                "invalid_request_error",
                Some("resource_missing"),
                message,
                Some("product"),
            ));
        }
        None => {
            let name = require(params, "product_data[name]")?;
            let id = inner.new_id("prod");
            inner.products.push(json!({ "id": id, "object": "product", "name": name, "active": true }));
            inner.state.products += 1;
            id
        }
    };
    let usage_type = param(params, "recurring[usage_type]").unwrap_or("licensed");
    let meter = param(params, "recurring[meter]");
    if usage_type == "metered" && meter.is_none() {
        let message = "You can no longer create a price with a `usage_type` of `metered` without a specified `meter`.";
        return Err(Answer::invalid(message.into(), "recurring[meter]"));
    }
    let lookup_key = param(params, "lookup_key");
    if let Some(key) = lookup_key {
        if let Some(existing) = inner.prices.iter_mut().find(|p| p["lookup_key"] == key) {
            if param(params, "transfer_lookup_key") != Some("true") {
                let message =
                    format!("A price ({}) already uses that lookup key.", existing["id"].as_str().unwrap_or(""));
                return Err(Answer::invalid(message, "lookup_key"));
            }
            existing["lookup_key"] = Value::Null;
        }
    }
    let id = inner.new_id("price");
    let recurring = param(params, "recurring[interval]")
        .map(|interval| json!({ "interval": interval, "interval_count": 1, "usage_type": usage_type, "meter": meter }));
    let price = json!({
        "id": id, "object": "price", "created": now(inner), "active": true, "currency": currency, "product": product,
        "unit_amount": integer(params, "unit_amount")?, "unit_amount_decimal": param(params, "unit_amount_decimal"),
        "billing_scheme": param(params, "billing_scheme").unwrap_or("per_unit"), "tiers_mode": null,
        "transform_quantity": null,
        "recurring": recurring, "lookup_key": lookup_key, "nickname": param(params, "nickname"),
        "type": if recurring.is_some() { "recurring" } else { "one_time" }, "livemode": false
    });
    inner.prices.push(price.clone());
    inner.state.prices += 1;
    Ok(Answer::ok(price))
}

fn list_prices(inner: &Inner, params: &Params) -> Result<Answer, Answer> {
    only(params, &["active", "currency", "product", "limit", "type"], &["lookup_keys", "expand", "recurring"])?;
    // `lookup_keys[0]=a` (stripe-node) and `lookup_keys[]=a` both name a key.
    let keys: Vec<&str> =
        params.iter().filter(|(k, _)| k.starts_with("lookup_keys[")).map(|(_, v)| v.as_str()).collect();
    let active = param(params, "active").map(|a| a == "true");
    let data = inner
        .prices
        .iter()
        .filter(|p| keys.is_empty() || keys.iter().any(|k| p["lookup_key"] == *k))
        .filter(|p| active.is_none_or(|a| p["active"] == a))
        .cloned()
        .collect();
    Ok(Answer::ok(list("/v1/prices", data)))
}

/// `POST /v1/billing_portal/sessions`: a customer portal session for a customer the double knows, as Stripe answers
/// it (an unknown customer is Stripe's 400 `resource_missing` on `customer`).
fn create_billing_portal_session(inner: &mut Inner, params: &Params) -> Result<Answer, Answer> {
    only(params, &["customer", "return_url", "configuration", "locale", "on_behalf_of"], &["flow_data", "expand"])?;
    let customer = require(params, "customer")?.to_owned();
    if !inner.customers.iter().any(|c| c["id"] == customer.as_str()) {
        let message = format!("No such customer: '{customer}'");
        return Err(Answer::error(400, "invalid_request_error", Some("resource_missing"), message, Some("customer")));
    }
    let id = inner.new_id("bps");
    let url = format!("https://billing.stripe.com/p/session/test_{id}");
    inner.state.portal_sessions += 1;
    Ok(Answer::ok(json!({
        "id": id, "object": "billing_portal.session", "created": now(inner), "customer": customer,
        "livemode": false, "return_url": param(params, "return_url"), "url": url
    })))
}

fn create_checkout_session(inner: &mut Inner, params: &Params) -> Result<Answer, Answer> {
    only(
        params,
        &["mode", "client_reference_id", "success_url", "cancel_url", "customer", "customer_email"],
        &["line_items", "metadata", "subscription_data", "expand"],
    )?;
    require(params, "mode")?;
    require(params, "success_url")?;
    let id = inner.new_id("cs_test");
    let url = format!("https://checkout.stripe.com/c/pay/{id}");
    Ok(Answer::ok(json!({ "id": id, "object": "checkout.session", "url": url, "mode": param(params, "mode") })))
}

/// What a meter event call turns into before it runs.
enum Fault {
    None,
    Slow,
    RateLimited,
    ServerError,
    Drop,
    LoseResponse,
}

/// Counts a call in flight for one customer and meter while it lives.
struct InFlight<'a> {
    double: &'a StripeDouble,
    key: (String, String),
}

impl<'a> InFlight<'a> {
    fn enter(double: &'a StripeDouble, inner: &mut Inner, key: (String, String)) -> InFlight<'a> {
        let count = inner.in_flight.entry(key.clone()).or_default();
        if *count > 0 {
            inner.state.concurrent_calls_per_customer += 1;
        }
        *count += 1;
        InFlight { double, key }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut inner = self.double.lock();
        if let Some(count) = inner.in_flight.get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
    }
}

/// Picks the fault of this call from the knobs (counters first, one fault per call), and the delays before
/// handling it and before answering (only for calls without another fault, so each knob counts on its own).
fn pick_fault(inner: &mut Inner) -> (Fault, u64, u64) {
    let faults = &mut inner.faults;
    // The call was already counted in its second (`Inner::count_call_in_second`).
    if faults.calls_per_second > 0 && inner.call_second.1 > faults.calls_per_second {
        return (Fault::RateLimited, 0, 0);
    }
    let fault = if faults.rate_limit > 0 {
        faults.rate_limit -= 1;
        Fault::RateLimited
    } else if faults.server_error > 0 {
        faults.server_error -= 1;
        Fault::ServerError
    } else if faults.drop_connection > 0 {
        faults.drop_connection -= 1;
        Fault::Drop
    } else if faults.lose_response > 0 {
        faults.lose_response -= 1;
        Fault::LoseResponse
    } else if faults.slow > 0 {
        faults.slow -= 1;
        return (Fault::Slow, faults.slow_ms, 0);
    } else if faults.slow_answer > 0 {
        faults.slow_answer -= 1;
        return (Fault::Slow, 0, faults.slow_ms);
    } else if chance() < faults.rate_limit_ratio {
        Fault::RateLimited
    } else if chance() < faults.server_error_ratio {
        Fault::ServerError
    } else if chance() < faults.lose_response_ratio {
        Fault::LoseResponse
    } else {
        Fault::None
    };
    (fault, 0, 0)
}

async fn meter_event(
    double: &StripeDouble,
    hangup: Option<Hangup>,
    params: &Params,
    idempotency_key: Option<&str>,
    request_id: &str,
) -> Response {
    let respond = |answer: Answer| answer.into_response(request_id, idempotency_key);
    let fingerprint = fingerprint(&Method::POST, "/v1/billing/meter_events", params);
    let customer = param(params, "payload[stripe_customer_id]").unwrap_or_default().to_owned();
    let event_name = param(params, "event_name").unwrap_or_default().to_owned();

    let (fault, delay, answer_delay, _in_flight) = {
        let mut inner = double.lock();
        inner.state.meter_event_calls += 1;
        let second = now(&inner);
        inner.count_call_in_second(second);
        if let Some(answer) = replay(&inner, idempotency_key, &fingerprint) {
            return respond(answer);
        }
        let in_flight = InFlight::enter(double, &mut inner, (customer, event_name));
        let (fault, delay, answer_delay) = pick_fault(&mut inner);
        if !matches!(fault, Fault::None) {
            inner.state.injected_faults += 1;
        }
        (fault, delay, answer_delay, in_flight)
    };
    if delay > 0 {
        // A client that gives up first closes the connection, which drops this future: nothing is recorded.
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    match (fault, &hangup) {
        (Fault::Drop, Some(hangup)) => hangup.now().await,
        (Fault::RateLimited, _) => {
            let message = "Too many requests hit the API too quickly. We recommend an exponential backoff of your \
                           requests.";
            respond(Answer::error(429, "invalid_request_error", Some("rate_limit"), message.into(), None))
        }
        (Fault::ServerError, _) => {
            let mut answer = Answer::error(500, "api_error", None, "An unknown error occurred.".into(), None);
            answer.executed = true;
            save(&mut double.lock(), idempotency_key, fingerprint, &answer);
            respond(answer)
        }
        (fault, _) => {
            let answer = {
                let mut inner = double.lock();
                let answer = record_meter_event(&mut inner, params).unwrap_or_else(|refusal| refusal);
                save(&mut inner, idempotency_key, fingerprint, &answer);
                answer
            };
            if let (Fault::LoseResponse, Some(hangup)) = (fault, &hangup) {
                return hangup.now().await;
            }
            if answer_delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(answer_delay)).await;
            }
            respond(answer)
        }
    }
}

/// Validates and records one meter event, as `POST /v1/billing/meter_events` does.
fn record_meter_event(inner: &mut Inner, params: &Params) -> Result<Answer, Answer> {
    only(params, &["event_name", "identifier", "timestamp"], &["payload", "expand"])?;
    let event_name = require(params, "event_name")?;
    if event_name.chars().count() > 100 {
        return Err(Answer::invalid("Invalid string: must be at most 100 characters".into(), "event_name"));
    }
    // Stripe checks the customer mapping asynchronously (error reports); an unknown event name has no meter to
    // read its keys from, so the double refuses it at once, where tests can see it.
    let Some(meter) = inner.meters.iter().find(|m| m["event_name"] == event_name && m["status"] == "active") else {
        let message = format!("No active meter was found for event_name '{event_name}'.");
        return Err(Answer::error(400, "invalid_request_error", Some("resource_missing"), message, Some("event_name")));
    };
    let customer_key = format!("payload[{}]", meter["customer_mapping"]["event_payload_key"].as_str().unwrap_or(""));
    let value_key = format!("payload[{}]", meter["value_settings"]["event_payload_key"].as_str().unwrap_or(""));
    let customer = require(params, &customer_key)?.to_owned();
    let raw_value = require(params, &value_key)?;
    let digits = raw_value.strip_prefix('-').unwrap_or(raw_value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        let message = format!("Invalid value: {raw_value}. The value must be a whole number.");
        return Err(Answer::invalid(message, &value_key));
    }
    if digits.trim_start_matches('0').len() > 15 {
        let message = format!("The value in the event payload can have at most 15 digits. Received {raw_value}.");
        return Err(Answer::invalid(message, &value_key));
    }
    let value: i64 =
        raw_value.parse().map_err(|_| Answer::invalid(format!("Invalid value: {raw_value}"), &value_key))?;

    let now = now(inner);
    let timestamp = integer(params, "timestamp")?.unwrap_or(now);
    if timestamp < now - PAST_WINDOW_SECONDS {
        let message = "Timestamp must be within the past 35 calendar days.".to_owned();
        return Err(Answer::invalid(message, "timestamp"));
    }
    if timestamp > now + FUTURE_WINDOW_SECONDS {
        let message = "Timestamp must not be more than 5 minutes in the future.".to_owned();
        return Err(Answer::invalid(message, "timestamp"));
    }
    let identifier = match param(params, "identifier") {
        Some(identifier) if identifier.chars().count() > 100 => {
            return Err(Answer::invalid("Invalid string: must be at most 100 characters".into(), "identifier"));
        }
        Some(identifier) if !identifier.is_empty() => identifier.to_owned(),
        _ => inner.new_id("evt_identifier"),
    };
    if inner.identifiers.get(&identifier).is_some_and(|at| now - at < IDENTIFIER_WINDOW_SECONDS) {
        inner.state.duplicate_identifiers += 1;
        let message = format!("An event already exists with identifier {identifier}.");
        let mut answer = Answer::error(400, "invalid_request_error", None, message, None);
        answer.should_retry = Some(false);
        answer.executed = true;
        return Ok(answer);
    }
    inner.identifiers.insert(identifier.clone(), now);
    let payload: BTreeMap<String, String> = params
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("payload[")?.strip_suffix(']')?.to_owned(), v.clone())))
        .collect();
    *inner.state.totals.entry(customer.clone()).or_default().entry(event_name.to_owned()).or_default() += value;
    inner.state.accepted_events += 1;
    inner.events.push(AcceptedEvent {
        identifier: identifier.clone(),
        event_name: event_name.to_owned(),
        customer,
        value,
        timestamp,
        received_at: now,
    });
    Ok(Answer::ok(json!({
        "object": "billing.meter_event", "created": now, "event_name": event_name, "identifier": identifier,
        "livemode": false, "payload": payload, "timestamp": timestamp
    })))
}

/// A uniform random number in `[0, 1)`: whether a storm's ratio hits this call.
fn chance() -> f64 {
    let mut bytes = [0_u8; 8];
    getrandom::fill(&mut bytes).unwrap_or_default();
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1_u64 << 53) as f64
}
