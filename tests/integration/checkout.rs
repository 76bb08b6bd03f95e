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

async fn with_stripe(pool: PgPool, base: &str) -> TestApp {
    crate::support::save_price(&pool, tally::usage::AI_TOKENS_EVENT, "price_metered_1", "0.00005").await;
    crate::support::save_price(&pool, "image_generated", "price_images_1", "3").await;
    let mut config = config();
    config.stripe_secret_key = Some("sk_test_checkout".into());
    config.stripe_api_base = base.into();
    // This fake Stripe answers Checkout only: no customers are made first, so Checkout gets the email.
    config.delivery.create_customers = false;
    app_with(pool, config)
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn subscribe_opens_a_checkout_session_for_the_metered_price(pool: PgPool) {
    let session =
        json!({"id": "cs_test_1", "object": "checkout.session", "url": "https://checkout.stripe.com/c/pay/cs_test_1"});
    let (base, seen) = stripe(StatusCode::OK, session, None).await;
    let app = with_stripe(pool, &base).await;
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
    assert_eq!(field("line_items[1][price]").as_deref(), Some("price_images_1"), "one item per meter");
    assert_eq!(field("line_items[0][quantity]"), None, "metered prices take no quantity");
    assert_eq!(field("client_reference_id"), Some(user.to_string()));
    assert_eq!(field("customer_email").as_deref(), Some("ada@example.com"));
    assert_eq!(field("success_url").as_deref(), Some("http://127.0.0.1:3000/?checkout=success"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_linked_customer_is_passed_and_a_live_subscription_hides_the_offer(pool: PgPool) {
    let session = json!({"id": "cs_test_2", "url": "https://checkout.stripe.com/c/pay/cs_test_2"});
    let (base, seen) = stripe(StatusCode::OK, session, None).await;
    let app = with_stripe(pool, &base).await;
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
    let app = with_stripe(pool, &base).await;
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

/// "Manage billing": a Stripe customer portal session from the Stripe double, for users with a customer only.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn manage_billing_opens_the_customer_portal_of_a_linked_customer(pool: PgPool) {
    let (base, double) = crate::delivery::start_double().await;
    let mut config = config();
    config.stripe_secret_key = Some(stripe_double::DEFAULT_SECRET_KEY.into());
    config.stripe_api_base = base.clone();
    config.delivery.create_customers = false;
    let app = app_with(pool, config);
    let cookie = app.signup("ada@example.com").await;

    // No customer yet: nothing to manage, and the dashboard offers nothing.
    assert_eq!(app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json()["canManage"], false);
    assert!(!app.get("/", Some(&cookie)).await.body.contains("manage-billing"));
    let refused = app.post_form("/api/billing/portal", &[], Some(&cookie)).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.json()["code"], "conflict");

    let customer: Value = reqwest::Client::new()
        .post(format!("{base}/v1/customers"))
        .bearer_auth(stripe_double::DEFAULT_SECRET_KEY)
        .form(&[("email", "ada@example.com")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let customer = customer["id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE users SET stripe_customer_id = $1").bind(&customer).execute(&app.pool).await.unwrap();
    assert_eq!(app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json()["canManage"], true);
    assert!(app.get("/", Some(&cookie)).await.body.contains(r#"data-testid="manage-billing""#));

    let reply = app.post_form("/api/billing/portal", &[], Some(&cookie)).await;
    assert!(reply.status.is_success() || reply.status.is_redirection(), "{}: {}", reply.status, reply.body);
    let location = reply.headers["location"].to_str().unwrap();
    assert!(location.starts_with("https://billing.stripe.com/p/session/test_"), "{location}");
    assert_eq!(double.state().portal_sessions, 1);
    assert_eq!(app.post_form("/api/billing/portal", &[], None).await.status, StatusCode::UNAUTHORIZED);

    // A customer Stripe does not know (deleted there) is a short 502; Stripe's words stay in the log.
    sqlx::query("UPDATE users SET stripe_customer_id = 'cus_gone'").execute(&app.pool).await.unwrap();
    let gone = app.post_form("/api/billing/portal", &[], Some(&cookie)).await;
    assert_eq!(gone.status, StatusCode::BAD_GATEWAY);
    assert!(!gone.body.contains("cus_gone"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn without_stripe_there_is_no_manage_billing(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    sqlx::query("UPDATE users SET stripe_customer_id = 'cus_ada'").execute(&app.pool).await.unwrap();
    assert_eq!(app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json()["canManage"], false);
    assert!(!app.get("/", Some(&cookie)).await.body.contains("manage-billing"));
    assert_eq!(app.post_form("/api/billing/portal", &[], Some(&cookie)).await.status, StatusCode::SERVICE_UNAVAILABLE);
}
