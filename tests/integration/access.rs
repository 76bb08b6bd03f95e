//! Access control: one account can never read or record for another, whatever it puts in a request, and a revoked
//! key stops working at once on every instance.

use axum::http::StatusCode;
use sqlx::PgPool;
use tally::usage::AI_TOKENS_EVENT;

use crate::support::{app, TestApp};

async fn total_of(app: &TestApp, user: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM usage_events WHERE user_id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_key_records_for_its_owner_whatever_the_body_names(pool: PgPool) {
    let app = app(pool);
    app.signup("a@example.com").await;
    app.signup("b@example.com").await;
    let (a, b) = (app.user_id("a@example.com").await, app.user_id("b@example.com").await);
    let key_a = format!("Bearer {}", app.api_key("a@example.com").await);

    // Fields that name another account are not arguments of the function; they change nothing.
    for body in [
        format!(r#"{{"eventType":"ai_token_consumed","quantity":7,"userId":"{b}"}}"#),
        format!(r#"{{"eventType":"ai_token_consumed","quantity":7,"user_id":"{b}","metadata":{{"userId":"{b}"}}}}"#),
    ] {
        let reply = app.post_json("/api/usage/record", &body, &[("authorization", &key_a)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let batch =
        format!(r#"{{"events":[{{"eventType":"ai_token_consumed","quantity":3,"userId":"{b}"}}],"userId":"{b}"}}"#);
    let reply = app.post_json("/api/usage/batch", &batch, &[("authorization", &key_a)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(total_of(&app, a).await, 17);
    assert_eq!(total_of(&app, b).await, 0, "nothing was recorded for B");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn nobody_revokes_or_lists_another_accounts_keys(pool: PgPool) {
    let app = app(pool);
    let session_a = app.signup("a@example.com").await;
    app.signup("b@example.com").await;
    let b = app.user_id("b@example.com").await;
    let (info_b, secret_b) = tally::auth::api_key::create(&app.pool, b, "b's service").await.unwrap();

    let reply = app.post_form("/api/keys/revoke", &[("id", &info_b.id.to_string())], Some(&session_a)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "another account's key is not found: {}", reply.body);
    let list = app.post_form("/api/keys/list", &[], Some(&session_a)).await;
    assert_eq!(list.json(), serde_json::json!([]), "A sees none of B's keys");
    assert!(!list.body.contains(&info_b.display_prefix));

    let record = app
        .post_json(
            "/api/usage/record",
            r#"{"eventType":"ai_token_consumed","quantity":1}"#,
            &[("authorization", &format!("Bearer {secret_b}"))],
        )
        .await;
    assert_eq!(record.status, StatusCode::OK, "B's key still works: {}", record.body);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_revoked_key_stops_at_once_on_every_instance(pool: PgPool) {
    let first = app(pool.clone());
    let second = app(pool);
    let session = first.signup("a@example.com").await;
    let a = first.user_id("a@example.com").await;
    let (info, secret) = tally::auth::api_key::create(&first.pool, a, "svc").await.unwrap();
    let auth = format!("Bearer {secret}");
    let body = r#"{"eventType":"ai_token_consumed","quantity":1}"#;
    for instance in [&first, &second] {
        assert_eq!(
            instance.post_json("/api/usage/record", body, &[("authorization", &auth)]).await.status,
            StatusCode::OK
        );
    }

    let reply = first.post_form("/api/keys/revoke", &[("id", &info.id.to_string())], Some(&session)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    for instance in [&second, &first] {
        let reply = instance.post_json("/api/usage/record", body, &[("authorization", &auth)]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
        let ai = instance.post_json("/api/ai/generate", r#"{"prompt":"hi"}"#, &[("authorization", &auth)]).await;
        assert_eq!(ai.status, StatusCode::UNAUTHORIZED, "{}", ai.body);
    }
    assert_eq!(total_of(&first, a).await, 2);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn history_and_export_offer_only_the_callers_own_periods(pool: PgPool) {
    let app = app(pool);
    let session_a = app.signup("a@example.com").await;
    app.signup("b@example.com").await;
    let (a, b) = (app.user_id("a@example.com").await, app.user_id("b@example.com").await);
    app.insert_usage(a, AI_TOKENS_EVENT, 5, &chrono::Utc::now().to_rfc3339()).await;
    // B has usage in a month A never used.
    app.insert_usage(b, AI_TOKENS_EVENT, 123_456, "2025-01-15T12:00:00+09:00").await;
    let b_period = "2025-01-01T00:00:00+09:00";

    let history = app.post_form("/api/usage/history", &[("period", b_period)], Some(&session_a)).await;
    assert_eq!(history.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", history.body);
    let export =
        app.get(&format!("/api/usage/export.csv?period={}", b_period.replace('+', "%2B")), Some(&session_a)).await;
    assert_eq!(export.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", export.body);
    assert!(!export.body.contains("123456"));

    let own = app.post_form("/api/usage/history", &[], Some(&session_a)).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    assert!(!own.body.contains("2025-01-01"), "B's period is not among A's choices: {}", own.body);
    let own_csv = app.get("/api/usage/export.csv", Some(&session_a)).await;
    assert_eq!(own_csv.body.lines().count(), 2, "header and A's one event: {}", own_csv.body);
}
