//! `POST /api/stripe/webhook` with Stripe's real payloads (tests/fixtures/stripe), signed at test time.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::{app, app_with, config, Reply, TestApp, WEBHOOK_SECRET};

const WEBHOOK: &str = "/api/stripe/webhook";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/stripe/{name}", env!("CARGO_MANIFEST_DIR"))).expect("Stripe fixture")
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

async fn deliver_with(app: &TestApp, payload: &[u8], signature_header: Option<String>) -> Reply {
    let mut request =
        Request::post(WEBHOOK).header(header::HOST, "127.0.0.1:3000").header(header::CONTENT_TYPE, "application/json");
    if let Some(value) = signature_header {
        request = request.header("stripe-signature", value);
    }
    app.send(request.body(Body::from(payload.to_vec())).unwrap()).await
}

/// Delivers `payload` as Stripe does: signed now with the endpoint secret.
async fn deliver(app: &TestApp, payload: &[u8]) -> Reply {
    let t = Utc::now().timestamp();
    deliver_with(
        app,
        payload,
        Some(format!("t={t},v1={}", stripe_double::webhook_signature(WEBHOOK_SECRET, t, payload))),
    )
    .await
}

async fn customer(app: &TestApp, email: &str, customer: &str) -> uuid::Uuid {
    app.signup(email).await;
    let id = app.user_id(email).await;
    sqlx::query("UPDATE users SET stripe_customer_id = $2 WHERE id = $1")
        .bind(id)
        .bind(customer)
        .execute(&app.pool)
        .await
        .unwrap();
    id
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap()
}

type CycleRow = (String, Option<String>, DateTime<Utc>, DateTime<Utc>, i64, String, Option<DateTime<Utc>>, String);

async fn cycles(app: &TestApp) -> Vec<CycleRow> {
    sqlx::query_as(
        "SELECT stripe_invoice_id, stripe_subscription_id, period_start, period_end, amount_paid, currency, paid_at, status
         FROM billing_cycles ORDER BY stripe_invoice_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_basil_invoice_payment_becomes_a_billing_cycle_with_the_lines_period(pool: PgPool) {
    let app = app(pool);
    customer(&app, "ada@example.com", "cus_TESTfixture0001").await;
    let reply = deliver(&app, &fixture("event.invoice.payment_succeeded.basil.json")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["outcome"], "applied");
    let rows = cycles(&app).await;
    assert_eq!(
        rows,
        vec![(
            "in_1TESTfixture000000000001".into(),
            Some("sub_1TESTfixture000000000001".into()),
            at(1_746_800_000),
            at(1_746_886_400),
            190,
            "usd".into(),
            Some(at(1_746_800_000)),
            "paid".into()
        )]
    );
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_pre_basil_invoice_is_read_from_its_older_shape(pool: PgPool) {
    let app = app(pool);
    customer(&app, "ada@example.com", "cus_TESTfixture0001").await;
    let reply = deliver(&app, &fixture("event.invoice.payment_succeeded.acacia-pre-basil.json")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let row = &cycles(&app).await[0];
    assert_eq!((row.1.as_deref(), row.4), (Some("sub_1TESTfixture000000000001"), 95));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn redeliveries_and_the_paid_twin_event_leave_one_row(pool: PgPool) {
    let app = app(pool);
    customer(&app, "ada@example.com", "cus_TESTfixture0001").await;
    let payload = fixture("event.invoice.payment_succeeded.basil.json");
    assert_eq!(deliver(&app, &payload).await.json()["duplicate"], false);
    let again = deliver(&app, &payload).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["duplicate"], true);

    let mut paid = fixture_json("event.invoice.payment_succeeded.basil.json");
    paid["id"] = json!("evt_paid_twin");
    paid["type"] = json!("invoice.paid");
    assert_eq!(deliver(&app, paid.to_string().as_bytes()).await.json()["outcome"], "applied");
    assert_eq!(cycles(&app).await.len(), 1);
    assert_eq!(app.count("stripe_events").await, 2);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn racing_duplicate_deliveries_apply_once(pool: PgPool) {
    let app = app(pool);
    customer(&app, "ada@example.com", "cus_TESTfixture0001").await;
    let payload = fixture("event.invoice.payment_succeeded.basil.json");
    let replies = join_all((0..12).map(|_| deliver(&app, &payload))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK), "every delivery is acknowledged");
    assert_eq!(replies.iter().filter(|r| r.json()["duplicate"] == false).count(), 1);
    assert_eq!(app.count("stripe_events").await, 1);
    assert_eq!(cycles(&app).await.len(), 1);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn bad_signatures_are_400_and_store_nothing(pool: PgPool) {
    let app = app(pool);
    let payload = fixture("event.invoice.payment_succeeded.basil.json");
    let now = Utc::now().timestamp();
    let good = stripe_double::webhook_signature(WEBHOOK_SECRET, now, &payload);
    let cases = [
        None,
        Some("garbage".to_owned()),
        Some(format!("t={now},v0={good}")),
        Some(format!("t={now},v1={}", stripe_double::webhook_signature("whsec_forged", now, &payload))),
        Some(format!("t={},v1={}", now - 301, stripe_double::webhook_signature(WEBHOOK_SECRET, now - 301, &payload))),
        Some(format!("t={},v1={good}", now + 1)),
    ];
    for header in cases {
        let reply = deliver_with(&app, &payload, header.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{header:?}");
        assert!(reply.json()["error"].as_str().unwrap().contains("signature"), "{}", reply.body);
    }
    for body in [
        &b"{not json"[..],
        br#"{"object": "event", "type": "invoice.paid"}"#,
        br#"{"id": "evt_1", "type": "x", "created": 1}"#,
    ] {
        let reply = deliver(&app, body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(app.count("stripe_events").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn unknown_customers_and_unknown_types_are_acknowledged_and_recorded(pool: PgPool) {
    let app = app(pool);
    let reply = deliver(&app, &fixture("event.invoice.payment_succeeded.basil.json")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["outcome"], "unmatched");
    assert!(cycles(&app).await.is_empty());

    let plan = fixture("openapi-fixtures3.event.json");
    assert_eq!(deliver(&app, &plan).await.json()["outcome"], "ignored");
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM stripe_events ORDER BY outcome").fetch_all(&app.pool).await.unwrap();
    assert_eq!(outcomes, ["ignored", "unmatched"]);
}

/// A current (basil+) `customer.subscription.updated`, built from the subscription fixture in the event envelope.
fn subscription_event(id: &str, created: i64, status: &str, period: (i64, i64)) -> Vec<u8> {
    let mut subscription = fixture_json("openapi-fixtures3.subscription.json");
    subscription["customer"] = json!("cus_sub_1");
    subscription["status"] = json!(status);
    subscription["items"]["data"][0]["current_period_start"] = json!(period.0);
    subscription["items"]["data"][0]["current_period_end"] = json!(period.1);
    let mut event = fixture_json("openapi-fixtures3.event.json");
    event["id"] = json!(id);
    event["type"] = json!("customer.subscription.updated");
    event["created"] = json!(created);
    event["data"] = json!({ "object": subscription });
    event.to_string().into_bytes()
}

type SubscriptionRow = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<uuid::Uuid>);

async fn subscription_state(app: &TestApp) -> SubscriptionRow {
    sqlx::query_as("SELECT status, current_period_start, current_period_end, user_id FROM subscriptions")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn subscription_state_follows_event_time_not_arrival_order(pool: PgPool) {
    let app = app(pool);
    let user = customer(&app, "ada@example.com", "cus_sub_1").await;
    let newer = subscription_event("evt_new", 2_000_000_000, "past_due", (1_790_000_000, 1_792_600_000));
    let older = subscription_event("evt_old", 1_999_999_000, "active", (1_787_400_000, 1_790_000_000));
    assert_eq!(deliver(&app, &newer).await.json()["outcome"], "applied");
    assert_eq!(deliver(&app, &older).await.json()["outcome"], "stale");
    assert_eq!(
        subscription_state(&app).await,
        ("past_due".into(), Some(at(1_790_000_000)), Some(at(1_792_600_000)), Some(user))
    );
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn legacy_subscriptions_carry_their_period_at_the_top(pool: PgPool) {
    let app = app(pool);
    // The 2012 fixture's subscription has no id (subscriptions had none then): without one it is ignored…
    let payload = fixture("event.customer.subscription.updated.legacy-2012.stripe-java.json");
    assert_eq!(deliver(&app, &payload).await.json()["outcome"], "ignored");
    // …and with one, its top-level period is read.
    let mut event: Value = serde_json::from_slice(&payload).unwrap();
    event["id"] = json!("evt_legacy_with_id");
    event["data"]["object"]["id"] = json!("sub_legacy");
    let reply = deliver(&app, event.to_string().as_bytes()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["outcome"], "unmatched", "no user has cus_00000000000000");
    let (_, start, _, user) = subscription_state(&app).await;
    assert_eq!(start, Some(at(event["data"]["object"]["current_period_start"].as_i64().unwrap())));
    assert_eq!(user, None);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn checkout_links_the_customer_and_earlier_subscription_events(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let user = app.user_id("ada@example.com").await;
    deliver(&app, &subscription_event("evt_sub", 1_900_000_000, "active", (1_900_000_000, 1_902_600_000))).await;
    app.insert_usage(user, "ai_token_consumed", 5, &Utc::now().to_rfc3339()).await;
    let checkout = json!({
        "id": "evt_checkout", "object": "event", "type": "checkout.session.completed", "created": 1_900_000_001,
        "livemode": false,
        "data": {"object": {"id": "cs_test_1", "object": "checkout.session", "client_reference_id": user.to_string(),
                             "customer": "cus_sub_1", "subscription": "sub_x", "mode": "subscription"}}
    });
    assert_eq!(deliver(&app, checkout.to_string().as_bytes()).await.json()["outcome"], "applied");
    let linked: Option<String> = sqlx::query_scalar("SELECT stripe_customer_id FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(linked.as_deref(), Some("cus_sub_1"));
    assert_eq!(subscription_state(&app).await.3, Some(user));
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM meter_event_outbox WHERE status = 'awaiting_customer'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(waiting, 0, "events that waited for a customer are released");

    // The same customer claimed for another user: acknowledged, unmatched, nothing changed.
    app.signup("bob@example.com").await;
    let bob = app.user_id("bob@example.com").await;
    let mut stolen = checkout.clone();
    stolen["id"] = json!("evt_checkout_bob");
    stolen["data"]["object"]["client_reference_id"] = json!(bob.to_string());
    let reply = deliver(&app, stolen.to_string().as_bytes()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["outcome"], "unmatched");
    assert_eq!(subscription_state(&app).await.3, Some(user));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn deleted_subscriptions_are_canceled_and_stay_canceled(pool: PgPool) {
    let app = app(pool);
    customer(&app, "ada@example.com", "cus_sub_1").await;
    let mut deleted: Value =
        serde_json::from_slice(&subscription_event("evt_del", 1_950_000_000, "active", (1, 2))).unwrap();
    deleted["type"] = json!("customer.subscription.deleted");
    deliver(&app, deleted.to_string().as_bytes()).await;
    let same_second = subscription_event("evt_upd", 1_950_000_000, "active", (1, 2));
    assert_eq!(deliver(&app, &same_second).await.json()["outcome"], "stale");
    assert_eq!(subscription_state(&app).await.0, "canceled");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_thin_meter_error_report_is_stored(pool: PgPool) {
    let app = app(pool);
    let payload = fixture("event.v2.thin-notification.v1.billing.meter.error_report_triggered.stripe-node.json");
    let reply = deliver(&app, &payload).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let meter: Option<String> =
        sqlx::query_scalar("SELECT meter_id FROM meter_error_reports").fetch_one(&app.pool).await.unwrap();
    let event: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(meter.as_deref(), event["related_object"]["id"].as_str());
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn without_a_secret_the_webhook_is_unavailable(pool: PgPool) {
    let mut config = config();
    config.stripe_webhook_secret = None;
    let app = app_with(pool, config);
    let reply = deliver(&app, &fixture("event.invoice.payment_succeeded.basil.json")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.count("stripe_events").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_dashboard_shows_the_billing_history_and_a_failed_payment(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let user = app.user_id("ada@example.com").await;
    sqlx::query("UPDATE users SET stripe_customer_id = 'cus_TESTfixture0001' WHERE id = $1")
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    deliver(&app, &fixture("event.invoice.payment_succeeded.basil.json")).await;
    let mut failed = fixture_json("event.invoice.payment_succeeded.acacia-pre-basil.json");
    failed["id"] = json!("evt_failed");
    failed["type"] = json!("invoice.payment_failed");
    failed["data"]["object"]["id"] = json!("in_failed");
    failed["data"]["object"]["currency"] = json!("jpy");
    failed["data"]["object"]["lines"]["data"][0]["period"] = json!({"start": 1_749_500_000, "end": 1_752_100_000});
    deliver(&app, failed.to_string().as_bytes()).await;

    let overview = app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json();
    let cycles = overview["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 2);
    assert_eq!((cycles[0]["status"].as_str(), cycles[0]["amountPaid"].as_i64()), (Some("payment_failed"), Some(0)));
    // 1746800000 is 2025-05-09 23:13 in Tokyo; the period ends (exclusive) at 2025-05-10 23:13.
    assert_eq!(
        (cycles[1]["firstDay"].as_str(), cycles[1]["lastDay"].as_str()),
        (Some("2025-05-09"), Some("2025-05-10"))
    );

    let html = app.get("/", Some(&cookie)).await.body;
    assert!(html.contains("$1.90"), "paid amount in its currency");
    assert!(html.contains("payment failed"));
}

/// A `customer.subscription.updated` for `cus_period` with the given current period.
fn period_event(id: &str, created: i64, period: (DateTime<Utc>, DateTime<Utc>)) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(&subscription_event(
        id,
        created,
        "active",
        (period.0.timestamp(), period.1.timestamp()),
    ))
    .unwrap();
    event["data"]["object"]["customer"] = json!("cus_period");
    event.to_string().into_bytes()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_meter_follows_the_subscription_period_and_its_rollover(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let user = app.user_id("ada@example.com").await;
    sqlx::query("UPDATE users SET stripe_customer_id = 'cus_period' WHERE id = $1")
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    let now = Utc::now();
    let day = chrono::Duration::days(1);
    let (first_start, second_start) = (now - day * 40, now - day * 10);

    // Usage before Stripe told us about any period: counted in calendar months for now.
    app.insert_usage(user, "ai_token_consumed", 7, &(first_start - day).to_rfc3339()).await;
    app.insert_usage(user, "ai_token_consumed", 100, &(second_start - day).to_rfc3339()).await;
    app.insert_usage(user, "ai_token_consumed", 20, &(second_start + chrono::Duration::hours(1)).to_rfc3339()).await;

    deliver(&app, &period_event("evt_p1", 1_900_000_000, (first_start, second_start))).await;
    // The current period is not the subscription's first one yet: the calendar month still applies today.
    let summary = app.post_form("/api/usage/summary", &[], Some(&cookie)).await.json();
    assert_ne!(summary["periodStart"].as_str().unwrap(), second_start.to_rfc3339());
    let calendar = crate::support::calendar_month(&app.pool, Utc::now(), &app.state.clock.timezone).await;
    let start: DateTime<Utc> = summary["periodStart"].as_str().unwrap().parse().unwrap();
    assert_eq!((start, summary["periodLastDay"].as_str().unwrap()), (calendar.start, calendar.last_day.as_str()));

    // Renewal: the new period is counted from the events already recorded in it…
    deliver(&app, &period_event("evt_p2", 1_900_000_100, (second_start, now + day * 20))).await;
    let summary = app.post_form("/api/usage/summary", &[], Some(&cookie)).await.json();
    let start: DateTime<Utc> = summary["periodStart"].as_str().unwrap().parse().unwrap();
    assert_eq!(start.timestamp(), second_start.timestamp());
    assert_eq!(summary["used"], 20);
    // The meter's one-statement read names the same period, days included, as the period lookup on its own.
    let expected = tally::usage::period::for_user(&app.pool, &app.state.clock, user, Utc::now()).await.unwrap();
    assert_eq!(summary["periodFirstDay"], expected.first_day.as_str());
    assert_eq!(summary["periodLastDay"], expected.last_day.as_str());
    assert_eq!(summary["periodEnd"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap(), expected.end);

    // …and new usage goes to it.
    let key = app.api_key("ada@example.com").await;
    let reply = app
        .post_json(
            "/api/usage/record",
            r#"{"eventType": "ai_token_consumed", "quantity": 5}"#,
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.post_form("/api/usage/summary", &[], Some(&cookie)).await.json()["used"], 25);
    let period = tally::usage::period::for_user(&app.pool, &app.state.clock, user, Utc::now()).await.unwrap();
    let recount = crate::support::recount(&app.pool, user, "ai_token_consumed", &period).await;
    assert_eq!(recount, 25);

    // The first period's counter was rebuilt too (the 100 tokens of its last day).
    let first: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(quantity), 0)::bigint FROM usage_period_totals
         WHERE user_id = $1 AND period_kind = 'subscription' AND period_start = $2",
    )
    .bind(user)
    .bind(DateTime::from_timestamp(first_start.timestamp(), 0).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(first, 100);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_hard_limit_counts_the_subscription_period(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let user = app.user_id("ada@example.com").await;
    crate::support::set_token_limit(&app.pool, Some(user), Some(100)).await;
    sqlx::query("UPDATE users SET stripe_customer_id = 'cus_period' WHERE id = $1")
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    let now = Utc::now();
    let start = now - chrono::Duration::hours(2);
    app.insert_usage(user, "ai_token_consumed", 90, &(start - chrono::Duration::minutes(1)).to_rfc3339()).await;
    deliver(&app, &period_event("evt_limit", 1_900_000_000, (start, now + chrono::Duration::days(30)))).await;

    let auth = format!("Bearer {}", app.api_key("ada@example.com").await);
    let body = r#"{"eventType": "ai_token_consumed", "quantity": 100}"#;
    assert_eq!(
        app.post_json("/api/usage/record", body, &[("authorization", &auth)]).await.status,
        StatusCode::OK,
        "the 90 were last period"
    );
    let reply = app
        .post_json(
            "/api/usage/record",
            r#"{"eventType": "ai_token_consumed", "quantity": 1}"#,
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
}

/// The dashboard reads everything in one statement; each card later re-reads its part through its own server
/// function. For a user with usage, crossed alerts, a live subscription, invoices and an API key, the one read must
/// say exactly what the cards' own reads say, or the page would change on its first refresh.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_dashboards_one_read_says_what_each_cards_own_read_says(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let user = app.user_id("ada@example.com").await;
    sqlx::query("UPDATE users SET stripe_customer_id = 'cus_sub_1', alert_webhook_url = 'https://example.com/hook', alert_webhook_secret = 'whsec_x' WHERE id = $1")
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    deliver(&app, &subscription_event("evt_live", now - 60, "active", (now - 3_600, now + 86_400 * 20))).await;
    let mut invoice = fixture_json("event.invoice.payment_succeeded.basil.json");
    invoice["data"]["object"]["customer"] = json!("cus_sub_1");
    deliver(&app, invoice.to_string().as_bytes()).await;
    let key = app.api_key("ada@example.com").await;
    let auth = format!("Bearer {key}");
    for quantity in [30_000, 15_500] {
        let body = json!({ "eventType": "ai_token_consumed", "quantity": quantity }).to_string();
        let reply = app.post_json("/api/usage/record", &body, &[("authorization", auth.as_str())]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    app.insert_usage(user, "ai_token_consumed", 7, "2020-01-15T00:00:00Z").await;

    let page = app.post_form("/api/dashboard", &[], Some(&cookie)).await.json();
    assert_eq!(page["user"]["email"], "ada@example.com");
    assert_eq!(page["meters"][0]["used"], 45_500, "{page}");
    assert_eq!(page["meters"].as_array().map(Vec::len), Some(1), "no image usage, no image meter: {page}");
    assert_eq!(page["alerts"]["alerts"].as_array().map(Vec::len), Some(2), "80 % and 90 % crossed: {page}");
    assert_eq!(page["billing"]["subscription"]["status"], "active");
    assert_eq!(page["billing"]["cycles"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["apiKeys"].as_array().map(Vec::len), Some(1));
    assert!(page["history"]["periods"].as_array().is_some_and(|p| p.len() >= 2), "{page}");
    let summary = app.post_form("/api/usage/summary", &[], Some(&cookie)).await.json();
    assert_eq!(page["meters"][0], summary, "the primary meter: the page's read and /api/usage/summary disagree");
    for (part, path) in [
        ("meters", "/api/usage/meters"),
        ("alerts", "/api/usage/alerts"),
        ("history", "/api/usage/history"),
        ("billing", "/api/billing/overview"),
        ("apiKeys", "/api/keys/list"),
    ] {
        let own = app.post_form(path, &[], Some(&cookie)).await.json();
        assert_eq!(page[part], own, "{part}: the page's read and {path} disagree");
    }
}

/// `price.updated` refreshes a meter's copy of its Stripe price (keeping the tiers Stripe's payloads leave out);
/// an event older than the copy, or about another price, changes nothing.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn price_updated_refreshes_the_meters_price_and_older_events_change_nothing(pool: PgPool) {
    crate::support::save_price(&pool, "ai_token_consumed", "price_tokens", "0.00005").await;
    let app = app(pool);
    let event = |id: &str, created: i64, price: &str, nickname: &str| {
        json!({
            "id": id, "object": "event", "type": "price.updated", "created": created, "livemode": false,
            "api_version": "2025-03-31.basil",
            "data": { "object": {
                "id": price, "object": "price", "currency": "jpy", "billing_scheme": "per_unit",
                "unit_amount_decimal": "0.00005", "nickname": nickname, "active": true
            } }
        })
        .to_string()
    };
    let stored = || async {
        sqlx::query_scalar::<_, Value>("SELECT price FROM meter_prices WHERE event_type = 'ai_token_consumed'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    let now = Utc::now().timestamp();
    assert_eq!(
        deliver(&app, event("evt_new", now + 5, "price_tokens", "AI tokens (2027)").as_bytes()).await.status,
        StatusCode::OK
    );
    let price = stored().await;
    assert_eq!(price["nickname"], "AI tokens (2027)");
    assert_eq!(price["recurring"]["meter"], "mtr_test", "fields the event leaves out are kept");
    deliver(&app, event("evt_old", now - 3_600, "price_tokens", "stale").as_bytes()).await;
    deliver(&app, event("evt_other", now + 10, "price_other", "other").as_bytes()).await;
    assert_eq!(stored().await["nickname"], "AI tokens (2027)", "an older event and another price change nothing");
}
