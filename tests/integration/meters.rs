//! A meter per event type, with what its usage costs (issue 19, parts 1 and 2): the cost so far equals what an
//! invoice bills for the same usage (an invoice line fixture, and the Stripe double's own invoice), the forecast,
//! limits and alerts per type, alerts set in yen or in units.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use stripe_double::{StripeDouble, DEFAULT_SECRET_KEY};
use tally::auth::users::LimitChoice;
use tally::pricing::Price;
use tally::usage::AI_TOKENS_EVENT;

use crate::support::{app, save_price, TestApp};

const IMAGES: &str = "image_generated";

fn invoice_fixture() -> Value {
    let path = format!("{}/tests/fixtures/invoices/invoice.finalized.metered-jpy.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(path).expect("invoice fixture")).expect("JSON")
}

/// `GET /api/usage/allowance?eventType=…` as a service calls it.
async fn allowance(app: &TestApp, key: &str, event_type: &str) -> (StatusCode, Value) {
    let auth = format!("Bearer {key}");
    let reply = app
        .get_with(&format!("/api/usage/allowance?eventType={event_type}"), &[("authorization", auth.as_str())])
        .await;
    (reply.status, reply.json())
}

async fn record(app: &TestApp, key: &str, event_type: &str, quantity: i64) -> (StatusCode, Value) {
    let auth = format!("Bearer {key}");
    let body = serde_json::json!({ "eventType": event_type, "quantity": quantity }).to_string();
    let reply = app.post_json("/api/usage/record", &body, &[("authorization", auth.as_str())]).await;
    (reply.status, reply.json())
}

fn now() -> String {
    Utc::now().to_rfc3339()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_meter_shows_what_the_invoice_line_fixture_bills_for_the_same_usage(pool: PgPool) {
    let invoice = invoice_fixture();
    let lines = invoice["data"]["object"]["lines"]["data"].as_array().expect("lines").clone();
    let currency = invoice["data"]["object"]["currency"].as_str().unwrap();
    // Each line's price is a meter's Stripe price (what `tally stripe setup` saves).
    let meter_of = |line: &Value| {
        if line["pricing"]["price_details"]["price"].as_str().unwrap().contains("tokens") {
            AI_TOKENS_EVENT
        } else {
            IMAGES
        }
    };
    for line in &lines {
        let price = line["pricing"]["price_details"]["price"].as_str().unwrap();
        save_price(&pool, meter_of(line), price, line["pricing"]["unit_amount_decimal"].as_str().unwrap()).await;
    }
    let app = app(pool);
    let cookie = app.signup("invoiced@example.com").await;
    let user = app.user_id("invoiced@example.com").await;
    let key = app.api_key("invoiced@example.com").await;

    for line in &lines {
        let (quantity, amount) = (line["quantity"].as_i64().unwrap(), line["amount"].as_i64().unwrap());
        // The arithmetic alone, from the line's own price.
        let price: Price = serde_json::from_value(
            serde_json::json!({ "currency": currency, "unit_amount_decimal": line["pricing"]["unit_amount_decimal"] }),
        )
        .unwrap();
        assert_eq!(price.rate().unwrap().cost(quantity), amount, "line {}", line["id"]);
        // And the meter, for the same usage recorded through Tally.
        app.insert_usage(user, meter_of(line), quantity, &now()).await;
        let (status, answer) = allowance(&app, &key, meter_of(line)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!((answer["costSoFar"].as_i64(), answer["currency"].as_str()), (Some(amount), Some(currency)));
    }

    // The page shows the same numbers, in both languages: ¥62 for 1,234,567 tokens, ¥21 for 7 images.
    let html = app.get("/", Some(&cookie)).await.body;
    assert_eq!(html.matches(r#"data-testid="usage-meter""#).count(), 2, "a meter per type with usage");
    assert!(html.contains(r#"data-testid="usage-cost" data-amount="62""#), "{html}");
    assert!(html.contains("¥62 so far") && html.contains("¥21 so far"), "{html}");
    assert!(html.contains("Images this period"), "the second meter's label");
    let japanese = app.get("/", Some(&format!("{cookie}; i18n_pref_locale=ja"))).await.body;
    assert!(japanese.contains("今期の料金 62円") && japanese.contains("今期の画像生成"), "{japanese}");
}

/// Starts the double with a meter and a per-unit price for each meter of the tests' catalog, saved as setup
/// saves them; returns its address and the token price's id.
async fn double_with_prices(pool: &PgPool) -> (String, StripeDouble, String) {
    let double = StripeDouble::new(DEFAULT_SECRET_KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stripe_double::serve(listener, double.clone()));
    let stripe = tally::billing::stripe::StripeClient::new(reqwest::Client::new(), &base, DEFAULT_SECRET_KEY);
    let mut token_price = String::new();
    for meter in crate::support::catalog().meters() {
        let plan = tally::billing::setup::SetupPlan {
            event_name: meter.event_type.clone(),
            meter_display_name: meter.label.en.clone(),
            product_name: "Tally usage".into(),
            price: meter.price.clone(),
            lookup_key: meter.lookup_key(),
        };
        let done = tally::billing::setup::setup(&stripe, &plan).await.unwrap();
        tally::billing::prices::save(pool, &meter.event_type, &done.price).await.unwrap();
        if meter.event_type == AI_TOKENS_EVENT {
            token_price = done.price.id.clone();
        }
    }
    (base, double, token_price)
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_cost_so_far_equals_the_doubles_invoice_for_the_delivered_usage(pool: PgPool) {
    let (base, double, token_price) = double_with_prices(&pool).await;
    let app = app(pool.clone());
    app.signup("metered@example.com").await;
    let user = app.user_id("metered@example.com").await;
    let key = app.api_key("metered@example.com").await;
    tally::billing::status::link_customer(&app.pool, "metered@example.com", "cus_metered").await.unwrap();
    crate::support::set_token_limit(&app.pool, Some(user), None).await;
    // Each call alone is ¥1.43 or ¥1.425 (¥1 rounded); the period is ¥4.28, which the invoice rounds once to ¥4.
    for quantity in [28_600, 28_500, 28_500] {
        assert_eq!(record(&app, &key, AI_TOKENS_EVENT, quantity).await.0, StatusCode::OK);
    }
    let settings = tally::config::DeliveryConfig { run_in_server: false, ..crate::delivery::fast_settings() };
    let worker =
        tally::billing::delivery::DeliveryWorker::new(pool.clone(), &base, DEFAULT_SECRET_KEY, settings, "Asia/Tokyo");
    let (_, pending) = worker.drain(Duration::from_secs(30)).await.unwrap();
    assert_eq!(pending, 0);

    let (_, shown) = allowance(&app, &key, AI_TOKENS_EVENT).await;
    let period = |name: &str| shown[name].as_str().unwrap().parse::<DateTime<Utc>>().unwrap().timestamp();
    let invoice = double
        .invoice("cus_metered", &token_price, period("periodStart"), period("periodEnd"), 3_600)
        .expect("the double prices its own price");
    let line = &invoice["lines"]["data"][0];
    assert_eq!(line["quantity"], 85_600, "the double received every token");
    assert_eq!(invoice["amount_due"], 4, "{invoice}");
    assert_eq!(shown["costSoFar"], invoice["amount_due"], "the meter says what the invoice says");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_forecast_is_linear_on_the_period_and_waits_for_a_tenth_of_it(pool: PgPool) {
    let app = app(pool);
    app.signup("pace@example.com").await;
    let user = app.user_id("pace@example.com").await;
    // November 2026 in Tokyo: 30 days from 2026-10-31T15:00Z.
    let start: DateTime<Utc> = "2026-10-31T15:00:00Z".parse().unwrap();
    app.insert_usage(user, AI_TOKENS_EVENT, 1_000_000, "2026-11-01T00:00:00Z").await;
    let read = |days: i64| {
        let app = &app;
        async move {
            let at = start + chrono::Duration::days(days);
            let catalog = &app.state.config.meters;
            let summary =
                tally::usage::totals::summary_at(&app.pool, &app.state.clock, catalog, user, AI_TOKENS_EVENT, at)
                    .await
                    .unwrap()
                    .unwrap();
            summary.cost.expect("the token meter has a price")
        }
    };
    let young = read(2).await;
    assert_eq!((young.so_far, young.forecast), (50, None), "after 2 of 30 days: too young to say");
    // Past the default limit of 50,000 (usage recorded regardless): the limit stops the pace, so no more is forecast.
    let limited = read(15).await;
    assert_eq!((limited.forecast_used, limited.forecast, limited.forecast_capped), (Some(1_000_000), Some(50), true));
    crate::support::set_token_limit(&app.pool, Some(user), None).await;
    let half = read(15).await;
    assert!(!half.forecast_capped);
    assert_eq!((half.forecast_used, half.forecast), (Some(2_000_000), Some(100)), "linear on the time so far");
    assert_eq!(half.unit_amount.as_deref(), Some("0.00005"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn each_event_type_has_its_own_limit_and_alerts(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("types@example.com").await;
    let user = app.user_id("types@example.com").await;
    let key = app.api_key("types@example.com").await;
    tally::auth::users::set_limit(&app.pool, "types@example.com", IMAGES, LimitChoice::Own(Some(5)), None)
        .await
        .unwrap();

    let (status, answer) = record(&app, &key, IMAGES, 4).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (answer["allowance"]["limit"].as_i64(), answer["allowance"]["warning"].as_bool()),
        (Some(5), Some(true))
    );
    let (status, refused) = record(&app, &key, IMAGES, 2).await;
    assert_eq!((status, refused["remaining"].as_i64()), (StatusCode::TOO_MANY_REQUESTS, Some(1)), "{refused}");
    let (status, tokens) = record(&app, &key, AI_TOKENS_EVENT, 1_000).await;
    assert_eq!(status, StatusCode::OK, "the token limit is another: {tokens}");
    assert_eq!(tokens["allowance"]["limit"], crate::support::DEFAULT_LIMIT);

    let crossed: Vec<(String, i16)> =
        sqlx::query_as("SELECT event_type, threshold FROM usage_alerts WHERE user_id = $1 ORDER BY threshold")
            .bind(user)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(crossed, [(IMAGES.to_owned(), 80)], "4 of 5 images is 80 %; 1,000 tokens is 2 % of 50,000");

    let (status, images) = allowance(&app, &key, IMAGES).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (images["used"].as_i64(), images["limit"].as_i64(), images["remaining"].as_i64(), images["costSoFar"].as_i64()),
        (Some(4), Some(5), Some(1), Some(12))
    );
    let (status, unknown) = allowance(&app, &key, "video_seconds").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(unknown["error"].as_str().unwrap().contains("ai_token_consumed, image_generated"), "{unknown}");

    let html = app.get("/", Some(&cookie)).await.body;
    assert!(html.contains(r#"data-meter="image_generated" data-used="4""#), "{html}");
    assert!(html.contains("Images: 80 % of your limit reached: 4 of 5 images"), "{html}");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn alerts_set_in_yen_and_in_units_fire_once_when_reached(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("budget@example.com").await;
    let user = app.user_id("budget@example.com").await;
    let key = app.api_key("budget@example.com").await;
    sqlx::query("UPDATE users SET alert_webhook_url = 'https://example.com/hook', alert_webhook_secret = 'whsec_x'")
        .execute(&app.pool)
        .await
        .unwrap();
    let add = |unit: &'static str, amount: &'static str| {
        let (app, cookie) = (&app, cookie.clone());
        async move {
            let form = [("eventType", AI_TOKENS_EVENT), ("unit", unit), ("amount", amount)];
            app.post_form("/api/usage/alert-rule", &form, Some(&cookie)).await
        }
    };
    for (unit, amount) in [("money", "¥2"), ("units", "30,000")] {
        let reply = add(unit, amount).await;
        assert!(reply.status.is_success() || reply.status.is_redirection(), "{}: {}", reply.status, reply.body);
    }
    // Refused whole, with the reason, and nothing stored.
    for (unit, amount, why) in
        [("money", "1.5", "positive number"), ("units", "-3", "positive number"), ("euros", "5", "unit must be")]
    {
        let reply = add(unit, amount).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{unit} {amount}");
        assert!(reply.body.contains(why), "{}", reply.body);
    }
    assert_eq!(app.count("usage_alert_rules").await, 2);

    // ¥1 (20,000 tokens): neither; 30,000 tokens is ¥1.5, which the invoice rounds to ¥2: both, once.
    assert_eq!(record(&app, &key, AI_TOKENS_EVENT, 20_000).await.0, StatusCode::OK);
    assert_eq!(app.count("usage_alert_rule_crossings").await, 0);
    assert_eq!(record(&app, &key, AI_TOKENS_EVENT, 10_000).await.0, StatusCode::OK);
    assert_eq!(record(&app, &key, AI_TOKENS_EVENT, 5_000).await.0, StatusCode::OK);
    let crossings: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT r.unit, c.used, c.cost FROM usage_alert_rule_crossings c JOIN usage_alert_rules r ON r.id = c.rule_id
         ORDER BY r.unit",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(crossings, [("money".to_owned(), 30_000, Some(2)), ("units".to_owned(), 30_000, None)]);
    let hooks: Vec<String> = sqlx::query_scalar("SELECT body FROM alert_webhooks WHERE user_id = $1")
        .bind(user)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(hooks.iter().filter(|b| b.contains("usage.alert_reached")).count(), 2, "{hooks:?}");

    let html = app.get("/", Some(&cookie)).await.body;
    assert_eq!(html.matches(r#"data-testid="alert-rule-notice""#).count(), 2, "{html}");
    assert!(html.contains("AI tokens reached your alert at ¥2: 30,000 tokens, ¥2"), "{html}");
    let japanese = app.get("/", Some(&format!("{cookie}; i18n_pref_locale=ja"))).await.body;
    assert!(japanese.contains("AIトークンが設定したアラート 2円 に達しました"), "{japanese}");

    // Removing: another user's request changes nothing; the owner's removes it.
    let overview = app.post_form("/api/usage/alerts", &[], Some(&cookie)).await.json();
    let id = overview["rules"][0]["id"].as_str().unwrap().to_owned();
    let stranger = app.signup("stranger@example.com").await;
    app.post_form("/api/usage/alert-rule-remove", &[("id", &id)], Some(&stranger)).await;
    assert_eq!(app.count("usage_alert_rules").await, 2);
    app.post_form("/api/usage/alert-rule-remove", &[("id", &id)], Some(&cookie)).await;
    assert_eq!(app.count("usage_alert_rules").await, 1);
}
