//! The harness Tally's three load tools share (`benches/perf.rs`, `benches/delivery.rs`, `benches/faults.rs`):
//! their argument parsing, throwaway databases, customer accounts, the Stripe double they drive and the way they
//! print latencies. Figures only: nothing here asserts timing.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use stripe_double::{StripeDouble, DEFAULT_SECRET_KEY};
use uuid::Uuid;

/// A suite's arguments, parsed with clap, without the `--bench` that `cargo bench` adds.
pub fn options<T: clap::Parser>() -> T {
    T::parse_from(std::env::args().filter(|a| a != "--bench"))
}

/// A fresh, migrated database `name` on the cluster `admin_url` points at (dropped first if a previous run left
/// it), with its pool and URL.
pub async fn fresh_database(admin_url: &str, name: &str, max_connections: u32) -> (PgPool, String) {
    let admin = PgPoolOptions::new().max_connections(1).connect(admin_url).await.expect("admin connection");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    admin.close().await;
    let (server, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
    let url = if query.is_empty() { format!("{base}/{name}") } else { format!("{base}/{name}?{query}") };
    let pool = PgPoolOptions::new().max_connections(max_connections).connect(&url).await.expect("connect");
    tally::db::migrate(&pool).await.expect("migrate");
    (pool, url)
}

/// An account the load sends usage for, with its API key as an `Authorization` value.
pub struct Customer {
    pub user_id: Uuid,
    pub auth: String,
}

/// Registers `email` with `password` and an optional usage limit, and gives it an API key.
pub async fn customer(pool: &PgPool, email: &str, password: &str, limit: Option<i64>) -> Customer {
    let own = [(tally::usage::AI_TOKENS_EVENT.to_owned(), limit)];
    let user_id = tally::auth::users::register(pool, email, password, &own).await.expect("create user");
    let (_, secret) = tally::auth::api_key::create(pool, user_id, "load").await.expect("create key");
    Customer { user_id, auth: format!("Bearer {secret}") }
}

/// The Stripe double on a free local port with a meter for each of `meters`, serving in the background.
pub async fn stripe_double(meters: &[&str]) -> (StripeDouble, String) {
    let double = StripeDouble::new(DEFAULT_SECRET_KEY);
    for meter in meters {
        double.add_meter(meter);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(stripe_double::serve(listener, double.clone()));
    (double, url)
}

/// The `p`-quantile (0–1) of sorted latencies, by the nearest-rank method.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// "p50 …, p99 …" of sorted latencies.
pub fn p50_p99(sorted: &[Duration]) -> String {
    format!("p50 {}, p99 {}", ms(percentile(sorted, 0.5)), ms(percentile(sorted, 0.99)))
}

/// A rate or count rounded to a whole number, with thousands separators.
pub fn thousands(n: f64) -> String {
    tally::format::thousands(n.round() as i64)
}

/// The shipped meter catalog without limits (a load must never be refused for its volume), written once to a
/// temporary file; its path, for `TALLY_METERS_FILE`.
pub fn unlimited_meters_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let shipped = include_str!("../../../meters.toml");
        let unlimited: String =
            shipped.lines().filter(|line| !line.starts_with("limit")).map(|line| format!("{line}\n")).collect();
        let path = std::env::temp_dir().join(format!("tally-bench-meters-{}.toml", std::process::id()));
        std::fs::write(&path, unlimited).expect("write the catalog");
        path.display().to_string()
    })
    .clone()
}
