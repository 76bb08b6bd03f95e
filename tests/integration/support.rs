//! The test harness: the app router on a test database, and a small HTTP client for it.

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use leptos::prelude::LeptosOptions;
use leptos_axum::AxumRouteListing;
use sqlx::PgPool;
use tally::config::Config;
use tally::state::AppState;
use tally::usage::writer::{LimitPolicy, NewEvent};
use tally::usage::AI_TOKENS_EVENT;
use tower::ServiceExt;
use uuid::Uuid;

/// The default usage limit of accounts created by sign-up in these tests.
pub const DEFAULT_LIMIT: i64 = 50_000;
/// The Stripe webhook secret the app under test is configured with.
pub const WEBHOOK_SECRET: &str = "whsec_test_secret";
/// A password that passes validation.
pub const PASSWORD: &str = "correct horse battery";

/// The route list, generated once per test binary: generating it suppresses resource loading process-wide for a
/// moment, which would hang a page rendered by a concurrent test.
fn routes() -> Vec<AxumRouteListing> {
    static ROUTES: OnceLock<Vec<AxumRouteListing>> = OnceLock::new();
    ROUTES.get_or_init(tally::server::routes).clone()
}

/// The tests' meters: AI tokens (limited to [`DEFAULT_LIMIT`], ¥0.05 per 1,000) and images (unlimited, ¥3 each).
pub fn catalog() -> tally::meters::Catalog {
    let toml = format!(
        r#"
        [[meter]]
        event_type = "{AI_TOKENS_EVENT}"
        label = {{ en = "AI tokens", ja = "AIトークン" }}
        unit = {{ en = "tokens", ja = "トークン" }}
        limit = {DEFAULT_LIMIT}
        price = {{ currency = "jpy", unit_amount_decimal = "0.00005" }}

        [[meter]]
        event_type = "image_generated"
        label = {{ en = "Images", ja = "画像生成" }}
        unit = {{ en = "images", ja = "枚" }}
        price = {{ currency = "jpy", unit_amount_decimal = "3" }}
        "#
    );
    tally::meters::Catalog::parse(&toml, "the tests' catalog").expect("the tests' catalog is valid")
}

/// Configuration of the app under test; the database URL is unused because the pool is handed over directly.
pub fn config() -> Config {
    Config {
        database_url: "postgres://unused".into(),
        database_max_connections: 5,
        billing_timezone: "Asia/Tokyo".into(),
        meters_file: None,
        meters: std::sync::Arc::new(catalog()),
        public_url: "http://127.0.0.1:3000".into(),
        trust_forwarded_for: false,
        alert_webhook_allow_private: false,
        // The suite signs up thousands of accounts from one (unknown) address; the limits' own test lowers these.
        signups_per_address_per_hour: 1_000_000,
        signups_per_hour: 1_000_000,
        header_read_timeout_secs: 10,
        body_read_timeout_secs: 30,
        max_header_bytes: 16_384,
        max_connections: 4_096,
        metrics_token: None,
        metrics_addr: None,
        shutdown_seconds: 20,
        ingest_writers: 2,
        openai_api_key: None,
        openai_base_url: "http://127.0.0.1:9/v1".into(),
        openai_model: "gpt-4o-mini".into(),
        stripe_webhook_secret: Some(WEBHOOK_SECRET.into()),
        stripe_webhook_tolerance_seconds: 300,
        stripe_secret_key: None,
        stripe_api_base: "http://127.0.0.1:9".into(),
        delivery: Default::default(),
    }
}

/// The app, as `tally serve` builds it, on `pool`.
pub fn app(pool: PgPool) -> TestApp {
    app_with(pool, config())
}

/// The app with a configuration of the test's choosing.
pub fn app_with(pool: PgPool, config: Config) -> TestApp {
    app_with_site(pool, config, "target/site")
}

/// The app serving its static files from `site_root`.
pub fn app_with_site(pool: PgPool, config: Config, site_root: &str) -> TestApp {
    app_with_options(pool, config, LeptosOptions::builder().output_name("tally").site_root(site_root).build())
}

/// The app with these site options.
pub fn app_with_options(pool: PgPool, config: Config, leptos_options: LeptosOptions) -> TestApp {
    let state = AppState::new(leptos_options, pool.clone(), config);
    TestApp { router: tally::server::router(state.clone(), routes()), pool, state }
}

/// The router under test plus its pool, with helpers that speak HTTP to it.
pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
    pub state: AppState,
}

/// A response with its body read.
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `name=value` pair of the session cookie this response sets, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.session_cookie_header().map(|v| v.split(';').next().unwrap_or_default().to_owned())
    }

    /// The whole `Set-Cookie` header of the session cookie.
    pub fn session_cookie_header(&self) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(tally::server::SESSION_COOKIE))
            .map(str::to_owned)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl TestApp {
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response: Response<Body> = self.router.clone().oneshot(request).await.expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// POSTs a form to a server function (`/api/<endpoint>`), with an optional cookie.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)], cookie: Option<&str>) -> Reply {
        let body = form.iter().map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v))).collect::<Vec<_>>().join("&");
        let mut request = Request::post(path)
            .header(header::HOST, "127.0.0.1:3000")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        // As a browser navigating: redirects are only real 302s for requests that accept HTML.
        let mut request = Request::get(path).header(header::HOST, "127.0.0.1:3000").header(header::ACCEPT, "text/html");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    /// Signs up `email` and returns the session cookie.
    /// A browser's GET with these extra headers (a cookie, a language).
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(path).header(header::HOST, "127.0.0.1:3000").header(header::ACCEPT, "text/html");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    pub async fn signup(&self, email: &str) -> String {
        let reply = self.post_form("/api/auth/signup", &[("email", email), ("password", PASSWORD)], None).await;
        assert_eq!(reply.status, StatusCode::OK, "signup failed: {}", reply.body);
        reply.session_cookie().expect("signup sets a session cookie")
    }

    pub async fn user_id(&self, email: &str) -> Uuid {
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&self.pool)
            .await
            .expect("user exists")
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&self.pool).await.unwrap()
    }

    /// Records usage through the writer (as the API does, minus HTTP), at a chosen time.
    pub async fn insert_usage(&self, user_id: Uuid, event_type: &str, quantity: i64, occurred_at: &str) {
        let event = NewEvent {
            event_type: event_type.into(),
            quantity,
            metadata: serde_json::json!({}),
            idempotency_key: None,
            occurred_at: occurred_at.parse().expect("RFC 3339 time"),
        };
        let caller = tally::auth::caller::Caller::User(user_id);
        self.state.writer.submit(caller, vec![event], LimitPolicy::RecordAnyway).await.expect("recorded");
    }

    /// Creates an API key for `email`'s account and returns its secret.
    pub async fn api_key(&self, email: &str) -> String {
        let user = self.user_id(email).await;
        tally::auth::api_key::create(&self.pool, user, "test").await.expect("key").1
    }

    /// POSTs JSON to `path` with optional extra headers.
    pub async fn post_json(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        // As an HTTP client sends it: with its length, which is what the body size limit answers 413 on.
        let mut request = Request::post(path)
            .header(header::HOST, "127.0.0.1:3000")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::from(body.to_owned())).unwrap()).await
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// No response body may leak SQL, a Rust panic or a stack trace.
pub fn assert_no_internals(body: &str) {
    for needle in ["SELECT", "INSERT", "constraint", "sqlx", "panicked", "stack backtrace", "src/", "postgres://"] {
        assert!(!body.contains(needle), "response leaks {needle:?}: {body}");
    }
}

/// The calendar month of `timezone` containing `at`, straight from the SQL function the product calls.
pub async fn calendar_month(
    pool: &PgPool,
    at: chrono::DateTime<chrono::Utc>,
    timezone: &str,
) -> tally::usage::period::BillingPeriod {
    sqlx::query_as(
        "SELECT month_start AS start, month_end AS \"end\", 'calendar' AS kind,
                to_char(month_start AT TIME ZONE $2, 'YYYY-MM-DD') AS first_day,
                to_char((month_end - interval '1 microsecond') AT TIME ZONE $2, 'YYYY-MM-DD') AS last_day,
                $2 AS timezone
         FROM calendar_month_at($1, $2)",
    )
    .bind(at)
    .bind(timezone)
    .fetch_one(pool)
    .await
    .expect("calendar_month_at")
}

/// The exact sum of `user_id`'s events of `event_type` in `period`, from the events themselves: the slow, obviously
/// right answer the counters are checked against.
pub async fn recount(
    pool: &PgPool,
    user_id: Uuid,
    event_type: &str,
    period: &tally::usage::period::BillingPeriod,
) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(quantity), 0)::bigint FROM usage_events
         WHERE user_id = $1 AND event_type = $2 AND occurred_at >= $3 AND occurred_at < $4",
    )
    .bind(user_id)
    .bind(event_type)
    .bind(period.start)
    .bind(period.end)
    .fetch_one(pool)
    .await
    .expect("recount")
}

/// Saves `price_id` as the Stripe price of `event_type`'s meter, as `tally stripe setup` does (a per-unit JPY price).
pub async fn save_price(pool: &PgPool, event_type: &str, price_id: &str, unit_amount_decimal: &str) {
    let json = serde_json::json!({
        "id": price_id, "object": "price", "product": "prod_test", "currency": "jpy", "billing_scheme": "per_unit",
        "unit_amount_decimal": unit_amount_decimal, "recurring": {"usage_type": "metered", "meter": "mtr_test"}
    });
    let price = tally::billing::stripe::Price::from_json(&json).expect("a price");
    tally::billing::prices::save(pool, event_type, &price).await.expect("save the price");
}

/// Gives `user` (every account with `None`) a token limit of its own (`None`: unlimited), as `tally user set-limit`
/// does.
pub async fn set_token_limit(pool: &PgPool, user: Option<uuid::Uuid>, limit: Option<i64>) {
    sqlx::query(
        "INSERT INTO usage_limits (user_id, event_type, usage_limit)
         SELECT id, $3, $2 FROM users WHERE $1::uuid IS NULL OR id = $1
         ON CONFLICT (user_id, event_type) DO UPDATE SET usage_limit = EXCLUDED.usage_limit",
    )
    .bind(user)
    .bind(limit)
    .bind(AI_TOKENS_EVENT)
    .execute(pool)
    .await
    .expect("set the token limit");
}

/// DATABASE_URL pointed at the test's own database (for the `tally` binary the tests run).
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool.connect_options().get_database().expect("test database name").to_owned();
    let (without_query, query) = base.split_once('?').map_or((base.as_str(), None), |(a, q)| (a, Some(q)));
    let server = without_query.rsplit_once('/').map_or(without_query, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}
