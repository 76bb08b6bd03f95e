//! Ingest load tool: drives a running Tally with many API-key clients, then checks that PostgreSQL holds exactly
//! what was acknowledged. Prints events/s and latency percentiles; asserts no timing.
//!
//! Run it through `scripts/bench` (builds release, starts a durable throwaway PostgreSQL and the server), or by
//! hand against your own server:
//!   TALLY_BENCH_URL=http://127.0.0.1:3000 DATABASE_URL=postgres://… \
//!   cargo bench --features ssr --bench ingest -- [--clients 64] [--seconds 10] [--batch-size 100]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

struct Options {
    base_url: String,
    clients: Vec<usize>,
    batch_clients: usize,
    batch_size: usize,
    seconds: u64,
}

fn options() -> Options {
    let mut options = Options {
        base_url: std::env::var("TALLY_BENCH_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into()),
        clients: vec![1, 16, 64, 256],
        batch_clients: 8,
        batch_size: 500,
        seconds: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--clients" => options.clients = value.split(',').map(|c| c.parse().expect("--clients N[,N…]")).collect(),
            "--batch-clients" => options.batch_clients = value.parse().expect("--batch-clients N"),
            "--batch-size" => options.batch_size = value.parse().expect("--batch-size N"),
            "--seconds" => options.seconds = value.parse().expect("--seconds N"),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    options
}

/// One simulated customer: an account with an API key.
struct Customer {
    user_id: Uuid,
    auth: String,
}

async fn customers(pool: &PgPool, run: &str, count: usize) -> Vec<Customer> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let email = format!("bench-{run}-{i}@bench.test");
        // A limit far above what the run can reach: the limit check (and its lock) is part of what is measured.
        let user_id = tally::auth::users::register(pool, &email, "bench password", Some(1_000_000_000_000_000))
            .await
            .expect("create bench user");
        let (_, secret) = tally::auth::api_key::create(pool, user_id, "bench").await.expect("create key");
        out.push(Customer { user_id, auth: format!("Bearer {secret}") });
    }
    out
}

/// What one client got acknowledged, and how long each request took.
#[derive(Default)]
struct Tally {
    events: u64,
    quantity: i64,
    errors: u64,
    latencies: Vec<Duration>,
}

async fn drive(
    http: reqwest::Client,
    url: String,
    customer: Arc<Customer>,
    deadline: Instant,
    batch_size: usize,
) -> Tally {
    let mut tally = Tally::default();
    let mut n: i64 = 0;
    while Instant::now() < deadline {
        let (body, quantity, events) = if batch_size == 0 {
            n += 1;
            (json!({"eventType": "ai_token_consumed", "quantity": n % 1000 + 1}), n % 1000 + 1, 1)
        } else {
            let quantities: Vec<i64> = (0..batch_size as i64).map(|i| (n + i) % 1000 + 1).collect();
            n += batch_size as i64;
            let events: Vec<_> =
                quantities.iter().map(|q| json!({"eventType": "ai_token_consumed", "quantity": q})).collect();
            (json!({ "events": events }), quantities.iter().sum(), batch_size as u64)
        };
        let started = Instant::now();
        let response = http.post(&url).header("authorization", &customer.auth).json(&body).send().await;
        let ok = match response {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        tally.latencies.push(started.elapsed());
        if ok {
            tally.events += events;
            tally.quantity += quantity;
        } else {
            tally.errors += 1;
        }
    }
    tally
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Runs one load phase and checks the database against what was acknowledged; returns the printed row.
async fn phase(
    pool: &PgPool,
    http: &reqwest::Client,
    options: &Options,
    label: &str,
    clients: usize,
    batch_size: usize,
) -> String {
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let customers: Vec<Arc<Customer>> = customers(pool, &run, clients).await.into_iter().map(Arc::new).collect();
    let path = if batch_size == 0 { "/api/usage/record" } else { "/api/usage/batch" };
    let url = format!("{}{path}", options.base_url);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let tasks: Vec<_> = customers
        .iter()
        .map(|c| tokio::spawn(drive(http.clone(), url.clone(), c.clone(), deadline, batch_size)))
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();

    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    latencies.sort();
    let events: u64 = results.iter().map(|r| r.events).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();

    // The database must hold exactly what was acknowledged: per customer, the same count and the same sum.
    let mut mismatches = 0;
    for (customer, result) in customers.iter().zip(&results) {
        let (count, sum): (i64, i64) =
            sqlx::query_as("SELECT count(*), COALESCE(sum(quantity), 0)::bigint FROM usage_events WHERE user_id = $1")
                .bind(customer.user_id)
                .fetch_one(pool)
                .await
                .expect("count events");
        let counters: i64 =
            sqlx::query_scalar("SELECT COALESCE(sum(quantity), 0)::bigint FROM usage_period_totals WHERE user_id = $1")
                .bind(customer.user_id)
                .fetch_one(pool)
                .await
                .expect("read counters");
        if count as u64 != result.events || sum != result.quantity || counters != sum {
            mismatches += 1;
            eprintln!(
                "MISMATCH {}: acknowledged {} events / {} units; database {count} / {sum}; counters {counters}",
                customer.user_id, result.events, result.quantity
            );
        }
    }
    format!(
        "| {label:<22} | {clients:>7} | {:>11.0} | {:>8.2} | {:>8.2} | {:>8.2} | {errors:>6} | {:>10} |",
        events as f64 / elapsed,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 1.0).as_secs_f64() * 1e3,
        if mismatches == 0 { "exact".to_owned() } else { format!("{mismatches} WRONG") },
    )
}

#[tokio::main]
async fn main() {
    let options = options();
    let database_url = std::env::var("DATABASE_URL").expect("DATABASE_URL (the server's database)");
    let pool = PgPool::connect(&database_url).await.expect("connect to the server's database");
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build().expect("http client");

    println!("Tally ingest benchmark: {}s per phase against {}", options.seconds, options.base_url);
    println!("| phase                  | clients |    events/s |  p50 ms |  p99 ms |  max ms | errors |   database |");
    println!("|------------------------|---------|-------------|---------|---------|---------|--------|------------|");
    for &clients in &options.clients {
        println!("{}", phase(&pool, &http, &options, "single record", clients, 0).await);
    }
    let label = format!("batch of {}", options.batch_size);
    println!("{}", phase(&pool, &http, &options, &label, options.batch_clients, options.batch_size).await);
}
