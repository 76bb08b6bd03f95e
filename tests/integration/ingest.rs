//! Recording usage: `/api/usage/record` and `/api/usage/batch`, with API keys and sessions, against real
//! PostgreSQL. Every refusal is checked to have stored nothing.

use axum::http::StatusCode;
use futures::future::join_all;
use serde_json::json;
use sqlx::PgPool;
use tally::usage::{totals, AI_TOKENS_EVENT};
use uuid::Uuid;

use crate::support::{app, TestApp};

const RECORD: &str = "/api/usage/record";
const BATCH: &str = "/api/usage/batch";

/// A signed-up user with an API key: (user id, `Authorization` header value).
async fn customer(app: &TestApp, email: &str) -> (Uuid, String) {
    app.signup(email).await;
    let key = app.api_key(email).await;
    (app.user_id(email).await, format!("Bearer {key}"))
}

async fn stored_events(app: &TestApp) -> i64 {
    app.count("usage_events").await
}

async fn period_total(app: &TestApp, user: Uuid) -> (i64, i64) {
    let period = crate::support::calendar_month(&app.pool, chrono::Utc::now(), "Asia/Tokyo").await;
    let summary = totals::summary_at(
        &app.pool,
        &app.state.clock,
        &app.state.config.meters,
        user,
        AI_TOKENS_EVENT,
        chrono::Utc::now(),
    )
    .await;
    let summary = summary.unwrap().unwrap();
    assert_eq!(summary.period_start, period.start, "the counters read are the recounted period's");
    let counters = summary.used;
    let recount = crate::support::recount(&app.pool, user, AI_TOKENS_EVENT, &period).await;
    (counters, recount)
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn an_api_key_records_an_event_with_its_outbox_row_and_total(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    let body = json!({"eventType": "ai_token_consumed", "quantity": 1234, "metadata": {"model": "gpt-4o-mini"}});
    let reply = app.post_json(RECORD, &body.to_string(), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let receipt = reply.json();
    assert_eq!(receipt["ok"], true);
    assert_eq!(receipt["duplicate"], false);
    let id: Uuid = receipt["id"].as_str().unwrap().parse().unwrap();

    let (quantity, metadata): (i64, serde_json::Value) =
        sqlx::query_as("SELECT quantity, metadata FROM usage_events WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((quantity, metadata), (1234, json!({"model": "gpt-4o-mini"})));
    let status: String = sqlx::query_scalar("SELECT status FROM meter_event_outbox WHERE usage_event_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "awaiting_customer", "no Stripe customer yet: the row waits, visibly");
    assert_eq!(period_total(&app, user).await, (1234, 1234));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_signed_in_browser_records_with_its_session(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let body = json!({"eventType": "ai_token_consumed", "quantity": 7}).to_string();
    let reply = app.post_json(RECORD, &body, &[("cookie", &cookie)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(period_total(&app, app.user_id("ada@example.com").await).await, (7, 7));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn missing_wrong_and_revoked_credentials_are_401_and_store_nothing(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    let well_formed_unknown = format!("Bearer {}", tally::auth::api_key::generate().unwrap().secret);
    let body = json!({"eventType": "ai_token_consumed", "quantity": 5}).to_string();

    let revoked = app.api_key("svc@example.com").await;
    let prefix = &revoked[..13];
    tally::auth::api_key::revoke_by_prefix(&app.pool, prefix).await.unwrap();
    let revoked = format!("Bearer {revoked}");

    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("authorization", "Bearer tly_live_short")],
        vec![("authorization", well_formed_unknown.as_str())],
        vec![("authorization", revoked.as_str())],
        vec![("authorization", "Basic c3ZjOnNlY3JldA==")],
        vec![("authorization", auth.trim_start_matches("Bearer "))],
    ];
    for headers in cases {
        let reply = app.post_json(RECORD, &body, &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}: {}", reply.body);
        assert_eq!(reply.json()["code"], "unauthorized");
        // A bad credential is reported before a bad body.
        let invalid = r#"{"eventType": "ai_token_consumed", "quantity": -1}"#;
        assert_eq!(app.post_json(RECORD, invalid, &headers).await.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        let batch = r#"{"events": [{"eventType": "nope", "quantity": 1}]}"#;
        assert_eq!(app.post_json(BATCH, batch, &headers).await.status, StatusCode::UNAUTHORIZED, "{headers:?}");
    }
    assert_eq!(stored_events(&app).await, 0);
    assert_eq!(period_total(&app, user).await, (0, 0));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn bad_input_gets_the_right_status_and_stores_nothing(pool: PgPool) {
    let app = app(pool);
    let (_, auth) = customer(&app, "svc@example.com").await;
    let auth = [("authorization", auth.as_str())];
    let big_metadata = json!({"eventType": "ai_token_consumed", "quantity": 1, "metadata": {"x": "y".repeat(5000)}});
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, ""),
        (r#"{"eventType": "ai_token_consumed"}"#.into(), StatusCode::BAD_REQUEST, "quantity"),
        (r#"{"eventType": "ai_token_consumed", "quantity": "12"}"#.into(), StatusCode::BAD_REQUEST, ""),
        (r#"{"eventType": 5, "quantity": 12}"#.into(), StatusCode::BAD_REQUEST, ""),
        (r#"[1, 2]"#.into(), StatusCode::BAD_REQUEST, ""),
        (r#"{"eventType": "ai_token_consumed", "quantity": 0}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "positive"),
        (r#"{"eventType": "ai_token_consumed", "quantity": -5}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "positive"),
        (r#"{"eventType": "ai_token_consumed", "quantity": 1.5}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "whole"),
        (r#"{"eventType": "ai_token_consumed", "quantity": 1e13}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "whole"),
        (
            r#"{"eventType": "ai_token_consumed", "quantity": 9999999999999}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most",
        ),
        (r#"{"eventType": "video_seconds", "quantity": 3}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "unknown event"),
        (
            r#"{"eventType": "ai_token_consumed", "quantity": 3, "metadata": [1]}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "object",
        ),
        (big_metadata.to_string(), StatusCode::UNPROCESSABLE_ENTITY, "at most 4096 bytes"),
    ];
    for (body, status, message) in cases {
        let reply = app.post_json(RECORD, &body, &auth).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert!(reply.json()["error"].as_str().unwrap().contains(message), "{body}: {}", reply.body);
        crate::support::assert_no_internals(&reply.body);
    }
    let long_key = "k".repeat(300);
    let headers = [auth[0], ("idempotency-key", long_key.as_str())];
    let reply = app.post_json(RECORD, r#"{"eventType": "ai_token_consumed", "quantity": 3}"#, &headers).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);

    let huge = format!(r#"{{"eventType": "ai_token_consumed", "quantity": 3, "pad": "{}"}}"#, "x".repeat(2 << 20));
    assert_eq!(app.post_json(RECORD, &huge, &auth).await.status, StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(stored_events(&app).await, 0);
    assert_eq!(app.count("meter_event_outbox").await, 0);
    assert_eq!(app.count("usage_period_totals").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_repeated_idempotency_key_returns_the_first_event_and_counts_once(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    let headers = [("authorization", auth.as_str()), ("idempotency-key", "req-42")];
    let body = json!({"eventType": "ai_token_consumed", "quantity": 100}).to_string();
    let first = app.post_json(RECORD, &body, &headers).await.json();
    let second = app.post_json(RECORD, &body, &headers).await.json();
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["id"], second["id"]);
    assert_eq!(stored_events(&app).await, 1);
    assert_eq!(period_total(&app, user).await, (100, 100));

    // Keys are per user: another customer's identical key is a different event.
    let (other, other_auth) = customer(&app, "other@example.com").await;
    let reply = app.post_json(RECORD, &body, &[("authorization", &other_auth), ("idempotency-key", "req-42")]).await;
    assert_eq!(reply.json()["duplicate"], false);
    assert_eq!(period_total(&app, other).await, (100, 100));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn racing_requests_with_one_idempotency_key_record_once(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    let headers = [("authorization", auth.as_str()), ("idempotency-key", "race-1")];
    let body = json!({"eventType": "ai_token_consumed", "quantity": 250}).to_string();
    let replies = join_all((0..40).map(|_| app.post_json(RECORD, &body, &headers))).await;
    let receipts: Vec<_> = replies.iter().map(|r| (r.status, r.json())).collect();
    assert!(receipts.iter().all(|(status, _)| *status == StatusCode::OK), "{receipts:?}");
    assert_eq!(receipts.iter().filter(|(_, r)| r["duplicate"] == false).count(), 1);
    assert!(receipts.iter().all(|(_, r)| r["id"] == receipts[0].1["id"]));
    assert_eq!(stored_events(&app).await, 1);
    assert_eq!(period_total(&app, user).await, (250, 250));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_hard_limit_holds_under_concurrent_requests(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    crate::support::set_token_limit(&app.pool, Some(user), Some(1000)).await;
    let body = json!({"eventType": "ai_token_consumed", "quantity": 100}).to_string();
    let headers = [("authorization", auth.as_str())];
    let replies = join_all((0..50).map(|_| app.post_json(RECORD, &body, &headers))).await;
    let ok = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert_eq!((ok, refused.len()), (10, 40), "exactly the limit's worth is let through");
    assert_eq!(refused[0].json()["code"], "limit_exceeded");
    assert_eq!(refused[0].json()["remaining"], 0);
    assert_eq!(period_total(&app, user).await, (1000, 1000));
    assert_eq!(stored_events(&app).await, 10);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_request_past_the_limit_is_refused_with_the_allowance_left(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    crate::support::set_token_limit(&app.pool, Some(user), Some(1000)).await;
    let auth = [("authorization", auth.as_str())];
    let reply = app.post_json(RECORD, r#"{"eventType": "ai_token_consumed", "quantity": 800}"#, &auth).await;
    let allowance = &reply.json()["allowance"];
    assert_eq!(allowance["used"], 800);
    assert_eq!(allowance["remaining"], 200);
    assert_eq!(allowance["warning"], true, "80 % is the default warning share");

    let reply = app.post_json(RECORD, r#"{"eventType": "ai_token_consumed", "quantity": 201}"#, &auth).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["remaining"], 200);
    assert_eq!(reply.json()["limit"], 1000);
    assert_eq!(period_total(&app, user).await, (800, 800));

    // Other event types are not limited.
    let reply = app.post_json(RECORD, r#"{"eventType": "image_generated", "quantity": 5000}"#, &auth).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_batch_is_recorded_whole_with_a_result_per_event(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    let auth = [("authorization", auth.as_str())];
    let first = app
        .post_json(
            RECORD,
            r#"{"eventType": "ai_token_consumed", "quantity": 1}"#,
            &[auth[0], ("idempotency-key", "k0")],
        )
        .await
        .json();
    let batch = json!({"events": [
        {"eventType": "ai_token_consumed", "quantity": 10, "idempotencyKey": "k1"},
        {"eventType": "ai_token_consumed", "quantity": 20, "metadata": {"route": "chat"}},
        {"eventType": "ai_token_consumed", "quantity": 30, "idempotencyKey": "k1"},
        {"eventType": "ai_token_consumed", "quantity": 40, "idempotencyKey": "k0"},
    ]});
    let reply = app.post_json(BATCH, &batch.to_string(), &auth).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let results = reply.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 4);
    assert_eq!(
        results.iter().map(|r| r["duplicate"].as_bool().unwrap()).collect::<Vec<_>>(),
        [false, false, true, true]
    );
    assert_eq!(results[2]["id"], results[0]["id"], "a key repeated inside the batch is its first event");
    assert_eq!(results[3]["id"], first["id"], "a key recorded before is that event");
    assert_eq!(period_total(&app, user).await, (31, 31));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_batch_with_one_bad_event_stores_nothing_and_names_it(pool: PgPool) {
    let app = app(pool);
    let (_, auth) = customer(&app, "svc@example.com").await;
    let auth = [("authorization", auth.as_str())];
    let batch = json!({"events": [
        {"eventType": "ai_token_consumed", "quantity": 10},
        {"eventType": "ai_token_consumed", "quantity": -1},
        {"eventType": "nope", "quantity": 1},
    ]});
    let reply = app.post_json(BATCH, &batch.to_string(), &auth).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    let problems = reply.json()["events"].as_array().unwrap().clone();
    assert_eq!(problems.iter().map(|p| p["index"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);

    let too_many = json!({"events": vec![json!({"eventType": "ai_token_consumed", "quantity": 1}); 1001]});
    assert_eq!(app.post_json(BATCH, &too_many.to_string(), &auth).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.post_json(BATCH, r#"{"events": []}"#, &auth).await.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.post_json(BATCH, r#"{"events": {}}"#, &auth).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(stored_events(&app).await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_batch_past_the_limit_is_refused_whole(pool: PgPool) {
    let app = app(pool);
    let (user, auth) = customer(&app, "svc@example.com").await;
    crate::support::set_token_limit(&app.pool, Some(user), Some(100)).await;
    let batch = json!({"events": vec![json!({"eventType": "ai_token_consumed", "quantity": 30}); 4]});
    let reply = app.post_json(BATCH, &batch.to_string(), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["remaining"], 100);
    assert_eq!(stored_events(&app).await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn counters_equal_the_events_after_a_concurrent_mix(pool: PgPool) {
    let app = app(pool);
    let mut customers = Vec::new();
    for i in 0..4 {
        customers.push(customer(&app, &format!("svc{i}@example.com")).await);
    }
    let requests = (0..200).map(|i| {
        let (_, auth) = &customers[i % customers.len()];
        let body = if i % 10 == 0 {
            json!({"events": [{"eventType": "ai_token_consumed", "quantity": i + 1}, {"eventType": "ai_token_consumed", "quantity": 3}]})
        } else {
            json!({"eventType": "ai_token_consumed", "quantity": i + 1})
        };
        let path = if i % 10 == 0 { BATCH } else { RECORD };
        let auth = auth.clone();
        let app = &app;
        async move { app.post_json(path, &body.to_string(), &[("authorization", &auth)]).await.status }
    });
    let statuses = join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let mut grand_total = 0;
    for (user, _) in &customers {
        let (counters, recount) = period_total(&app, *user).await;
        assert_eq!(counters, recount);
        grand_total += counters;
    }
    let expected: i64 = (0..200).map(|i| i + 1 + if i % 10 == 0 { 3 } else { 0 }).sum();
    assert_eq!(grand_total, expected);
    assert_eq!(app.count("meter_event_outbox").await, stored_events(&app).await);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn api_keys_are_created_listed_used_and_revoked_from_the_dashboard(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let created = app.post_form("/api/keys/create", &[("name", "CI pipeline")], Some(&cookie)).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let created = created.json();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["info"]["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tly_live_"));

    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys").fetch_one(&app.pool).await.unwrap();
    assert_eq!(stored.len(), 32, "only a SHA-256 hash is stored");
    let listed = app.post_form("/api/keys/list", &[], Some(&cookie)).await;
    assert!(!listed.body.contains(&secret), "lists never show the secret");
    assert_eq!(listed.json()[0]["name"], "CI pipeline");
    assert_eq!(listed.json()[0]["lastUsedAt"], serde_json::Value::Null);

    let auth = format!("Bearer {secret}");
    let body = r#"{"eventType": "ai_token_consumed", "quantity": 3}"#;
    assert_eq!(app.post_json(RECORD, body, &[("authorization", &auth)]).await.status, StatusCode::OK);
    let listed = app.post_form("/api/keys/list", &[], Some(&cookie)).await.json();
    assert!(listed[0]["lastUsedAt"].is_string(), "use is recorded: {listed}");

    // Another user can neither see nor revoke the key.
    let mallory = app.signup("mallory@example.com").await;
    assert_eq!(app.post_form("/api/keys/list", &[], Some(&mallory)).await.json(), json!([]));
    let reply = app.post_form("/api/keys/revoke", &[("id", &key_id)], Some(&mallory)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(app.post_json(RECORD, body, &[("authorization", &auth)]).await.status, StatusCode::OK);

    let reply = app.post_form("/api/keys/revoke", &[("id", &key_id)], Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.post_json(RECORD, body, &[("authorization", &auth)]).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stored_events(&app).await, 2);
}
