//! Operations (issue 20): health and readiness, Prometheus metrics that move with usage, request ids, JSON logs,
//! and a graceful shutdown that really finishes with live streams open.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use sqlx::PgPool;

use crate::support::{app, app_with, config, database_url};

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn liveness_and_readiness_answer_json_and_name_what_is_not_ready(pool: PgPool) {
    let app = app(pool);
    let alive = app.get("/healthz", None).await;
    assert_eq!((alive.status, alive.json()["status"].as_str()), (StatusCode::OK, Some("alive")));

    // Ready once the LISTEN connection is up (a moment after start).
    let mut ready = app.get("/readyz", None).await;
    for _ in 0..50 {
        if ready.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = app.get("/readyz", None).await;
    }
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let body = ready.json();
    assert_eq!(body["status"], "ready");
    let names: Vec<&str> = body["checks"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["database", "migrations", "ingest_writers", "live_listener", "shutdown"]);
    let known = tally::db::MIGRATOR.iter().count();
    assert_eq!(body["checks"][1]["detail"], format!("{known} of {known} applied"));
    assert_eq!(body["checks"][2]["detail"], "2 of 2 running");
    assert!(!ready.body.contains("postgres://"), "no connection string, no secret");

    // Shutting down: not ready, and it says why.
    app.state.usage.live.shut_down();
    let draining = app.get("/readyz", None).await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    let failed: Vec<&str> = draining.json()["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str())
        .map(|name| if name == "shutdown" { "shutdown" } else { "other" })
        .collect();
    assert_eq!(failed, ["shutdown"]);
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK, "alive while draining");
}

/// The sum of the samples of `name` whose labels include every one of `labels`; 0 when there is none.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn metrics_move_when_usage_is_recorded_and_can_require_a_token(pool: PgPool) {
    let mut settings = config();
    settings.metrics_token = Some("scrape-token".into());
    let app = app_with(pool, settings);
    let scrape = || async {
        let reply = app.get_with("/metrics", &[("authorization", "Bearer scrape-token")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body
    };
    assert_eq!(app.get("/metrics", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get_with("/metrics", &[("authorization", "Bearer wrong")]).await.status, StatusCode::UNAUTHORIZED);

    app.signup("scraped@example.com").await;
    let key = app.api_key("scraped@example.com").await;
    let auth = format!("Bearer {key}");
    let before = scrape().await;
    // Metrics are process-wide (other tests run beside this one): compare with the scrape before.
    let recorded = sample(&before, "tally_ingest_events_total", &[r#"outcome="recorded""#]);
    let limited = sample(&before, "tally_ingest_submissions_total", &[r#"outcome="limit_exceeded""#]);
    for (quantity, status) in [(7, StatusCode::OK), (3, StatusCode::OK), (10_000_000, StatusCode::TOO_MANY_REQUESTS)] {
        let body = serde_json::json!({ "eventType": "ai_token_consumed", "quantity": quantity }).to_string();
        assert_eq!(app.post_json("/api/usage/record", &body, &[("authorization", auth.as_str())]).await.status, status);
    }
    let after = scrape().await;
    assert!(sample(&after, "tally_ingest_events_total", &[r#"outcome="recorded""#]) >= recorded + 2.0, "{after}");
    assert!(sample(&after, "tally_ingest_submissions_total", &[r#"outcome="limit_exceeded""#]) > limited);
    assert!(sample(&after, "tally_ingest_commit_seconds_count", &[]) > 0.0);
    assert!(sample(&after, "tally_ingest_group_events_bucket", &[r#"le="+Inf""#]) > 0.0);
    let route = r#"route="/api/usage/record""#;
    assert!(sample(&after, "tally_http_requests_total", &[route, r#"status="200""#]) >= 2.0, "{after}");
    assert!(sample(&after, "tally_http_requests_total", &[route, r#"status="429""#]) >= 1.0);
    assert!(sample(&after, "tally_http_request_duration_seconds_count", &[route]) >= 3.0);
    // Read at scrape: this account has no Stripe customer, so its 10 units wait for one.
    assert!(sample(&after, "tally_outbox_events", &[r#"status="awaiting_customer""#]) >= 2.0, "{after}");
    assert!(after.contains("tally_outbox_oldest_undelivered_age_seconds"));
    assert!(after.contains(r#"tally_db_pool_connections{state="idle"}"#));
    assert!(!after.contains(&key), "no key in the metrics");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn every_answer_carries_a_request_id_and_a_proxys_is_kept(pool: PgPool) {
    let app = app(pool);
    let made = app.get("/healthz", None).await;
    let id = made.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let kept = app.get_with("/api/nope", &[("x-request-id", "edge-1234")]).await;
    assert_eq!((kept.status, kept.headers["x-request-id"].to_str().unwrap()), (StatusCode::NOT_FOUND, "edge-1234"));
}

/// A running `tally serve` on a free port, with its log (stdout) captured in a file.
struct Server {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Server {
    fn start(pool: &PgPool, env: &[(&str, &str)]) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::env::temp_dir().join(format!("tally-ops-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .arg("serve")
            .env("DATABASE_URL", database_url(pool))
            .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
            .env("LEPTOS_HASH_FILES", "false")
            .env("RUST_LOG", "info")
            .env_remove("STRIPE_SECRET_KEY")
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tally serve");
        Server { child, base: format!("http://127.0.0.1:{port}"), log }
    }

    async fn wait_ready(&self, http: &reqwest::Client) {
        for _ in 0..200 {
            if let Ok(reply) = http.get(format!("{}/readyz", self.base)).send().await {
                if reply.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server never became ready: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// With live streams open, SIGTERM ends them (browsers reconnect elsewhere), readiness turns false, and the
/// process exits promptly: well inside TALLY_SHUTDOWN_SECONDS, not at it, so the streams did not hold it.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn sigterm_ends_open_streams_and_exits_promptly(pool: PgPool) {
    let server = Server::start(&pool, &[("TALLY_SHUTDOWN_SECONDS", "30"), ("TALLY_LOG_FORMAT", "json")]);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    server.wait_ready(&http).await;
    let signup = http
        .post(format!("{}/api/auth/signup", server.base))
        .form(&[("email", "streams@example.com"), ("password", crate::support::PASSWORD)])
        .send()
        .await
        .unwrap();
    let cookie = signup.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let reply = http
            .get(format!("{}/api/usage/live", server.base))
            .header("cookie", &cookie)
            .header("x-request-id", "stream-req")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let mut body = reply.bytes_stream();
        use futures::StreamExt;
        let first = tokio::time::timeout(Duration::from_secs(5), body.next()).await.expect("a first event");
        assert!(String::from_utf8_lossy(&first.unwrap().unwrap()).contains("event: usage"));
        streams.push(body);
    }

    let signalled = Instant::now();
    server.terminate();
    for mut body in streams {
        use futures::StreamExt;
        // The stream ends (or the connection closes): nothing more arrives and the body finishes.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(chunk) = body.next().await {
                if chunk.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an open stream was not ended by the shutdown");
    }
    let mut server = server;
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap();
    let took = signalled.elapsed();
    assert!(exit.0.success(), "exit status {:?}", exit.0);
    assert!(took < Duration::from_secs(10), "exited after {took:?}: the streams held it");
    eprintln!("shutdown with 3 open streams took {took:?}");

    // The log is JSON, one object per line, with the request's span: its route and request id.
    let log = std::fs::read_to_string(&exit.1.log).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty() && lines.len() == log.lines().count(), "every line is JSON: {log}");
    assert!(
        lines.iter().any(|l| l["span"]["request_id"] == "stream-req" && l["span"]["route"] == "/api/usage/live"),
        "{log}"
    );
    assert!(!log.contains(&cookie), "no cookie in the log");
}

/// Delivery and webhook metrics move: a usage event delivered to the Stripe double is a `delivered` call with its
/// latency, the outbox backlog falls, and each webhook is counted by type and outcome (an unverified one as
/// `rejected`, without its claimed type).
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn delivery_and_webhook_metrics_move(pool: PgPool) {
    let (base, _double) = crate::delivery::start_double().await;
    let app = app(pool.clone());
    app.signup("delivered@example.com").await;
    let user = app.user_id("delivered@example.com").await;
    tally::billing::status::link_customer(&pool, "delivered@example.com", "cus_metrics").await.unwrap();
    let scrape = || async { app.get("/metrics", None).await.body };
    let before = scrape().await;
    app.insert_usage(user, "ai_token_consumed", 5, &chrono::Utc::now().to_rfc3339()).await;
    let worker = tally::billing::delivery::DeliveryWorker::new(
        pool.clone(),
        &base,
        stripe_double::DEFAULT_SECRET_KEY,
        crate::delivery::fast_settings(),
        "Asia/Tokyo",
    );
    assert_eq!(worker.drain(Duration::from_secs(30)).await.unwrap().1, 0);

    let body = serde_json::json!({
        "id": "evt_metrics_1", "object": "event", "type": "product.created", "created": chrono::Utc::now().timestamp(),
        "livemode": false, "data": { "object": { "id": "prod_1", "object": "product" } }
    })
    .to_string();
    let t = chrono::Utc::now().timestamp();
    let signature =
        format!("t={t},v1={}", stripe_double::webhook_signature(crate::support::WEBHOOK_SECRET, t, body.as_bytes()));
    let webhook = |signature: String| {
        let request = axum::http::Request::post("/api/stripe/webhook")
            .header("host", "127.0.0.1:3000")
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(axum::body::Body::from(body.clone()))
            .unwrap();
        app.send(request)
    };
    assert_eq!(webhook(signature).await.status, StatusCode::OK);
    assert_eq!(webhook("t=1,v1=00".into()).await.status, StatusCode::BAD_REQUEST);

    let after = scrape().await;
    let delivered = |m: &str| sample(m, "tally_stripe_call_duration_seconds_count", &[r#"outcome="delivered""#]);
    assert!(delivered(&after) > delivered(&before), "{after}");
    let ignored = |m: &str| sample(m, "tally_webhooks_total", &[r#"type="product.created""#, r#"outcome="ignored""#]);
    assert_eq!(ignored(&after) - ignored(&before), 1.0);
    let rejected = |m: &str| sample(m, "tally_webhooks_total", &[r#"type="unverified""#, r#"outcome="rejected""#]);
    assert!(rejected(&after) > rejected(&before));
}
