//! Subscribe: Stripe Checkout through the Stripe client, against a local server speaking Stripe's wire format.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::{app, app_with, config, TestApp};

type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<(String, String)>)>>>;

/// A Stripe stand-in for `POST /v1/checkout/sessions`: answers `status` + `body`, keeps the decoded form.
async fn stripe(status: StatusCode, body: Value, should_retry: Option<&'static str>) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let handler = {
        let seen = seen.clone();
        move |headers: HeaderMap, raw: Bytes| {
            let (seen, body) = (seen.clone(), body.clone());
            async move {
                let form: Vec<(String, String)> = url::form_urlencoded::parse(&raw).into_owned().collect();
                seen.lock().unwrap().push((headers, form));
                let mut response_headers = HeaderMap::new();
                if let Some(retry) = should_retry {
                    response_headers.insert("stripe-should-retry", retry.parse().unwrap());
                }
                (status, response_headers, Json(body))
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        async move { axum::serve(listener, Router::new().route("/v1/checkout/sessions", post(handler))).await },
    );
    (url, seen)
}

fn with_stripe(pool: PgPool, base: &str) -> TestApp {
    let mut config = config();
    config.stripe_secret_key = Some("sk_test_checkout".into());
    config.stripe_api_base = base.into();
    config.stripe_price_id = Some("price_metered_1".into());
    // This fake Stripe answers Checkout only: no customers are made first, so Checkout gets the email.
    config.delivery.create_customers = false;
    app_with(pool, config)
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn subscribe_opens_a_checkout_session_for_the_metered_price(pool: PgPool) {
    let session =
        json!({"id": "cs_test_1", "object": "checkout.session", "url": "https://checkout.stripe.com/c/pay/cs_test_1"});
    let (base, seen) = stripe(StatusCode::OK, session, None).await;
    let app = with_stripe(pool, &base);
    let cookie = app.signup("ada@example.com").await;
    let user = app.user_id("ada@example.com").await;
    assert_eq!(app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json()["canSubscribe"], true);

    let reply = app.post_form("/api/billing/checkout", &[], Some(&cookie)).await;
    assert!(reply.status.is_success() || reply.status.is_redirection(), "{}: {}", reply.status, reply.body);
    assert_eq!(reply.headers["location"], "https://checkout.stripe.com/c/pay/cs_test_1");

    let (headers, form) = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["authorization"], "Bearer sk_test_checkout");
    assert_eq!(headers["stripe-version"], tally::billing::stripe::STRIPE_VERSION);
    assert!(headers["idempotency-key"].to_str().unwrap().starts_with(&format!("checkout:{user}:")));
    assert_eq!(headers["content-type"], "application/x-www-form-urlencoded");
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(field("mode").as_deref(), Some("subscription"));
    assert_eq!(field("line_items[0][price]").as_deref(), Some("price_metered_1"));
    assert_eq!(field("line_items[0][quantity]"), None, "metered prices take no quantity");
    assert_eq!(field("client_reference_id"), Some(user.to_string()));
    assert_eq!(field("customer_email").as_deref(), Some("ada@example.com"));
    assert_eq!(field("success_url").as_deref(), Some("http://127.0.0.1:3000/?checkout=success"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_linked_customer_is_passed_and_a_live_subscription_hides_the_offer(pool: PgPool) {
    let session = json!({"id": "cs_test_2", "url": "https://checkout.stripe.com/c/pay/cs_test_2"});
    let (base, seen) = stripe(StatusCode::OK, session, None).await;
    let app = with_stripe(pool, &base);
    let cookie = app.signup("ada@example.com").await;
    sqlx::query("UPDATE users SET stripe_customer_id = 'cus_ada'").execute(&app.pool).await.unwrap();
    app.post_form("/api/billing/checkout", &[], Some(&cookie)).await;
    let form = seen.lock().unwrap()[0].1.clone();
    assert!(form.contains(&("customer".into(), "cus_ada".into())));
    assert!(!form.iter().any(|(k, _)| k == "customer_email"));

    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, user_id, status, state_at)
         SELECT 'sub_1', 'cus_ada', id, 'active', now() FROM users",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json()["canSubscribe"], false);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn stripe_errors_are_a_short_502(pool: PgPool) {
    let error = json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                 "message": "No such price: 'price_metered_1'", "param": "line_items[0][price]"}});
    let (base, _) = stripe(StatusCode::BAD_REQUEST, error, Some("false")).await;
    let app = with_stripe(pool, &base);
    let cookie = app.signup("ada@example.com").await;
    let reply = app.post_form("/api/billing/checkout", &[], Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["code"], "upstream");
    assert!(!reply.body.contains("price_metered_1"), "Stripe's details stay in the log");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn without_stripe_there_is_no_subscribe(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    assert_eq!(app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json()["canSubscribe"], false);
    let reply = app.post_form("/api/billing/checkout", &[], Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.post_form("/api/billing/checkout", &[], None).await.status, StatusCode::UNAUTHORIZED);
}
