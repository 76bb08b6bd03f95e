//! Guards in front of every route: cross-site writes, body size, response headers.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use sqlx::PgPool;

use crate::support::{app, Reply, TestApp, PASSWORD, WEBHOOK_SECRET};

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_cross_site_signup_is_refused_and_stores_nothing(pool: PgPool) {
    let app = app(pool);
    let request = Request::post("/api/auth/signup")
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("email=ada%40example.com&password={}", PASSWORD.replace(' ', "+"))))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["error"], "cross-site request refused");
    assert_eq!(app.count("users").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn state_changing_server_functions_refuse_get(pool: PgPool) {
    let app = app(pool);
    let reply = app.get("/api/auth/signup?email=ada%40example.com&password=long+enough+pw", None).await;
    assert!(reply.status.is_client_error(), "GET must not create accounts: {}", reply.status);
    assert_eq!(app.count("users").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn oversized_bodies_are_refused(pool: PgPool) {
    let app = app(pool);
    let huge = "a".repeat(tally::server::MAX_BODY_BYTES + 1);
    let request = Request::post("/api/auth/login")
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::CONTENT_LENGTH, huge.len())
        .body(Body::from(format!("email={huge}")))
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn pages_carry_security_headers(pool: PgPool) {
    let app = app(pool);
    let reply = app.get("/login", None).await;
    assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    assert_eq!(reply.headers["x-frame-options"], "DENY");
}

/// An email + password form posted to `path` from `ip` (as the connection's peer address).
async fn credentials_from(app: &TestApp, path: &str, ip: &str, email: &str, password: &str) -> Reply {
    let body = format!("email={}&password={}", email.replace('@', "%40"), password.replace(' ', "+"));
    let mut request = Request::post(path)
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let peer: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
    request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    app.send(request).await
}

/// A login request from `ip`.
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> Reply {
    credentials_from(app, "/api/auth/login", ip, email, password).await
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn failed_logins_are_throttled_per_account_and_address(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let limit = tally::auth::throttle::MAX_PER_ACCOUNT_AND_ADDRESS;
    for _ in 0..limit {
        let reply = login_from(&app, "198.51.100.1", "ada@example.com", "wrong password").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    // Even the right password is refused from that address now, before it is checked, and says when to retry.
    let reply = login_from(&app, "198.51.100.1", "Ada@Example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    assert_eq!(reply.json()["code"], "too_many_attempts");
    let retry_after: u64 = reply.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=15 * 60).contains(&retry_after), "{retry_after}");
    assert!(reply.session_cookie().is_none());
    assert_eq!(app.count("login_failures").await, limit, "throttled attempts are not counted again");

    // The owner, from their own address, still gets in, and that clears only their own failures.
    let reply = login_from(&app, "203.0.113.5", "ada@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.count("login_failures").await, limit);
}

/// Finding 1: the attempt is counted before the password is checked, atomically. 30 parallel guesses (over
/// three app instances, one database) get exactly the limit's worth of password checks; before, all 30 got 401.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn parallel_guesses_get_no_more_password_checks_than_the_limit(pool: PgPool) {
    let apps: Vec<std::sync::Arc<TestApp>> = (0..3).map(|_| std::sync::Arc::new(app(pool.clone()))).collect();
    apps[0].signup("ada@example.com").await;
    let guesses: Vec<_> = (0..30)
        .map(|i| {
            let app = apps[i % apps.len()].clone();
            tokio::spawn(async move { login_from(&app, "198.51.100.1", "ada@example.com", "wrong password").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.unwrap().status);
    }
    let checked = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count() as i64;
    let throttled = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count() as i64;
    assert_eq!((checked, throttled), (tally::auth::throttle::MAX_PER_ACCOUNT_AND_ADDRESS, 30 - checked));
    assert_eq!(apps[0].count("login_failures").await, tally::auth::throttle::MAX_PER_ACCOUNT_AND_ADDRESS);
}

/// Finding 10: one IPv6 subscriber holds a /64 and can use any address in it; attempts count per /64.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn ipv6_guesses_count_per_64_not_per_address(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    for n in 1..=tally::auth::throttle::MAX_PER_ACCOUNT_AND_ADDRESS {
        let reply = login_from(&app, &format!("[2001:db8:7:7::{n:x}]"), "ada@example.com", "wrong password").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    let next = login_from(&app, "[2001:db8:7:7:ffff:ffff:ffff:ffff]", "ada@example.com", PASSWORD).await;
    assert_eq!(next.status, StatusCode::TOO_MANY_REQUESTS, "{}", next.body);
    let other_network = login_from(&app, "[2001:db8:7:8::1]", "ada@example.com", PASSWORD).await;
    assert_eq!(other_network.status, StatusCode::OK, "{}", other_network.body);
}

/// Finding 2: an unknown email costs the same password hashing as a wrong password, so the answer's time does not
/// tell which emails have accounts. Compared on this machine, not against a fixed time: the fastest of several
/// answers of each kind (load only ever adds time, so the minimum is what the work costs).
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn an_unknown_email_takes_as_long_as_a_wrong_password(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for n in 0..6 {
        // A fresh address each time, so the throttle never answers first.
        let started = std::time::Instant::now();
        let reply = login_from(&app, &format!("198.51.100.{}", 10 + n), "ada@example.com", "wrong password").await;
        known.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let started = std::time::Instant::now();
        let reply = login_from(&app, &format!("198.51.100.{}", 50 + n), "nobody@example.com", "wrong password").await;
        unknown.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let (known, unknown) = (known.into_iter().min().unwrap(), unknown.into_iter().min().unwrap());
    // Before the fix the unknown email skipped Argon2: a tenth of the time or less.
    assert!(unknown * 2 >= known, "unknown email {unknown:?} against wrong password {known:?}");
}

/// A sign-up request from `ip`.
async fn signup_from(app: &TestApp, ip: &str, email: &str) -> Reply {
    credentials_from(app, "/api/auth/signup", ip, email, PASSWORD).await
}

/// Finding 7 (and 2's sign-up half): sign-ups are limited per address and overall, every attempt counted before any
/// hashing, taken emails included, so "taken" cannot be asked about at speed.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn sign_ups_are_throttled_per_address_and_overall(pool: PgPool) {
    let config =
        tally::config::Config { signups_per_address_per_hour: 3, signups_per_hour: 5, ..crate::support::config() };
    let app = crate::support::app_with(pool, config);
    assert_eq!(signup_from(&app, "198.51.100.1", "one@example.com").await.status, StatusCode::OK);
    assert_eq!(signup_from(&app, "198.51.100.1", "one@example.com").await.status, StatusCode::CONFLICT);
    assert_eq!(signup_from(&app, "198.51.100.1", "two@example.com").await.status, StatusCode::OK);
    let refused = signup_from(&app, "198.51.100.1", "three@example.com").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{}", refused.body);
    assert!(refused.headers.contains_key(header::RETRY_AFTER));
    // The same /64 is the same address.
    assert_eq!(signup_from(&app, "[2001:db8:1:1::1]", "four@example.com").await.status, StatusCode::OK);
    assert_eq!(signup_from(&app, "[2001:db8:1:1::2]", "five@example.com").await.status, StatusCode::OK);
    // Five attempts overall: a sixth address is refused too.
    let overall = signup_from(&app, "203.0.113.9", "six@example.com").await;
    assert_eq!(overall.status, StatusCode::TOO_MANY_REQUESTS, "{}", overall.body);
    assert_eq!(app.count("users").await, 4);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn one_address_guessing_many_accounts_is_throttled(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    for n in 0..tally::auth::throttle::MAX_PER_ADDRESS {
        let reply = login_from(&app, "192.0.2.66", &format!("user{n}@example.com"), "guess guess guess").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.body);
    }
    let reply = login_from(&app, "192.0.2.66", "ada@example.com", PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
    assert_eq!(login_from(&app, "192.0.2.67", "ada@example.com", PASSWORD).await.status, StatusCode::OK);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn pages_get_a_csp_with_the_nonce_of_their_scripts_and_api_answers_a_closed_one(pool: PgPool) {
    let app = app(pool);
    let reply = app.get("/login", None).await;
    let csp = reply.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
    let nonce = csp.split("'nonce-").nth(1).and_then(|rest| rest.split('\'').next()).expect("a nonce in the CSP");
    assert!(nonce.len() >= 16, "{csp}");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("'wasm-unsafe-eval'"), "{csp}");
    // Forms post here only; Subscribe and Manage billing are then redirected to Stripe, which `form-action` must
    // allow (browsers check a form's redirects against it too), and nothing else.
    assert!(csp.contains("form-action 'self' https://checkout.stripe.com https://billing.stripe.com;"), "{csp}");
    assert!(!csp.contains("'unsafe-eval'") && !csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    // Every inline script of the page carries that nonce, so the hydration script runs and nothing else does. (An
    // empty placeholder `<script></script>` of leptos_i18n needs none: browsers run no CSP check on empty scripts.)
    let scripts = reply.body.matches("<script").count() - reply.body.matches("<script></script>").count();
    let with_nonce = reply.body.matches(&format!(" nonce=\"{nonce}\">")).count();
    assert!(scripts >= 2, "{}", reply.body);
    assert_eq!(with_nonce, scripts, "{}", reply.body);
    // A fresh nonce per response.
    let again = app.get("/login", None).await;
    assert_ne!(again.headers[header::CONTENT_SECURITY_POLICY], reply.headers[header::CONTENT_SECURITY_POLICY]);

    let api = app.post_form("/api/auth/me", &[], None).await;
    let api_csp = api.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(api_csp.starts_with("default-src 'none'") && api_csp.contains("frame-ancestors 'none'"), "{api_csp}");
    assert_eq!(api.headers["x-content-type-options"], "nosniff");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn cookies_are_secure_behind_https(pool: PgPool) {
    let config = tally::config::Config { public_url: "https://tally.example".into(), ..crate::support::config() };
    let app = crate::support::app_with(pool, config);
    let reply = app.post_form("/api/auth/signup", &[("email", "ada@example.com"), ("password", PASSWORD)], None).await;
    let cookie = reply.session_cookie_header().expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(cookie.contains(flag), "{flag} missing: {cookie}");
    }
}

/// A `MakeWriter` that keeps everything logged in memory.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn logs_hold_no_passwords_keys_or_secrets_even_at_trace_level(pool: PgPool) {
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(log.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let stripe_key = "sk_test_never_log_this_4242";
    let config = tally::config::Config { stripe_secret_key: Some(stripe_key.into()), ..crate::support::config() };
    tracing::info!(config = ?config, "starting");
    let app = crate::support::app_with(pool, config);
    let cookie = app.signup("ada@example.com").await;
    let wrong_password = "wrong-password-never-logged";
    login_from(&app, "198.51.100.9", "ada@example.com", wrong_password).await;
    let created = app.post_form("/api/keys/create", &[("name", "svc")], Some(&cookie)).await;
    let key = created.json()["secret"].as_str().unwrap().to_owned();
    let body = r#"{"eventType":"ai_token_consumed","quantity":5}"#;
    assert_eq!(
        app.post_json("/api/usage/record", body, &[("authorization", &format!("Bearer {key}"))]).await.status,
        StatusCode::OK
    );
    let forged = tally::auth::api_key::generate().unwrap().secret;
    app.post_json("/api/usage/record", body, &[("authorization", &format!("Bearer {forged}"))]).await;
    let signature = stripe_double::webhook_signature("whsec_wrong", chrono::Utc::now().timestamp(), b"{}");
    app.post_json(tally::billing::webhook::PATH, "{}", &[("stripe-signature", &signature)]).await;

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("starting"), "the capture works: {text}");
    let session_id = cookie.split('=').nth(1).unwrap();
    for secret in [PASSWORD, wrong_password, key.as_str(), forged.as_str(), stripe_key, WEBHOOK_SECRET, session_id] {
        assert!(!text.contains(secret), "the log contains {secret:?}");
    }
}

/// Finding 6: a crafted `/login?__path=…&__err=…` link cannot put its text in the sign-in form; the errors the
/// server itself sends back to a form without JavaScript (signed) are still shown.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn only_form_errors_the_server_sent_are_shown_on_a_page(pool: PgPool) {
    use base64::Engine;
    let app = app(pool);
    app.signup("ada@example.com").await;
    let forged =
        serde_json::json!({"error": "Your account is locked. Call +1 555 0100 to unlock it.", "code": "invalid"});
    let encoded = base64::engine::general_purpose::URL_SAFE.encode(forged.to_string());
    let page = app.get(&format!("/login?__path=%2Fapi%2Fauth%2Flogin&__err={encoded}"), None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("Call +1 555"), "the forged text is on the page");
    let with_sig = app.get(&format!("/login?__path=%2Fapi%2Fauth%2Flogin&__err={encoded}&__sig=AAAA"), None).await;
    assert!(!with_sig.body.contains("Call +1 555"), "a made-up signature passes");

    // The real thing: a form posted without JavaScript, answered by a redirect back with the error, signed.
    let request = Request::post("/api/auth/login")
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::ACCEPT, "text/html")
        .header(header::REFERER, "http://127.0.0.1:3000/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("email=ada%40example.com&password=wrong+password"))
        .unwrap();
    let reply = app.send(request).await;
    assert!(reply.status.is_redirection(), "{} {}", reply.status, reply.body);
    let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.contains("__err=") && location.contains("__sig="), "{location}");
    let path = location.trim_start_matches("http://127.0.0.1:3000");
    let page = app.get(path, None).await;
    assert!(page.body.contains("email or password is incorrect"), "{}", page.body);
}

/// Finding 9: every `/api/…` error is `{"error","code"}`, also the rejections axum's extractors answer in plain text
/// (a duplicate query parameter on the CSV export, a wrong method).
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn api_errors_are_json_even_from_the_frameworks_extractors(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let duplicate = app
        .get(&format!("{}?period=2026-11-30T15:00:00Z&period=x", tally::usage::history::EXPORT_PATH), Some(&cookie))
        .await;
    assert_eq!(duplicate.status, StatusCode::BAD_REQUEST, "{}", duplicate.body);
    assert!(duplicate.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
    assert_eq!(duplicate.json()["code"], "bad_request");
    let request = Request::delete("/api/stripe/webhook").header(header::HOST, "127.0.0.1:3000").body(Body::empty());
    let wrong_method = app.send(request.unwrap()).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", wrong_method.body);
}
