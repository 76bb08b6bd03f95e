//! Stripe delivery benchmark: how many meter event calls a backlog of usage takes, and how fast the worker drains
//! it into the Stripe test double held to Stripe's live limits (1,000 calls/s per account, which the double
//! enforces with 429s, and one call in flight per customer and meter, which it counts). Prints figures; asserts
//! only correctness (Stripe's sums equal PostgreSQL's), never timing.
//!
//! Run it through `scripts/bench-delivery` (release build, durable throwaway PostgreSQL), or by hand:
//!   DATABASE_URL=postgres://… cargo bench -p tally-bench --bench delivery -- [--events 1000000] [--customers 1000]
//!     [--unbatched-events 20000] [--workers 1]
//! It creates (and drops) its own database next to DATABASE_URL's.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use stripe_double::{Faults, DEFAULT_SECRET_KEY};
use tally::billing::delivery::DeliveryWorker;
use tally::config::DeliveryConfig;
use tally_bench::{fresh_database, options};

const EVENT: &str = "ai_token_consumed";

/// The benchmark's arguments (after `cargo bench --bench delivery --`).
#[derive(clap::Parser)]
struct Options {
    /// Usage events in the batched backlog.
    #[arg(long, default_value_t = 1_000_000)]
    events: i64,
    /// Customers the events belong to.
    #[arg(long, default_value_t = 1_000)]
    customers: i64,
    /// Usage events sent one meter event each (0 skips that part).
    #[arg(long, default_value_t = 20_000)]
    unbatched_events: i64,
    /// Worker processes draining together.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Stripe's limit the double enforces and the workers share.
    #[arg(long, default_value_t = 1_000)]
    calls_per_second: u32,
}

/// `customers` linked users, each with a live subscription whose current period holds the last hour (paying
/// customers: their usage is batched per period; see docs/reliability.md for customers without one), and `events`
/// usage events spread evenly over them, all due now, written in bulk (the ingest path is measured by the ingest
/// benchmark).
async fn backlog(pool: &PgPool, customers: i64, events: i64) {
    sqlx::query(
        "INSERT INTO users (id, email, password_hash, stripe_customer_id)
         SELECT gen_random_uuid(), 'bench' || i || '@bench.test', 'x', 'cus_bench' || i FROM generate_series(1, $1) i",
    )
    .bind(customers)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, user_id, status, current_period_start,
                                    current_period_end, state_at)
         SELECT 'sub_' || stripe_customer_id, stripe_customer_id, id, 'active', now() - interval '10 days',
                now() + interval '20 days', now()
         FROM users WHERE email LIKE '%@bench.test'",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "WITH u AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM users),
              e AS (SELECT gen_random_uuid() AS id, u.id AS user_id, 1 + (i % 997) AS quantity,
                           now() - (i % 3600) * interval '1 second' AS occurred_at
                    FROM generate_series(0, $1 - 1) i JOIN u ON u.n = i % $2),
              inserted AS (INSERT INTO usage_events (id, user_id, event_type, quantity, occurred_at)
                           SELECT id, user_id, $3, quantity, occurred_at FROM e RETURNING id, user_id, occurred_at)
         INSERT INTO meter_event_outbox (usage_event_id, user_id, occurred_at, status)
         SELECT id, user_id, occurred_at, 'pending' FROM inserted",
    )
    .bind(events)
    .bind(customers)
    .bind(EVENT)
    .execute(pool)
    .await
    .unwrap();
}

struct Run {
    events: i64,
    customers: i64,
    calls: u64,
    rate_limited: u64,
    seconds: f64,
    exact: bool,
    overlaps: u64,
}

async fn drain(pool: &PgPool, options: &Options, customers: i64, events: i64, batch_max_events: u32) -> Run {
    let (double, base) = tally_bench::stripe_double(&[EVENT]).await;
    double.set_faults(Faults { calls_per_second: options.calls_per_second, ..Faults::default() });

    let load = Instant::now();
    backlog(pool, customers, events).await;
    eprintln!(
        "  backlog of {events} events for {customers} customers written in {:.1} s",
        load.elapsed().as_secs_f64()
    );

    let settings = DeliveryConfig {
        run_in_server: false,
        calls_per_second: Some(options.calls_per_second),
        max_in_flight: 64,
        batch_max_events,
        retry_base_ms: 200,
        retry_max_ms: 5_000,
        request_timeout_ms: 10_000,
        lease_ms: 30_000,
        poll_ms: 20,
        create_customers: false,
        invoice_grace_minutes: 60,
    };
    let started = Instant::now();
    let runs: Vec<_> = (0..options.workers)
        .map(|_| {
            let worker = DeliveryWorker::new(pool.clone(), &base, DEFAULT_SECRET_KEY, settings.clone(), "Asia/Tokyo");
            tokio::spawn(async move { worker.drain(Duration::from_secs(3_600)).await })
        })
        .collect();
    for run in runs {
        let (_, pending) = run.await.unwrap().expect("drain");
        assert_eq!(pending, 0, "events left pending");
    }
    let seconds = started.elapsed().as_secs_f64();

    let sums: Vec<(String, i64)> = sqlx::query_as(
        "SELECT u.stripe_customer_id, sum(e.quantity)::bigint FROM usage_events e JOIN users u ON u.id = e.user_id
         GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let exact = sums.iter().all(|(customer, sum)| double.total(customer, EVENT) == *sum);
    let state = double.state();
    Run {
        events,
        customers,
        calls: state.accepted_events,
        rate_limited: state.meter_event_calls - state.accepted_events,
        seconds,
        exact,
        overlaps: state.concurrent_calls_per_customer,
    }
}

#[tokio::main]
async fn main() {
    let options: Options = options();
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL must be set (run scripts/bench-delivery)");
    let mut results = Vec::new();

    eprintln!("batched (default STRIPE_BATCH_MAX_EVENTS=10000):");
    let (pool, _) = fresh_database(&admin_url, "tally_bench_delivery", 16).await;
    results.push(("batched", drain(&pool, &options, options.customers, options.events, 10_000).await));
    pool.close().await;

    if options.unbatched_events > 0 {
        eprintln!("one meter event per usage event (STRIPE_BATCH_MAX_EVENTS=1):");
        let (pool, _) = fresh_database(&admin_url, "tally_bench_delivery", 16).await;
        results.push(("unbatched", drain(&pool, &options, options.customers, options.unbatched_events, 1).await));
        pool.close().await;
    }

    println!();
    println!(
        "Stripe double at {} calls/s, one call in flight per customer and meter; {} worker process(es)",
        options.calls_per_second, options.workers
    );
    println!("| mode | events | customers | Stripe calls | events per call | 429s | seconds | events/s delivered | calls/s | overlapping calls | Stripe = PostgreSQL |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, run) in &results {
        println!(
            "| {mode} | {} | {} | {} | {:.0} | {} | {:.1} | {:.0} | {:.0} | {} | {} |",
            run.events,
            run.customers,
            run.calls,
            run.events as f64 / run.calls.max(1) as f64,
            run.rate_limited,
            run.seconds,
            run.events as f64 / run.seconds,
            run.calls as f64 / run.seconds,
            run.overlaps,
            if run.exact { "exact" } else { "DIFFERS" }
        );
    }
    if results.iter().any(|(_, run)| !run.exact || run.overlaps > 0) {
        std::process::exit(1);
    }
}
