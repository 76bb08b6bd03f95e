//! Server-rendered pages: the numbers are in the HTML before any script runs.

use axum::http::{header, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use sqlx::PgPool;
use tally::usage::AI_TOKENS_EVENT;
use tower::ServiceExt;

use crate::support::app;

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_dashboard_sends_visitors_without_a_session_to_login(pool: PgPool) {
    let app = app(pool);
    let reply = app.get("/", None).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.body);
    assert_eq!(reply.headers[header::LOCATION], "/login");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_dashboard_html_carries_the_meter_numbers(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    app.insert_usage(ada, AI_TOKENS_EVENT, 1_234, &Utc::now().to_rfc3339()).await;

    let reply = app.get("/", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let html = &reply.body;
    assert!(html.contains(">1,234<"), "used with separators: {html}");
    assert!(html.contains(">50,000<"), "limit with separators");
    assert!(html.contains(r#"role="progressbar""#));
    assert!(html.contains(r#"aria-valuenow="1234""#));
    assert!(html.contains(r#"aria-valuemin="0""#));
    assert!(html.contains(r#"aria-valuemax="50000""#));
    assert!(html.contains("width: 2.46%") || html.contains("width:2.46%"), "bar width 1234/50000");
    assert!(html.contains(r#"data-critical="false""#));
    assert!(html.contains("ada@example.com"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_bar_is_red_from_ninety_percent(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    app.insert_usage(ada, AI_TOKENS_EVENT, 44_999, &Utc::now().to_rfc3339()).await;
    assert!(app.get("/", Some(&cookie)).await.body.contains(r#"data-critical="false""#), "89.998 % is not red");

    app.insert_usage(ada, AI_TOKENS_EVENT, 1, &Utc::now().to_rfc3339()).await;
    let html = app.get("/", Some(&cookie)).await.body;
    assert!(html.contains(r#"data-critical="true""#), "90 % is red");
    assert!(html.contains("usage-meter__bar--critical"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn an_unlimited_account_has_no_bar(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    crate::support::set_token_limit(&app.pool, None, None).await;
    let html = app.get("/", Some(&cookie)).await.body;
    assert!(html.contains("no limit"));
    assert!(!html.contains(r#"role="progressbar""#));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_session_of_a_deleted_account_is_sent_to_login(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    sqlx::query("DELETE FROM users").execute(&app.pool).await.unwrap();
    let reply = app.get("/", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.headers[header::LOCATION], "/login");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn login_and_signup_pages_render_their_forms(pool: PgPool) {
    let app = app(pool);
    for (path, button) in [("/login", "Sign in"), ("/signup", "Create account")] {
        let reply = app.get(path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(reply.body.contains(r#"name="email""#) && reply.body.contains(r#"name="password""#));
        assert!(reply.body.contains(button), "{path}");
    }
    assert_eq!(app.get("/no-such-page", None).await.status, StatusCode::NOT_FOUND);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_bundle_is_sent_precompressed_to_browsers_that_accept_it(pool: PgPool) {
    let site = std::env::temp_dir().join(format!("tally-site-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(site.join("pkg")).unwrap();
    for (name, body) in [
        ("tally.wasm", "plain wasm"),
        ("tally.wasm.br", "brotli wasm"),
        ("tally.wasm.gz", "gzip wasm"),
        ("tally.js", "plain js"),
    ] {
        std::fs::write(site.join("pkg").join(name), body).unwrap();
    }
    let app = crate::support::app_with_site(pool, crate::support::config(), site.to_str().unwrap());
    let fetch = |path: &'static str, accept: Option<&'static str>| {
        let mut request = axum::http::Request::get(path).header(axum::http::header::HOST, "127.0.0.1:3000");
        if let Some(accept) = accept {
            request = request.header(axum::http::header::ACCEPT_ENCODING, accept);
        }
        request.body(axum::body::Body::empty()).unwrap()
    };
    let reply = app.send(fetch("/pkg/tally.wasm", Some("gzip, deflate, br, zstd"))).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "brotli wasm"));
    assert_eq!(reply.headers["content-encoding"], "br");
    assert_eq!(reply.headers["content-type"], "application/wasm");
    let reply = app.send(fetch("/pkg/tally.wasm", Some("gzip"))).await;
    assert_eq!((reply.body.as_str(), &reply.headers["content-encoding"]), ("gzip wasm", &"gzip".parse().unwrap()));
    let reply = app.send(fetch("/pkg/tally.wasm", None)).await;
    assert_eq!(reply.body, "plain wasm");
    assert!(reply.headers.get("content-encoding").is_none());
    let reply = app.send(fetch("/pkg/tally.js", Some("br"))).await;
    assert_eq!(reply.body, "plain js", "without a precompressed copy the file goes as it is");
    assert!(reply.headers.get("content-encoding").is_none());
    std::fs::remove_dir_all(site).unwrap();
}

/// Pages and JSON answers are compressed for browsers that accept it; the live stream is not (its events must
/// arrive as they happen).
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn pages_are_compressed_for_browsers_that_accept_it_and_the_live_stream_is_not(pool: PgPool) {
    use std::io::Read;
    let app = crate::support::app(pool);
    let cookie = app.signup("ada@example.com").await;
    let request = |path: &str, accept: &str| {
        axum::http::Request::get(path)
            .header(axum::http::header::HOST, "127.0.0.1:3000")
            .header(axum::http::header::COOKIE, cookie.as_str())
            .header(axum::http::header::ACCEPT_ENCODING, accept)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let response = app.router.clone().oneshot(request("/", "gzip")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(response.headers()["vary"], "accept-encoding");
    let compressed = response.into_body().collect().await.unwrap().to_bytes();
    let mut html = String::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_string(&mut html).unwrap();
    assert!(html.contains("data-testid=\"usage-used\""), "the meter, compressed");
    assert!(compressed.len() * 2 < html.len(), "{} bytes sent for {}", compressed.len(), html.len());

    let plain = app.send(request("/", "identity")).await;
    assert!(plain.headers.get("content-encoding").is_none());
    assert!(plain.body.contains("data-testid=\"usage-used\""));

    let stream = app.router.clone().oneshot(request(tally::usage::LIVE_PATH, "gzip, br")).await.unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert!(stream.headers().get("content-encoding").is_none(), "server-sent events go uncompressed");

    // The CSV download streams compressed to its end (an unfused body stream once panicked when the compression
    // layer polled it again after its last chunk).
    let export = app.router.clone().oneshot(request(tally::usage::EXPORT_PATH, "gzip")).await.unwrap();
    assert_eq!(export.headers()["content-encoding"], "gzip");
    let compressed = export.into_body().collect().await.expect("the whole download").to_bytes();
    let mut csv = String::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_string(&mut csv).unwrap();
    assert!(csv.starts_with("id,occurred_at,event_type"), "{csv}");
}

/// Bundle files named by their content are cached by browsers for good (a release has new names); without content
/// names they are revalidated; a missing file is never cached.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn hashed_bundle_files_are_immutable_and_missing_ones_are_not_cached(pool: PgPool) {
    let site = std::env::temp_dir().join(format!("tally-site-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(site.join("pkg")).unwrap();
    std::fs::write(site.join("pkg").join("tally.0123456789abcdef.wasm"), "wasm").unwrap();
    let options = |hashed: bool| {
        leptos::prelude::LeptosOptions::builder()
            .output_name("tally")
            .site_root(site.to_str().unwrap())
            .hash_files(hashed)
            .build()
    };
    let get = |path: &str| {
        axum::http::Request::get(path).header(header::HOST, "127.0.0.1:3000").body(axum::body::Body::empty()).unwrap()
    };
    let hashed = crate::support::app_with_options(pool.clone(), crate::support::config(), options(true));
    let reply = hashed.send(get("/pkg/tally.0123456789abcdef.wasm")).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "wasm"));
    assert_eq!(reply.headers["cache-control"], "public, max-age=31536000, immutable");
    let missing = hashed.send(get("/pkg/tally.fedcba9876543210.wasm")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.headers.get("cache-control").is_none(), "a 404 must not outlive the deploy that caused it");

    let plain = crate::support::app_with_options(pool, crate::support::config(), options(false));
    let reply = plain.send(get("/pkg/tally.0123456789abcdef.wasm")).await;
    assert_eq!(reply.headers["cache-control"], "no-cache");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_dashboard_is_server_html_with_islands_and_regions_and_no_hydration_data(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    app.insert_usage(ada, AI_TOKENS_EVENT, 1_234, &Utc::now().to_rfc3339()).await;
    let html = app.get("/", Some(&cookie)).await.body;
    // What the browser attaches behaviour to, and what it re-reads from a fresh copy of the page.
    for island in ["live", "ai-prompt", "new-api-key"] {
        assert!(html.contains(&format!(r#"data-island="{island}""#)), "island {island}: {html}");
    }
    for region in ["meters", "alerts", "history", "billing", "keys"] {
        assert_eq!(html.matches(&format!(r#"data-region="{region}""#)).count(), 1, "region {region}");
    }
    assert!(html.contains(r#"data-used="1234""#), "the meter region says what it shows");
    // Islands mode: the page carries no serialized resource data and no hydration keys for a client runtime
    // (Leptos still declares its empty resource arrays; hydrating, it filled them with the whole dashboard read).
    assert!(html.contains("__RESOLVED_RESOURCES=[];"), "{html}");
    for hydration in ["__RESOLVED_RESOURCES[", "__RESOLVED_RESOURCES.push", "data-hk", "\"summary\""] {
        assert!(!html.contains(hydration), "{hydration} in the page: {html}");
    }
    // The islands' words are already in the reader's language.
    let ja = app.get_with("/", &[("cookie", &cookie), ("accept-language", "ja")]).await.body;
    assert!(ja.contains(r#"data-busy-text="更新中…""#), "{ja}");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_server_function_error_also_says_it_in_the_callers_language(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let empty = r#"{"prompt": "   "}"#;
    let english = app.post_json("/api/ai/generate", empty, &[("cookie", &cookie)]).await;
    assert_eq!(english.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", english.body);
    let japanese =
        app.post_json("/api/ai/generate", empty, &[("cookie", &cookie), ("accept-language", "ja-JP,ja;q=0.9")]).await;
    assert_eq!(japanese.status, StatusCode::UNPROCESSABLE_ENTITY);
    let (english, japanese) = (english.json(), japanese.json());
    // `error` and `code` stay the same for scripts and logs; `message` is for the person reading it.
    assert_eq!(english["error"], japanese["error"]);
    assert_eq!(english["code"], japanese["code"]);
    assert_eq!(english["message"], english["error"]);
    let message = japanese["message"].as_str().unwrap();
    assert!(message.chars().any(|c| ('\u{3040}'..='\u{30ff}').contains(&c)), "Japanese: {message}");
    // The language cookie the toggle sets wins over the browser's language.
    let chosen = format!("{cookie}; i18n_pref_locale=en");
    let reply = app.post_json("/api/ai/generate", empty, &[("cookie", &chosen), ("accept-language", "ja")]).await;
    assert_eq!(reply.json()["message"], english["message"]);
}
