//! The dashboard's back end: the live usage stream, per-day history, alerts (once per threshold, signed webhooks)
//! and the CSV export, each with its access control.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use sqlx::PgPool;
use tally::usage::AI_TOKENS_EVENT;

use crate::support::{app, TestApp};

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// Opens the live stream with `cookie`; returns the status and, for a 200, a reader of its events.
async fn open_stream(app: &TestApp, cookie: Option<&str>) -> (StatusCode, Option<axum::body::BodyDataStream>) {
    open_download(app, tally::usage::live::PATH, cookie).await
}

/// GETs `path` with `cookie` without reading the body; returns the status and, for a 200, the body as it streams.
async fn open_download(
    app: &TestApp,
    path: &str,
    cookie: Option<&str>,
) -> (StatusCode, Option<axum::body::BodyDataStream>) {
    let mut request = Request::get(path).header(header::HOST, "127.0.0.1:3000");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = tower::ServiceExt::oneshot(app.router.clone(), request.body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    (status, (status == StatusCode::OK).then(|| response.into_body().into_data_stream()))
}

/// The `used` of the next `usage` event on the stream, waiting at most `within`.
/// The token meter's total in the stream's next message.
async fn next_used(stream: &mut axum::body::BodyDataStream, within: Duration) -> Option<i64> {
    let meters = next_meters(stream, within).await?;
    meters.iter().find(|m| m["eventType"] == AI_TOKENS_EVENT)?["used"].as_i64()
}

/// The shown meters (`eventType` → used) in the stream's next message.
async fn next_meters(stream: &mut axum::body::BodyDataStream, within: Duration) -> Option<Vec<serde_json::Value>> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut text = String::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.ok()??.ok()?;
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if event.contains("event: usage") {
                let data = event.lines().find_map(|l| l.strip_prefix("data: "))?;
                return serde_json::from_str::<serde_json::Value>(data).ok()?.as_array().cloned();
            }
        }
    }
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_live_stream_sends_the_total_then_every_change_within_a_second(pool: PgPool) {
    let app = app(pool.clone());
    let cookie = app.signup("live@example.com").await;
    let user = app.user_id("live@example.com").await;
    app.insert_usage(user, AI_TOKENS_EVENT, 40, &now()).await;

    let (status, stream) = open_stream(&app, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let mut first = stream.unwrap();
    let (_, second) = open_stream(&app, Some(&cookie)).await;
    let mut second = second.unwrap();
    assert_eq!(next_used(&mut first, Duration::from_secs(2)).await, Some(40), "the current total first");
    assert_eq!(next_used(&mut second, Duration::from_secs(2)).await, Some(40));

    // Recorded through another app instance on the same database: the NOTIFY crosses instances.
    let other = crate::support::app(pool.clone());
    let started = std::time::Instant::now();
    other.insert_usage(user, AI_TOKENS_EVENT, 2, &now()).await;
    assert_eq!(next_used(&mut first, Duration::from_secs(1)).await, Some(42), "both open streams see it");
    assert_eq!(next_used(&mut second, Duration::from_secs(1)).await, Some(42));
    assert!(started.elapsed() < Duration::from_secs(1));

    // Someone else's usage is not announced on this user's stream.
    let stranger_cookie = app.signup("stranger@example.com").await;
    let stranger = app.user_id("stranger@example.com").await;
    app.insert_usage(stranger, AI_TOKENS_EVENT, 999, &now()).await;
    assert_eq!(next_used(&mut first, Duration::from_millis(300)).await, None);
    let (_, theirs) = open_stream(&app, Some(&stranger_cookie)).await;
    assert_eq!(next_used(&mut theirs.unwrap(), Duration::from_secs(2)).await, Some(999));

    // A second meter joins the stream once the period has usage of it, with its own total and cost.
    app.insert_usage(user, "image_generated", 3, &now()).await;
    let meters = next_meters(&mut first, Duration::from_secs(1)).await.expect("a message");
    let kinds: Vec<&str> = meters.iter().filter_map(|m| m["eventType"].as_str()).collect();
    assert_eq!(kinds, [AI_TOKENS_EVENT, "image_generated"]);
    assert_eq!((meters[1]["used"].as_i64(), meters[1]["cost"]["soFar"].as_i64()), (Some(3), Some(9)), "¥3 an image");
}

/// The process id of this database's `LISTEN` connection other than `except`, once there is one.
async fn listener_pid(pool: &PgPool, except: Option<i32>) -> i32 {
    for _ in 0..100 {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid IS DISTINCT FROM $1",
        )
        .bind(except)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no LISTEN connection appeared");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn open_streams_survive_the_loss_of_the_listen_connection_and_miss_nothing(pool: PgPool) {
    let app = app(pool.clone());
    let cookie = app.signup("reconnect@example.com").await;
    let user = app.user_id("reconnect@example.com").await;
    let (_, stream) = open_stream(&app, Some(&cookie)).await;
    let mut stream = stream.unwrap();
    assert_eq!(next_used(&mut stream, Duration::from_secs(2)).await, Some(0));

    // PostgreSQL drops the instance's LISTEN connection (a restart, a failover, an idle timeout); usage is recorded
    // before the instance could have listened again, so its NOTIFY reaches nobody.
    let killed = listener_pid(&pool, None).await;
    let terminated: bool =
        sqlx::query_scalar("SELECT pg_terminate_backend($1)").bind(killed).fetch_one(&pool).await.unwrap();
    assert!(terminated);
    app.insert_usage(user, AI_TOKENS_EVENT, 7, &now()).await;
    assert_eq!(
        next_used(&mut stream, Duration::from_secs(3)).await,
        Some(7),
        "the stream re-reads once the instance listens again"
    );

    // And it listens again: the next change arrives as promptly as ever.
    listener_pid(&pool, Some(killed)).await;
    let started = std::time::Instant::now();
    app.insert_usage(user, AI_TOKENS_EVENT, 5, &now()).await;
    assert_eq!(next_used(&mut stream, Duration::from_secs(1)).await, Some(12));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_stream_history_and_export_need_a_session(pool: PgPool) {
    let app = app(pool);
    assert_eq!(open_stream(&app, None).await.0, StatusCode::UNAUTHORIZED);
    let export = app.get(tally::usage::history::EXPORT_PATH, None).await;
    assert_eq!(export.status, StatusCode::UNAUTHORIZED);
    let history = app.post_form("/api/usage/history", &[], None).await;
    assert_eq!(history.status, StatusCode::UNAUTHORIZED);
    let alerts = app.post_form("/api/usage/alert-webhook", &[("url", "http://127.0.0.1:9/")], None).await;
    assert_eq!(alerts.status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn history_has_every_day_of_the_period_in_the_billing_time_zone(pool: PgPool) {
    let app = app(pool.clone());
    let cookie = app.signup("history@example.com").await;
    let user = app.user_id("history@example.com").await;
    // 2026-11-24 23:30 UTC is 2026-11-25 08:30 in Tokyo.
    app.insert_usage(user, AI_TOKENS_EVENT, 70, "2026-11-24T23:30:00Z").await;
    app.insert_usage(user, AI_TOKENS_EVENT, 5, "2026-11-25T01:00:00Z").await;
    app.insert_usage(user, AI_TOKENS_EVENT, 9, "2026-10-02T01:00:00Z").await;

    let history = app.post_form("/api/usage/history", &[("period", "2026-10-31T15:00:00Z")], Some(&cookie)).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    let history = history.json();
    let days = history["days"].as_array().unwrap();
    assert_eq!(days.len(), 30, "every day of November");
    assert_eq!(days[0]["day"], "2026-11-01");
    let day = |d: &str| days.iter().find(|x| x["day"] == d).unwrap()["quantity"].as_i64().unwrap();
    assert_eq!((day("2026-11-24"), day("2026-11-25")), (0, 75));
    let periods: Vec<&str> =
        history["periods"].as_array().unwrap().iter().map(|p| p["firstDay"].as_str().unwrap()).collect();
    assert!(periods.contains(&"2026-11-01") && periods.contains(&"2026-10-01"), "{periods:?}");

    let october =
        app.post_form("/api/usage/history", &[("period", "2026-09-30T15:00:00Z")], Some(&cookie)).await.json();
    assert_eq!(october["selected"]["firstDay"], "2026-10-01");
    assert_eq!(october["days"].as_array().unwrap().iter().map(|d| d["quantity"].as_i64().unwrap()).sum::<i64>(), 9);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_csv_export_holds_the_periods_events_with_local_offsets(pool: PgPool) {
    let app = app(pool.clone());
    let cookie = app.signup("csv@example.com").await;
    let user = app.user_id("csv@example.com").await;
    let key_reply = app
        .post_json(
            "/api/usage/record",
            r#"{"eventType":"ai_token_consumed","quantity":12}"#,
            &[("cookie", cookie.as_str()), ("idempotency-key", "with,comma\"quoted\"")],
        )
        .await;
    assert_eq!(key_reply.status, StatusCode::OK, "{}", key_reply.body);
    for q in 1..=2_500 {
        app.insert_usage(user, AI_TOKENS_EVENT, q, &now()).await;
    }
    let other = app.signup("other-csv@example.com").await;
    let _ = other;
    let stranger = app.user_id("other-csv@example.com").await;
    app.insert_usage(stranger, AI_TOKENS_EVENT, 777_777, &now()).await;

    let reply = app.get(tally::usage::history::EXPORT_PATH, Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers[header::CONTENT_DISPOSITION]
        .to_str()
        .unwrap()
        .starts_with("attachment; filename=\"tally-usage-"));
    let mut reader = csv::Reader::from_reader(reply.body.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["id", "occurred_at", "event_type", "quantity", "idempotency_key", "stripe"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 2_501, "every event of the period, across chunks, and nobody else's");
    let total: i64 = rows.iter().map(|r| r[3].parse::<i64>().unwrap()).sum();
    let expected: i64 = sqlx::query_scalar("SELECT sum(quantity)::bigint FROM usage_events WHERE user_id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, expected);
    assert!(rows.iter().all(|r| r[1].ends_with("+09:00")), "times carry Tokyo's offset: {}", &rows[0][1]);
    assert!(rows.iter().any(|r| &r[4] == "with,comma\"quoted\""), "quoting survives");
    assert!(rows.iter().all(|r| &r[5] == "awaiting_customer"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn slow_csv_downloads_cannot_take_the_whole_database_pool(pool: PgPool) {
    use futures::StreamExt;

    let app = app(pool.clone());
    let cookie = app.signup("exports@example.com").await;
    let user = app.user_id("exports@example.com").await;
    // More rows than the export buffers (4 chunks of 1,000): an unread download keeps its database connection.
    sqlx::query(
        "INSERT INTO usage_events (id, user_id, event_type, quantity, occurred_at)
         SELECT gen_random_uuid(), $1, 'ai_token_consumed', 1, now() - n * interval '1 millisecond'
         FROM generate_series(1, 8000) AS n",
    )
    .bind(user)
    .execute(&pool)
    .await
    .unwrap();

    // The test app's pool has 5 connections: one export may stream at a time.
    let (status, stalled) = open_download(&app, tally::usage::history::EXPORT_PATH, Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    let mut stalled = stalled.unwrap();
    let _first_chunk = stalled.next().await;
    let busy = app.get(tally::usage::history::EXPORT_PATH, Some(&cookie)).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE, "{}", busy.body);
    assert_eq!(busy.json()["code"], "unavailable");
    assert!(busy.body.contains("try again"), "{}", busy.body);
    // The app itself still answers from the pool meanwhile.
    let summary = app.post_form("/api/usage/summary", &[], Some(&cookie)).await;
    assert_eq!(summary.status, StatusCode::OK);

    // The stalled client goes away: its export ends and frees its place.
    drop(stalled);
    let mut reply = None;
    for _ in 0..50 {
        let attempt = app.get(tally::usage::history::EXPORT_PATH, Some(&cookie)).await;
        if attempt.status == StatusCode::OK {
            reply = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = reply.expect("the export's place was freed");
    assert_eq!(reply.body.lines().count(), 8_001, "header and every event");
}

/// A local receiver that keeps every alert webhook request it gets.
async fn receiver() -> (String, Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push((headers, body));
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

/// The test config with alert webhooks allowed to reach this machine (`TALLY_ALERT_WEBHOOK_ALLOW_PRIVATE`).
fn local_alerts_config() -> tally::config::Config {
    tally::config::Config { alert_webhook_allow_private: true, ..crate::support::config() }
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn thresholds_fire_once_each_even_under_concurrent_writes_and_webhooks_arrive_signed(pool: PgPool) {
    // The receiver listens on this machine: allowed only by the development setting.
    let app = crate::support::app_with(pool.clone(), local_alerts_config());
    let cookie = app.signup("alerts@example.com").await;
    let user = app.user_id("alerts@example.com").await;
    crate::support::set_token_limit(&pool, Some(user), Some(1000)).await;
    let (url, seen) = receiver().await;
    let set = app.post_form("/api/usage/alert-webhook", &[("url", &url)], Some(&cookie)).await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let bad = app.post_form("/api/usage/alert-webhook", &[("url", "ftp://example.com/x")], Some(&cookie)).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.body);

    // 2 × 30 concurrent writes of 20 through two instances: 1,200 tokens, past every threshold.
    let other = crate::support::app(pool.clone());
    let mut writes = Vec::new();
    for i in 0..60 {
        let target = if i % 2 == 0 { app.state.writer.clone() } else { other.state.writer.clone() };
        writes.push(tokio::spawn(async move {
            let event = tally::usage::writer::NewEvent {
                event_type: AI_TOKENS_EVENT.into(),
                quantity: 20,
                metadata: serde_json::json!({}),
                idempotency_key: None,
                occurred_at: chrono::Utc::now(),
            };
            target
                .submit(
                    tally::auth::caller::Caller::User(user),
                    vec![event],
                    tally::usage::writer::LimitPolicy::RecordAnyway,
                )
                .await
        }));
    }
    for write in writes {
        write.await.unwrap().unwrap();
    }
    let alerts = app.post_form("/api/usage/alerts", &[], Some(&cookie)).await.json();
    let thresholds: Vec<i64> =
        alerts["alerts"].as_array().unwrap().iter().map(|a| a["threshold"].as_i64().unwrap()).collect();
    assert_eq!(thresholds, [80, 90, 100]);
    let secret = alerts["webhookSecret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));

    let worker = tally::usage::alert_webhooks::AlertWebhookWorker::new(
        pool.clone(),
        true,
        Duration::from_millis(5),
        Duration::from_millis(5),
    );
    while worker.step().await.unwrap() > 0 {}
    let received = seen.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "one webhook per threshold");
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    let mut fired = Vec::new();
    for (headers, body) in &received {
        verifier.verify(body.as_bytes(), headers).expect("a valid Standard Webhooks signature");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["type"], "usage.threshold_crossed");
        assert_eq!(body["data"]["limit"], 1000);
        fired.push(body["data"]["threshold_percent"].as_i64().unwrap());
    }
    fired.sort();
    assert_eq!(fired, [80, 90, 100]);
    // Nothing more to send, and the dashboard page shows the notices.
    assert_eq!(worker.step().await.unwrap(), 0);
    let page = app.get("/", Some(&cookie)).await;
    assert!(page.body.contains("data-threshold=\"100\""), "{}", page.body);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn an_alert_webhook_the_receiver_refuses_is_retried_until_it_is_taken(pool: PgPool) {
    let app = crate::support::app_with(pool.clone(), local_alerts_config());
    let cookie = app.signup("retry-alert@example.com").await;
    let user = app.user_id("retry-alert@example.com").await;
    crate::support::set_token_limit(&pool, Some(user), Some(100)).await;
    // Nothing listens on this port at first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let url = format!("http://{address}/hook");
    app.post_form("/api/usage/alert-webhook", &[("url", &url)], Some(&cookie)).await;
    app.insert_usage(user, AI_TOKENS_EVENT, 85, &now()).await;

    let worker = tally::usage::alert_webhooks::AlertWebhookWorker::new(
        pool.clone(),
        true,
        Duration::from_millis(5),
        Duration::from_millis(5),
    );
    assert_eq!(worker.step().await.unwrap(), 1);
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, last_error FROM alert_webhooks").fetch_one(&pool).await.unwrap();
    assert_eq!(status, "pending");
    assert!(error.unwrap().contains("could not reach"));

    let seen = Arc::new(Mutex::new(0));
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move || async move {
                *seen.lock().unwrap() += 1;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    while worker.step().await.unwrap() > 0 {}
    assert_eq!(*seen.lock().unwrap(), 1);
    let status: String = sqlx::query_scalar("SELECT status FROM alert_webhooks").fetch_one(&pool).await.unwrap();
    assert_eq!(status, "delivered");
}

/// A private target saved before URLs were checked (or written by hand) is still never sent to: the worker checks
/// again at send time, without the development setting, and the receiver on this machine sees nothing.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn alerts_are_never_sent_to_a_private_address_whatever_the_stored_url(pool: PgPool) {
    let app = app(pool.clone());
    let cookie = app.signup("ssrf@example.com").await;
    let user = app.user_id("ssrf@example.com").await;
    crate::support::set_token_limit(&pool, Some(user), Some(100)).await;
    let (url, seen) = receiver().await;
    let refused = app.post_form("/api/usage/alert-webhook", &[("url", &url)], Some(&cookie)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    assert!(refused.body.contains("public address"), "{}", refused.body);
    sqlx::query("UPDATE users SET alert_webhook_url = $2, alert_webhook_secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' WHERE id = $1")
        .bind(user)
        .bind(&url)
        .execute(&pool)
        .await
        .unwrap();
    app.insert_usage(user, AI_TOKENS_EVENT, 85, &now()).await;
    let worker = tally::usage::alert_webhooks::AlertWebhookWorker::new(
        pool.clone(),
        false,
        Duration::from_millis(5),
        Duration::from_millis(5),
    );
    assert_eq!(worker.step().await.unwrap(), 1);
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, last_error FROM alert_webhooks").fetch_one(&pool).await.unwrap();
    assert_eq!(status, "pending");
    assert!(error.as_deref().unwrap_or_default().contains("refused"), "{error:?}");
    assert_eq!(seen.lock().unwrap().len(), 0, "nothing reached the receiver");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_language_link_sets_the_locale_cookie_without_javascript(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("lang@example.com").await;
    let reply = app.get("/language/ja", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let set = reply.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set.starts_with("i18n_pref_locale=ja;"), "{set}");
    let page = app.get("/", Some(&format!("{cookie}; i18n_pref_locale=ja"))).await;
    assert!(page.body.contains("今期のAIトークン"), "the cookie picks Japanese");
    assert!(page.body.contains("<html lang=\"ja\""), "and the document says so");
    assert_eq!(app.get("/language/xx", Some(&cookie)).await.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// The hourly counters the outbox's triggers keep equal a count of the rows themselves, through inserts, status
/// changes, re-stamps and deletes; and the delivery state of a period with edges off the hour equals a row count.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_outbox_counters_equal_a_recount_and_so_does_the_periods_sync_state(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    for (minutes_ago, quantity) in [(5, 1), (50, 2), (70, 3), (130, 4), (131, 5), (200, 6), (201, 7), (260, 8)] {
        let at = chrono::Utc::now() - chrono::Duration::minutes(minutes_ago);
        app.insert_usage(ada, AI_TOKENS_EVENT, quantity, &at.to_rfc3339()).await;
    }
    let recount = |pool: PgPool| async move {
        let counted: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, sum(events)::bigint FROM meter_outbox_counts WHERE user_id = $1 GROUP BY 1 ORDER BY 1",
        )
        .bind(ada)
        .fetch_all(&pool)
        .await
        .unwrap();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM meter_event_outbox WHERE user_id = $1 AND status <> 'delivered'
             GROUP BY 1 ORDER BY 1",
        )
        .bind(ada)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(counted, rows, "counters against the rows");
        assert!(
            sqlx::query_scalar::<_, bool>("SELECT NOT EXISTS (SELECT 1 FROM meter_outbox_counts WHERE events = 0)")
                .fetch_one(&pool)
                .await
                .unwrap(),
            "no empty counters are left behind"
        );
        rows
    };
    assert_eq!(recount(app.pool.clone()).await.iter().map(|(_, n)| n).sum::<i64>(), 8);
    let change = |sql: &'static str| {
        let pool = app.pool.clone();
        async move { sqlx::query(sql).bind(ada).execute(&pool).await.unwrap() }
    };
    change("UPDATE meter_event_outbox SET status = 'pending' WHERE user_id = $1").await;
    change(
        "UPDATE meter_event_outbox SET status = 'delivered' WHERE user_id = $1
         AND usage_event_id IN (SELECT id FROM usage_events WHERE quantity IN (1, 4))",
    )
    .await;
    change(
        "UPDATE meter_event_outbox SET status = 'failed' WHERE user_id = $1
         AND usage_event_id IN (SELECT id FROM usage_events WHERE quantity IN (2, 5))",
    )
    .await;
    change(
        "UPDATE meter_event_outbox SET status = 'expired' WHERE user_id = $1
         AND usage_event_id IN (SELECT id FROM usage_events WHERE quantity = 6)",
    )
    .await;
    // A status-keeping update (a lease, an attempt) changes no counter.
    change("UPDATE meter_event_outbox SET attempts = attempts + 1 WHERE user_id = $1").await;
    change("DELETE FROM meter_event_outbox WHERE user_id = $1 AND usage_event_id IN (SELECT id FROM usage_events WHERE quantity = 8)")
        .await;
    let rows = recount(app.pool.clone()).await;
    assert_eq!(rows, vec![("expired".to_owned(), 1), ("failed".into(), 2), ("pending".into(), 2)]);

    // A period from 195 minutes ago to 45 minutes ago (off the hour at both ends): counters for its whole hours,
    // rows for its edges, and the same answer as counting rows.
    let (start, end) =
        (chrono::Utc::now() - chrono::Duration::minutes(195), chrono::Utc::now() - chrono::Duration::minutes(45));
    let (pending, failed, expired): (i64, i64, i64) =
        sqlx::query_as("SELECT pending, failed, expired FROM meter_sync($1, $2, $3, 'calendar')")
            .bind(ada)
            .bind(start)
            .bind(end)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let counted: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'failed'),
                count(*) FILTER (WHERE status = 'expired')
         FROM meter_event_outbox WHERE user_id = $1 AND occurred_at >= $2 AND occurred_at < $3",
    )
    .bind(ada)
    .bind(start)
    .bind(end)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((pending, failed, expired), counted);
    // The events at 50, 70, 130 and 131 minutes ago are inside: 2 failed (50, 131), 1 pending (70), 130 delivered.
    assert_eq!(counted, (1, 2, 0));
}
