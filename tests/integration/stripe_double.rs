//! The Stripe test double speaks Stripe's wire format: these checks pin the behaviour the delivery tests rely
//! on (and that `end2end/tests/stripe-double.spec.ts` checks against Stripe's official Node SDK).

use serde_json::Value;
use stripe_double::{Faults, DEFAULT_SECRET_KEY};

use crate::delivery::start_double;

async fn post(
    base: &str,
    key: Option<&str>,
    body: &str,
    idempotency_key: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/billing/meter_events"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("idempotency-key", idempotency_key);
    }
    let response = request.send().await.expect("double answers");
    let status = response.status().as_u16();
    let retry = response.headers().get("stripe-should-retry").map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.expect("JSON"), retry)
}

fn event(identifier: &str, value: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    format!(
        "event_name=ai_token_consumed&payload%5Bstripe_customer_id%5D=cus_wire&payload%5Bvalue%5D={value}\
         &identifier={identifier}&timestamp={now}"
    )
}

#[tokio::test]
async fn requests_need_the_secret_key_and_get_stripes_error_json() {
    let (base, _) = start_double().await;
    let (status, body, _) = post(&base, None, &event("a", "1"), None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("did not provide an API key"));
    let (status, _, _) = post(&base, Some("sk_test_wrong"), &event("a", "1"), None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn meter_events_take_encoded_or_plain_brackets_and_refuse_repeated_identifiers() {
    let (base, double) = start_double().await;
    let (status, body, _) = post(&base, Some(DEFAULT_SECRET_KEY), &event("wire-1", "25"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "billing.meter_event");
    assert_eq!(body["payload"]["value"], "25");
    assert!(body.get("id").is_none(), "a meter event has no id");

    let plain = event("wire-2", "5").replace("%5B", "[").replace("%5D", "]");
    assert_eq!(post(&base, Some(DEFAULT_SECRET_KEY), &plain, None).await.0, 200);

    let (status, body, retry) = post(&base, Some(DEFAULT_SECRET_KEY), &event("wire-1", "25"), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["message"], "An event already exists with identifier wire-1.");
    assert_eq!(retry.as_deref(), Some("false"));
    assert_eq!(double.total("cus_wire", "ai_token_consumed"), 30);
}

#[tokio::test]
async fn bad_parameters_are_refused_before_anything_is_recorded() {
    let (base, double) = start_double().await;
    let old = chrono::Utc::now().timestamp() - 36 * 24 * 3600;
    let cases = [
        (event("p1", "1.5"), "payload[value]"),
        (event("p2", "1234567890123456"), "payload[value]"),
        (event("p3", "1") + "&colour=red", "colour"),
        (event("p4", "1").replace("event_name=ai_token_consumed&", ""), "event_name"),
        (format!("{}&timestamp={old}", event("p5", "1").rsplit_once("&timestamp").unwrap().0), "timestamp"),
    ];
    for (body, param) in cases {
        let (status, answer, _) = post(&base, Some(DEFAULT_SECRET_KEY), &body, None).await;
        assert_eq!((status, answer["error"]["param"].as_str()), (400, Some(param)), "{body}: {answer}");
    }
    assert_eq!(double.state().accepted_events, 0);
}

#[tokio::test]
async fn an_idempotency_key_replays_its_first_answer_including_a_500() {
    let (base, double) = start_double().await;
    // A retry sends the same bytes: one body, built once (its timestamp may not move to the next second between the
    // two sends, which would make them different requests under one key).
    let body = event("idem-1", "3");
    let first = post(&base, Some(DEFAULT_SECRET_KEY), &body, Some("key-1")).await;
    let again = post(&base, Some(DEFAULT_SECRET_KEY), &body, Some("key-1")).await;
    assert_eq!((first.0, again.0), (200, 200), "a network retry gets the saved 200, not the duplicate 400");
    assert_eq!(first.1, again.1);
    let other = post(&base, Some(DEFAULT_SECRET_KEY), &event("idem-2", "3"), Some("key-1")).await;
    assert_eq!((other.0, other.1["error"]["type"].as_str()), (400, Some("idempotency_error")));

    double.set_faults(Faults { server_error: 1, ..Faults::default() });
    let body = event("idem-3", "4");
    assert_eq!(post(&base, Some(DEFAULT_SECRET_KEY), &body, Some("key-2")).await.0, 500);
    assert_eq!(post(&base, Some(DEFAULT_SECRET_KEY), &body, Some("key-2")).await.0, 500, "saved");
    assert_eq!(post(&base, Some(DEFAULT_SECRET_KEY), &body, Some("key-3")).await.0, 200);
    assert_eq!(double.total("cus_wire", "ai_token_consumed"), 7);
}

#[tokio::test]
async fn summaries_need_whole_minutes_and_sum_the_window() {
    let (base, double) = start_double().await;
    let meter = double.add_meter("summed_event");
    let now = chrono::Utc::now().timestamp();
    let body = format!(
        "event_name=summed_event&payload[stripe_customer_id]=cus_sum&payload[value]=40&identifier=s1&timestamp={now}"
    );
    assert_eq!(post(&base, Some(DEFAULT_SECRET_KEY), &body, None).await.0, 200);
    let stripe = tally::billing::stripe::StripeClient::new(reqwest::Client::new(), &base, DEFAULT_SECRET_KEY);
    let start = now / 60 * 60;
    assert_eq!(stripe.meter_usage(&meter, "cus_sum", start, start + 60).await.unwrap(), 40);
    assert_eq!(stripe.meter_usage(&meter, "cus_sum", start - 120, start).await.unwrap(), 0);
    let misaligned = stripe.meter_usage(&meter, "cus_sum", start + 1, start + 61).await.unwrap_err();
    assert!(misaligned.to_string().contains("aligned to minute boundaries"), "{misaligned}");
}
