//! Bad input, table-driven: every public endpoint and server function against malformed, mistyped, oversized and
//! unauthenticated requests. Each row must get its 4xx with a readable `error`, store nothing, and leak nothing.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use sqlx::PgPool;

use crate::support::{app, assert_no_internals, TestApp, PASSWORD, WEBHOOK_SECRET};

/// Who a row calls as.
#[derive(Clone, Copy, Debug)]
enum As {
    Nobody,
    /// The signed-in browser of the table's user.
    Session,
    /// The table's user's live API key.
    Key,
    /// A well-formed key with a valid checksum that was never issued.
    ForgedKey,
    /// A key of the right shape whose checksum is wrong.
    MangledKey,
    /// The user's key after it was revoked.
    RevokedKey,
    /// A session cookie the server never issued (or that expired and was deleted).
    UnknownSession,
}

struct Case {
    what: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    caller: As,
    status: StatusCode,
}

fn json(what: &'static str, path: &'static str, body: impl Into<Vec<u8>>, caller: As, status: u16) -> Case {
    Case {
        what,
        path,
        content_type: Some("application/json"),
        body: body.into(),
        caller,
        status: StatusCode::from_u16(status).unwrap(),
    }
}

fn form(what: &'static str, path: &'static str, body: impl Into<Vec<u8>>, caller: As, status: u16) -> Case {
    Case { content_type: Some("application/x-www-form-urlencoded"), ..json(what, path, body, caller, status) }
}

const RECORD: &str = "/api/usage/record";
const BATCH: &str = "/api/usage/batch";
const AI: &str = "/api/ai/generate";

fn nested(depth: usize) -> String {
    format!(
        r#"{{"eventType":"ai_token_consumed","quantity":1,"metadata":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

fn cases() -> Vec<Case> {
    use As::*;
    let ok_event = r#"{"eventType":"ai_token_consumed","quantity":5}"#;
    let mut invalid_utf8 = br#"{"eventType":"ai_token_consumed","quantity":5,"metadata":{"x":""#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    invalid_utf8.extend_from_slice(br#""}}"#);
    let oversized = format!(
        r#"{{"eventType":"ai_token_consumed","quantity":5,"metadata":{{"x":"{}"}}}}"#,
        "a".repeat(tally::server::MAX_BODY_BYTES)
    );
    let big_batch = format!(r#"{{"events":[{}]}}"#, vec![ok_event; 1001].join(","));
    vec![
        // Authentication, on the routes that accept keys.
        json("no credentials", RECORD, ok_event, Nobody, 401),
        json("forged key", RECORD, ok_event, ForgedKey, 401),
        json("key with a bad checksum", RECORD, ok_event, MangledKey, 401),
        json("revoked key", RECORD, ok_event, RevokedKey, 401),
        json("unknown session", RECORD, ok_event, UnknownSession, 401),
        json("forged key, batch", BATCH, format!(r#"{{"events":[{ok_event}]}}"#), ForgedKey, 401),
        json("revoked key, batch", BATCH, format!(r#"{{"events":[{ok_event}]}}"#), RevokedKey, 401),
        json("no credentials, AI", AI, r#"{"prompt":"hi"}"#, Nobody, 401),
        json("forged key, AI", AI, r#"{"prompt":"hi"}"#, ForgedKey, 401),
        // Quantities.
        json("negative", RECORD, r#"{"eventType":"ai_token_consumed","quantity":-5}"#, Key, 422),
        json("zero", RECORD, r#"{"eventType":"ai_token_consumed","quantity":0}"#, Key, 422),
        json("fraction", RECORD, r#"{"eventType":"ai_token_consumed","quantity":1.5}"#, Key, 422),
        json("exponent", RECORD, r#"{"eventType":"ai_token_consumed","quantity":1e3}"#, Key, 422),
        json("past i64", RECORD, r#"{"eventType":"ai_token_consumed","quantity":9223372036854775808}"#, Key, 422),
        json("past 10^15", RECORD, r#"{"eventType":"ai_token_consumed","quantity":1000000000000001}"#, Key, 422),
        // Past what a JSON number parser holds: refused while reading, before any check of ours.
        json(
            "huge",
            RECORD,
            format!(r#"{{"eventType":"ai_token_consumed","quantity":1{}}}"#, "0".repeat(400)),
            Key,
            400,
        ),
        json("quantity as text", RECORD, r#"{"eventType":"ai_token_consumed","quantity":"5"}"#, Key, 400),
        json("quantity null", RECORD, r#"{"eventType":"ai_token_consumed","quantity":null}"#, Key, 400),
        // Shapes.
        json("unknown event type", RECORD, r#"{"eventType":"gpu_seconds","quantity":5}"#, Key, 422),
        json("event type as number", RECORD, r#"{"eventType":7,"quantity":5}"#, Key, 400),
        json("missing quantity", RECORD, r#"{"eventType":"ai_token_consumed"}"#, Key, 400),
        json("missing event type", RECORD, r#"{"quantity":5}"#, Key, 400),
        json("duplicate key", RECORD, r#"{"eventType":"ai_token_consumed","quantity":5,"quantity":6}"#, Key, 400),
        json("array body", RECORD, r#"[{"eventType":"ai_token_consumed","quantity":5}]"#, Key, 400),
        json("empty body", RECORD, "", Key, 400),
        json("truncated JSON", RECORD, r#"{"eventType":"ai_token_consumed","quan"#, Key, 400),
        json("invalid UTF-8", RECORD, invalid_utf8, Key, 400),
        json("nested 100,000 deep", RECORD, nested(100_000), Key, 400),
        json(
            "metadata not an object",
            RECORD,
            r#"{"eventType":"ai_token_consumed","quantity":5,"metadata":[1]}"#,
            Key,
            422,
        ),
        json("oversized", RECORD, oversized, Key, 413),
        Case { content_type: Some("text/plain"), ..json("text/plain", RECORD, ok_event, Key, 415) },
        Case { content_type: None, ..json("no content type", RECORD, ok_event, Key, 415) },
        Case {
            content_type: Some("text/plain"),
            ..json("text/plain batch", BATCH, format!(r#"{{"events":[{ok_event}]}}"#), Key, 415)
        },
        Case { content_type: Some("text/plain"), ..json("text/plain AI", AI, r#"{"prompt":"hi"}"#, Key, 415) },
        form("form instead of JSON", RECORD, "eventType=ai_token_consumed&quantity=5", Key, 400),
        // Batches.
        json("empty batch", BATCH, r#"{"events":[]}"#, Key, 422),
        json("1,001 events", BATCH, big_batch, Key, 422),
        json("batch not a list", BATCH, r#"{"events":{"eventType":"ai_token_consumed"}}"#, Key, 400),
        json(
            "one bad event in a batch",
            BATCH,
            format!(r#"{{"events":[{ok_event},{{"eventType":"ai_token_consumed","quantity":-1}}]}}"#),
            Key,
            422,
        ),
        // The AI route.
        json("empty prompt", AI, r#"{"prompt":""}"#, Key, 422),
        json("prompt not text", AI, r#"{"prompt":{"a":1}}"#, Key, 400),
        json("huge prompt", AI, format!(r#"{{"prompt":"{}"}}"#, "word ".repeat(100_000)), Key, 422),
        // Accounts.
        form("signup without password", "/api/auth/signup", "email=x%40example.com", Nobody, 400),
        form(
            "signup with a bad email",
            "/api/auth/signup",
            format!("email=nope&password={}", PASSWORD.replace(' ', "+")),
            Nobody,
            422,
        ),
        form("signup with a short password", "/api/auth/signup", "email=x%40example.com&password=short", Nobody, 422),
        form(
            "signup with invalid UTF-8",
            "/api/auth/signup",
            b"email=x%40example.com&password=\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6".to_vec(),
            Nobody,
            400,
        ),
        form(
            "signup with a duplicate field",
            "/api/auth/signup",
            format!("email=x%40example.com&email=y%40example.com&password={}", PASSWORD.replace(' ', "+")),
            Nobody,
            400,
        ),
        json(
            "signup as JSON",
            "/api/auth/signup",
            format!(r#"{{"email":"x@example.com","password":"{PASSWORD}"}}"#),
            Nobody,
            400,
        ),
        form("login without email", "/api/auth/login", "password=x", Nobody, 400),
        // Session-only server functions.
        form("create key signed out", "/api/keys/create", "name=x", Nobody, 401),
        form("create key with an API key", "/api/keys/create", "name=x", Key, 401),
        form("create key with an empty name", "/api/keys/create", "name=", Session, 422),
        form("create key with a huge name", "/api/keys/create", format!("name={}", "n".repeat(10_000)), Session, 422),
        form("revoke with a non-UUID", "/api/keys/revoke", "id=not-a-uuid", Session, 400),
        form(
            "revoke someone's made-up key",
            "/api/keys/revoke",
            "id=00000000-0000-4000-8000-000000000000",
            Session,
            404,
        ),
        form("alert webhook signed out", "/api/usage/alert-webhook", "url=https%3A%2F%2Fexample.com", Nobody, 401),
        form("alert webhook not a URL", "/api/usage/alert-webhook", "url=not+a+url", Session, 422),
        form("alert webhook to a file", "/api/usage/alert-webhook", "url=file%3A%2F%2F%2Fetc%2Fpasswd", Session, 422),
        // Server-side request forgery: every form of an address inside is refused when saved (outbound.rs's unit
        // tests hold the full list; these go through the server function).
        form(
            "alert webhook to the metadata service",
            "/api/usage/alert-webhook",
            "url=http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data%2F",
            Session,
            422,
        ),
        form(
            "alert webhook to loopback",
            "/api/usage/alert-webhook",
            "url=http%3A%2F%2F127.0.0.1%3A8080%2F",
            Session,
            422,
        ),
        form(
            "alert webhook to decimal loopback",
            "/api/usage/alert-webhook",
            "url=http%3A%2F%2F2130706433%2F",
            Session,
            422,
        ),
        form("alert webhook to short loopback", "/api/usage/alert-webhook", "url=http%3A%2F%2F127.1%2F", Session, 422),
        form(
            "alert webhook to IPv6 loopback",
            "/api/usage/alert-webhook",
            "url=http%3A%2F%2F%5B%3A%3A1%5D%2F",
            Session,
            422,
        ),
        form(
            "alert webhook to mapped IPv6",
            "/api/usage/alert-webhook",
            "url=http%3A%2F%2F%5B%3A%3Affff%3A127.0.0.1%5D%2F",
            Session,
            422,
        ),
        form("alert webhook to 0.0.0.0", "/api/usage/alert-webhook", "url=http%3A%2F%2F0.0.0.0%2F", Session, 422),
        form("alert webhook to localhost", "/api/usage/alert-webhook", "url=http%3A%2F%2Flocalhost%2F", Session, 422),
        form(
            "alert webhook to a private network",
            "/api/usage/alert-webhook",
            "url=http%3A%2F%2F192.168.1.1%2F",
            Session,
            422,
        ),
        form(
            "alert webhook with user@host",
            "/api/usage/alert-webhook",
            "url=http%3A%2F%2Fexample.com%40127.0.0.1%2F",
            Session,
            422,
        ),
        // Control characters in every string field, and every field at ten times its limit (issue 16, finding 5):
        // a clear 422 before the database, never a 500, and no error quotes more than a short excerpt.
        json(
            "NUL in a metadata value",
            RECORD,
            r#"{"eventType":"ai_token_consumed","quantity":5,"metadata":{"a":"x\u0000y"}}"#,
            Key,
            422,
        ),
        json(
            "NUL in a metadata key",
            RECORD,
            r#"{"eventType":"ai_token_consumed","quantity":5,"metadata":{"a\u0000":1}}"#,
            Key,
            422,
        ),
        json(
            "NUL deep in metadata",
            BATCH,
            r#"{"events":[{"eventType":"ai_token_consumed","quantity":5,"metadata":{"a":[{"b":"\u0000"}]}}]}"#,
            Key,
            422,
        ),
        json(
            "control characters in the event type",
            RECORD,
            r#"{"eventType":"ai_token\u0000\u001b[31m","quantity":5}"#,
            Key,
            422,
        ),
        json(
            "control characters in the idempotency key",
            BATCH,
            r#"{"events":[{"eventType":"ai_token_consumed","quantity":5,"idempotencyKey":"k\u0000"}]}"#,
            Key,
            422,
        ),
        json(
            "a 100 kB event type",
            RECORD,
            format!(r#"{{"eventType":"{}","quantity":5}}"#, "t".repeat(100_000)),
            Key,
            422,
        ),
        json(
            "a 10x idempotency key",
            BATCH,
            format!(
                r#"{{"events":[{{"eventType":"ai_token_consumed","quantity":5,"idempotencyKey":"{}"}}]}}"#,
                "k".repeat(2_550)
            ),
            Key,
            422,
        ),
        json(
            "10x metadata",
            RECORD,
            format!(r#"{{"eventType":"ai_token_consumed","quantity":5,"metadata":{{"m":"{}"}}}}"#, "m".repeat(40_960)),
            Key,
            422,
        ),
        json("control characters in the prompt", AI, r#"{"prompt":"\u0000"}"#, Key, 422),
        form("control characters in a key name", "/api/keys/create", "name=a%00b", Session, 422),
        form(
            "control characters in an email",
            "/api/auth/signup",
            format!("email=a%00%40example.com&password={}", PASSWORD.replace(' ', "+")),
            Nobody,
            422,
        ),
        form(
            "a 10x email",
            "/api/auth/signup",
            format!("email={}%40example.com&password={}", "e".repeat(2_540), PASSWORD.replace(' ', "+")),
            Nobody,
            422,
        ),
        form(
            "a 10x password",
            "/api/auth/signup",
            format!("email=long%40example.com&password={}", "p".repeat(2_560)),
            Nobody,
            422,
        ),
        form(
            "a 10x alert URL",
            "/api/usage/alert-webhook",
            format!("url=https%3A%2F%2Fexample.com%2F{}", "u".repeat(20_000)),
            Session,
            422,
        ),
        form(
            "an unparsable 10x alert URL",
            "/api/usage/alert-webhook",
            format!("url=%3A{}", "u".repeat(20_000)),
            Session,
            422,
        ),
        form("a 10x period", "/api/usage/history", format!("period={}", "p".repeat(10_000)), Session, 422),
        form("history signed out", "/api/usage/history", "", Nobody, 401),
        form("history of a made-up period", "/api/usage/history", "period=1999-01-01T00%3A00%3A00Z", Session, 422),
        form("history of garbage", "/api/usage/history", "period=%27%3B+DROP+TABLE+users%3B--", Session, 422),
        form("summary signed out", "/api/usage/summary", "", Nobody, 401),
        form("summary with an API key", "/api/usage/summary", "", Key, 401),
        form("alerts signed out", "/api/usage/alerts", "", Nobody, 401),
        form("billing signed out", "/api/billing/overview", "", Nobody, 401),
        form("checkout signed out", "/api/billing/checkout", "", Nobody, 401),
        form("keys signed out", "/api/keys/list", "", Nobody, 401),
        form("unknown server function", "/api/usage/delete_everything", "", Session, 404),
    ]
}

/// The rows a refused request must not have touched.
const TABLES: [&str; 7] =
    ["usage_events", "meter_event_outbox", "api_keys", "users", "usage_alerts", "stripe_events", "login_failures"];

async fn snapshot(app: &TestApp) -> Vec<(String, i64)> {
    let mut counts = Vec::new();
    for table in TABLES {
        counts.push((table.to_owned(), app.count(table).await));
    }
    let webhook: Option<String> =
        sqlx::query_scalar("SELECT alert_webhook_url FROM users LIMIT 1").fetch_one(&app.pool).await.unwrap();
    counts.push((format!("alert_webhook_url={webhook:?}"), 0));
    counts
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn every_bad_request_is_refused_with_its_status_and_stores_nothing(pool: PgPool) {
    let app = app(pool);
    let session = app.signup("ada@example.com").await;
    let key = app.api_key("ada@example.com").await;
    let user = app.user_id("ada@example.com").await;
    let (revoked_info, revoked) = tally::auth::api_key::create(&app.pool, user, "old").await.unwrap();
    tally::auth::api_key::revoke(&app.pool, user, revoked_info.id).await.unwrap();
    let forged = tally::auth::api_key::generate().unwrap().secret;
    let mut mangled = key.clone();
    let last = mangled.pop().unwrap();
    mangled.push(if last == 'a' { 'b' } else { 'a' });
    let before = snapshot(&app).await;

    let mut failures = Vec::new();
    for case in cases() {
        let mut request = Request::post(case.path).header(header::HOST, "127.0.0.1:3000");
        if let Some(content_type) = case.content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        request = request.header(header::CONTENT_LENGTH, case.body.len());
        request = match case.caller {
            As::Nobody => request,
            As::Session => request.header(header::COOKIE, &session),
            As::UnknownSession => request.header(header::COOKIE, "tally_session=AAAAAAAAAAAAAAAAAAAAAA"),
            As::Key => request.header(header::AUTHORIZATION, format!("Bearer {key}")),
            As::ForgedKey => request.header(header::AUTHORIZATION, format!("Bearer {forged}")),
            As::MangledKey => request.header(header::AUTHORIZATION, format!("Bearer {mangled}")),
            As::RevokedKey => request.header(header::AUTHORIZATION, format!("Bearer {revoked}")),
        };
        let reply = app.send(request.body(Body::from(case.body)).unwrap()).await;
        assert_no_internals(&reply.body);
        for secret in [&key, &revoked, &forged] {
            assert!(!reply.body.contains(secret.as_str()), "{}: the reply contains a key", case.what);
        }
        let message = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|body| body["error"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if reply.status != case.status || message.len() < 8 || reply.body.len() > 1_024 {
            failures.push(format!("{}: {} {:?} (wanted {})", case.what, reply.status, reply.body, case.status));
        }
    }
    assert!(failures.is_empty(), "{} rows failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(snapshot(&app).await, before, "a refused request changed the database");
}

/// The Stripe webhook endpoint: bodies that are not Stripe's, signed or not.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_webhook_refuses_what_stripe_did_not_send(pool: PgPool) {
    let app = app(pool);
    let now = chrono::Utc::now().timestamp();
    let sign = |body: &[u8]| stripe_double::webhook_signature(WEBHOOK_SECRET, now, body);
    let signed = |what: &'static str, body: &[u8], status: u16| (what, body.to_vec(), Some(sign(body)), status);
    let rows: Vec<(&str, Vec<u8>, Option<String>, u16)> = vec![
        signed("signed garbage", b"not json", 400),
        signed("signed invalid UTF-8", b"{\"id\":\"evt_1\",\xff}", 400),
        signed("signed array", b"[1,2,3]", 400),
        signed("signed event without id", br#"{"type":"invoice.paid","created":1,"data":{"object":{}}}"#, 400),
        signed("signed nested bomb", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes(), 400),
        ("unsigned event", br#"{"id":"evt_1","type":"invoice.paid"}"#.to_vec(), None, 400),
        ("signature of another body", br#"{"id":"evt_1"}"#.to_vec(), Some(sign(b"{}")), 400),
        ("signature header garbage", b"{}".to_vec(), Some("t=abc,v1=zz".into()), 400),
        (
            "stale signature",
            b"{}".to_vec(),
            Some(stripe_double::webhook_signature(WEBHOOK_SECRET, now - 3600, b"{}")),
            400,
        ),
    ];
    for (what, body, signature, status) in rows {
        let mut request = Request::post(tally::billing::webhook::PATH)
            .header(header::HOST, "127.0.0.1:3000")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        let reply = app.send(request.body(Body::from(body)).unwrap()).await;
        assert_eq!(reply.status.as_u16(), status, "{what}: {}", reply.body);
        assert!(reply.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {}", reply.body);
        assert_no_internals(&reply.body);
        assert!(!reply.body.contains(WEBHOOK_SECRET), "{what}: leaks the secret");
    }
    assert_eq!(app.count("stripe_events").await, 0);
    assert_eq!(app.count("billing_cycles").await, 0);
}

/// The plain GET routes: signed out, or with parameters that are not theirs.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_get_routes_refuse_bad_parameters(pool: PgPool) {
    let app = app(pool);
    let session = app.signup("ada@example.com").await;
    let rows: [(&str, Option<&str>, u16); 6] = [
        (tally::usage::EXPORT_PATH, None, 401),
        ("/api/usage/export.csv?period=garbage", Some(&session), 422),
        ("/api/usage/export.csv?period=1999-01-01T00:00:00Z", Some(&session), 422),
        (tally::usage::LIVE_PATH, None, 401),
        ("/api/usage/live", Some("tally_session=AAAAAAAAAAAAAAAAAAAAAA"), 401),
        ("/language/xx", None, 422),
    ];
    for (path, cookie, status) in rows {
        let mut request = Request::get(path).header(header::HOST, "127.0.0.1:3000");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let reply = app.send(request.body(Body::empty()).unwrap()).await;
        assert_eq!(reply.status.as_u16(), status, "{path}: {}", reply.body);
        assert!(reply.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{path}: {}", reply.body);
        assert_no_internals(&reply.body);
    }
}

/// A body sent in chunks, without a length, is cut off at the limit all the same.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn an_oversized_chunked_body_is_413(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let key = app.api_key("ada@example.com").await;
    let filler =
        format!(r#"{{"eventType":"ai_token_consumed","quantity":5,"metadata":{{"x":"{}"}}}}"#, "a".repeat(2 << 20));
    let chunks: Vec<Result<String, std::io::Error>> =
        filler.as_bytes().chunks(64 * 1024).map(|c| Ok(String::from_utf8_lossy(c).into_owned())).collect();
    let request = Request::post(RECORD)
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", reply.body);
    assert_eq!(reply.json()["code"], "too_large");
    assert_eq!(app.count("usage_events").await, 0);
}

/// A database that refuses writes (read-only mode; a full disk takes the same path) gets 503 with a message that
/// says how to retry, and the API key's request stores nothing.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_read_only_database_is_503_not_a_generic_error(pool: PgPool) {
    let setup = app(pool.clone());
    setup.signup("ada@example.com").await;
    let key = setup.api_key("ada@example.com").await;
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&pool).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{database}\" SET default_transaction_read_only = on"))
        .execute(&pool)
        .await
        .unwrap();
    // New connections see the setting; the app gets a pool of its own.
    let read_only = sqlx::postgres::PgPoolOptions::new().connect_with((*pool.connect_options()).clone()).await.unwrap();
    let app = crate::support::app(read_only);
    let reply = app
        .post_json(
            RECORD,
            r#"{"eventType":"ai_token_consumed","quantity":5}"#,
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.body);
    assert_eq!(reply.json()["code"], "unavailable");
    assert!(reply.json()["error"].as_str().unwrap().contains("Idempotency-Key"), "{}", reply.body);
    assert_no_internals(&reply.body);
    let signup = app.post_form("/api/auth/signup", &[("email", "bob@example.com"), ("password", PASSWORD)], None).await;
    assert_eq!(signup.status, StatusCode::SERVICE_UNAVAILABLE, "{}", signup.body);

    sqlx::query(&format!("ALTER DATABASE \"{database}\" RESET default_transaction_read_only"))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(setup.count("usage_events").await, 0);
    assert_eq!(setup.count("users").await, 1);
}
