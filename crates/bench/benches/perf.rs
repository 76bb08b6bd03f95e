//! The performance suite: drives a running release Tally (ingest, meter reads, dashboard SSR, live streams), measures
//! the machine's own ceiling beside it (`pgbench` single-row and batched inserts, same concurrency, same run), reads
//! what the browser downloads and the server's memory, and prints one table: metric, target, measured, ceiling,
//! command. Prints figures; asserts no timing. Exit status 1 only if the database does not hold exactly what was
//! acknowledged.
//!
//! Run it through `scripts/perf` (release build, durable throwaway PostgreSQL, the server, the Stripe drain bench),
//! which sets TALLY_URL, TALLY_PID, DATABASE_URL (the server's database), PGBENCH, SITE_PKG and DRAIN_REPORT.
//! Arguments: `--only ingest,pgbench,meter,ssr,export,bundle,live,drain,memory`, `--seconds N` per phase (default 10),
//! `--clients 1,16,64,256`, `--streams 1000`, `--soak-seconds 600`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;
use tally_bench::{ms, options, p50_p99, percentile, thousands};
use uuid::Uuid;

const PASSWORD: &str = "perf suite password";

/// The suite's arguments (after `cargo bench --bench perf --`).
#[derive(clap::Parser)]
struct Options {
    /// Phases to run, comma-separated: ingest, meter, ssr, export, bundle, live, drain, memory (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients of the single-event ingest phases.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64, 256])]
    clients: Vec<usize>,
    /// Concurrent clients of the batch ingest phase.
    #[arg(long, default_value_t = 8)]
    batch_clients: usize,
    /// Events per batch request.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// Live streams held open at once.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Length of the memory soak.
    #[arg(long, default_value_t = 600)]
    soak_seconds: u64,
}

/// One line of the final table.
struct Row {
    metric: String,
    target: String,
    measured: String,
    ceiling: String,
    command: String,
}

struct Suite {
    options: Options,
    url: String,
    pid: u32,
    pool: PgPool,
    database_url: String,
    http: reqwest::Client,
    rows: Vec<Row>,
    inexact: bool,
    /// The server's RSS when the suite started, before any load.
    idle_rss: f64,
    /// The server's peak RSS during the 64-client single-record ingest phase.
    ingest_rss: Mutex<Option<f64>>,
}

impl Suite {
    fn row(&mut self, metric: &str, target: &str, measured: String, ceiling: String, command: &str) {
        println!("  {metric}: {measured}   (target {target}; ceiling {ceiling})");
        let row = Row { metric: metric.into(), target: target.into(), measured, ceiling, command: command.into() };
        self.rows.push(row);
    }

    fn wanted(&self, name: &str) -> bool {
        self.options.only.as_ref().is_none_or(|only| only.iter().any(|o| o == name))
    }

    /// The server's resident memory now, in MiB.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

/// CPU seconds (user + system) used so far by the server, by all PostgreSQL processes and by this load tool, from
/// `/proc/<pid>/stat`: where a request's cost goes on the shared cores. (PostgreSQL backends come and go; those alive
/// at both readings are what is counted, and the server keeps its pool's connections open.)
#[derive(Debug, Clone, Copy)]
struct Cpu {
    server: f64,
    postgres: f64,
    load_tool: f64,
}

impl Cpu {
    /// Milliseconds of CPU per unit of work between `before` and `self`, as printed in the table.
    fn per(&self, before: Cpu, units: usize, unit: &str) -> String {
        let ms = |after: f64, before: f64| (after - before) * 1000.0 / units.max(1) as f64;
        format!(
            "CPU per {unit}: server {:.3} ms, PostgreSQL {:.3} ms, load tool {:.3} ms",
            ms(self.server, before.server),
            ms(self.postgres, before.postgres),
            ms(self.load_tool, before.load_tool)
        )
    }
}

fn cpu_seconds(server_pid: u32) -> Cpu {
    let ticks = |stat: &str| -> f64 {
        // Fields after the command name (which may hold spaces): state is field 3; utime, stime are 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        field(14) + field(15)
    };
    let hz = 100.0; // USER_HZ on Linux
    let server = std::fs::read_to_string(format!("/proc/{server_pid}/stat")).map_or(0.0, |s| ticks(&s)) / hz;
    let load_tool = std::fs::read_to_string("/proc/self/stat").map_or(0.0, |s| ticks(&s)) / hz;
    let mut postgres = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "postgres") {
            postgres += std::fs::read_to_string(path.join("stat")).map_or(0.0, |s| ticks(&s)) / hz;
        }
    }
    Cpu { server, postgres, load_tool }
}

/// An account with an API key and a signed-in session.
struct Customer {
    user_id: Uuid,
    auth: String,
    cookie: String,
}

async fn customers(suite: &Suite, label: &str, count: usize, sessions: bool) -> Vec<Arc<Customer>> {
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let email = format!("{label}-{run}-{i}@perf.test");
        // A limit far above what the run can reach: the limit check (and its lock) is part of what is measured.
        let account = tally_bench::customer(&suite.pool, &email, PASSWORD, Some(1_000_000_000_000_000)).await;
        let cookie = if sessions { login(suite, &email).await } else { String::new() };
        out.push(Arc::new(Customer { user_id: account.user_id, auth: account.auth, cookie }));
    }
    out
}

async fn login(suite: &Suite, email: &str) -> String {
    let reply = suite
        .http
        .post(format!("{}/api/auth/login", suite.url))
        .form(&[("email", email), ("password", PASSWORD)])
        .send()
        .await
        .expect("login");
    let cookie = reply.headers().get("set-cookie").expect("a session cookie").to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// What one ingest client got acknowledged.
#[derive(Default)]
struct Acked {
    events: u64,
    quantity: i64,
    errors: u64,
    latencies: Vec<Duration>,
}

/// Records usage for `customer` until `deadline`: single events (`batch_size` 0) or batches.
async fn ingest_client(
    http: reqwest::Client,
    url: String,
    customer: Arc<Customer>,
    deadline: Instant,
    batch_size: usize,
) -> Acked {
    let mut acked = Acked::default();
    let mut n: i64 = 0;
    let path = if batch_size == 0 { "/api/usage/record" } else { "/api/usage/batch" };
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
        let response =
            http.post(format!("{url}{path}")).header("authorization", &customer.auth).json(&body).send().await;
        let ok = match response {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        acked.latencies.push(started.elapsed());
        if ok {
            acked.events += events;
            acked.quantity += quantity;
        } else {
            acked.errors += 1;
        }
    }
    acked
}

/// What an ingest phase measured.
struct IngestPhase {
    events_per_second: f64,
    p50: Duration,
    p99: Duration,
    /// The database holds exactly what was acknowledged.
    exact: bool,
    /// Where the CPU went, per event.
    cpu: String,
}

/// Runs `clients` ingest clients for the phase length and checks the database against what was acknowledged.
async fn ingest_phase(suite: &Suite, clients: usize, batch_size: usize, seconds: u64) -> IngestPhase {
    let customers = customers(suite, "ingest", clients, false).await;
    let cpu_before = cpu_seconds(suite.pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = customers
        .iter()
        .map(|c| tokio::spawn(ingest_client(suite.http.clone(), suite.url.clone(), c.clone(), deadline, batch_size)))
        .collect();
    let mut peak_rss: f64 = 0.0;
    while Instant::now() < deadline {
        peak_rss = peak_rss.max(suite.rss_mib());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let events: u64 = results.iter().map(|r| r.events).sum();
    let cpu = cpu_seconds(suite.pid).per(cpu_before, events as usize, "event");
    println!("  (server RSS peak during {clients} clients: {peak_rss:.0} MiB)");
    if batch_size == 0 && clients == 64 {
        suite.ingest_rss.lock().unwrap().replace(peak_rss);
    }
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    latencies.sort();
    let mut exact = true;
    for (customer, result) in customers.iter().zip(&results) {
        let (count, sum, counters, buckets): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM usage_events WHERE user_id = $1),
                    (SELECT coalesce(sum(quantity), 0)::bigint FROM usage_events WHERE user_id = $1),
                    (SELECT coalesce(sum(quantity), 0)::bigint FROM usage_period_totals
                     WHERE user_id = $1 AND period_kind = 'calendar'),
                    (SELECT coalesce(sum(quantity), 0)::bigint FROM usage_quarter_hour_totals WHERE user_id = $1)",
        )
        .bind(customer.user_id)
        .fetch_one(&suite.pool)
        .await
        .expect("count events");
        if count as u64 != result.events || sum != result.quantity || counters != sum || buckets != sum {
            exact = false;
            eprintln!(
                "MISMATCH {}: acknowledged {} / {}; database {count} / {sum}; counters {counters}; buckets {buckets}",
                customer.user_id, result.events, result.quantity
            );
        }
    }
    IngestPhase {
        events_per_second: events as f64 / elapsed,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        exact,
        cpu,
    }
}

/// `pgbench` with `script` at `clients` for `seconds`: transactions per second.
fn pgbench(suite: &Suite, script: &str, clients: usize, seconds: u64) -> f64 {
    let file = std::env::temp_dir().join(format!("tally-perf-{}.sql", std::process::id()));
    std::fs::write(&file, script).unwrap();
    let output = std::process::Command::new(std::env::var("PGBENCH").expect("PGBENCH"))
        .args(["-n", "-c", &clients.to_string(), "-j", &clients.min(2).to_string(), "-T", &seconds.to_string()])
        .arg("-f")
        .arg(&file)
        .arg(&suite.database_url)
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .unwrap_or_else(|| panic!("pgbench printed no tps: {text}{}", String::from_utf8_lossy(&output.stderr)))
}

const PGBENCH_TABLE: &str = "CREATE TABLE IF NOT EXISTS perf_ceiling (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(), user_id uuid NOT NULL, quantity bigint NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}', occurred_at timestamptz NOT NULL DEFAULT now())";

async fn ingest_and_ceiling(suite: &mut Suite) {
    println!("ingest: Tally single records and batches; pgbench single-row and batched inserts, same concurrency");
    sqlx::query(PGBENCH_TABLE).execute(&suite.pool).await.unwrap();
    let seconds = suite.options.seconds;
    let single = "INSERT INTO perf_ceiling (user_id, quantity) VALUES (gen_random_uuid(), 1);";
    for clients in suite.options.clients.clone() {
        let ceiling = pgbench(suite, single, clients, seconds);
        let phase = ingest_phase(suite, clients, 0, seconds).await;
        suite.inexact |= !phase.exact;
        suite.row(
            &format!("ingest, single record, {clients} clients"),
            "≥ 10,000 ev/s and ≥ 1.0 × pgbench; p99 ≤ 50 ms",
            format!(
                "{} ev/s ({:.2} ×), p50 {}, p99 {}, db {}; {}",
                thousands(phase.events_per_second),
                phase.events_per_second / ceiling,
                ms(phase.p50),
                ms(phase.p99),
                if phase.exact { "exact" } else { "WRONG" },
                phase.cpu
            ),
            format!("pgbench 1 row/commit: {} tx/s", thousands(ceiling)),
            "scripts/perf --only ingest",
        );
    }
    let (clients, size) = (suite.options.batch_clients, suite.options.batch_size);
    let batched = format!(
        "INSERT INTO perf_ceiling (user_id, quantity) SELECT gen_random_uuid(), g FROM generate_series(1, {size}) g;"
    );
    let ceiling = pgbench(suite, &batched, clients, seconds) * size as f64;
    let phase = ingest_phase(suite, clients, size, seconds).await;
    suite.inexact |= !phase.exact;
    suite.row(
        &format!("ingest, batches of {size}, {clients} clients"),
        "≥ 0.7 × pgbench batched rows/s",
        format!(
            "{} ev/s ({:.2} ×), p99 {}, db {}; {}",
            thousands(phase.events_per_second),
            phase.events_per_second / ceiling,
            ms(phase.p99),
            if phase.exact { "exact" } else { "WRONG" },
            phase.cpu
        ),
        format!("pgbench {size} rows/commit: {} rows/s", thousands(ceiling)),
        "scripts/perf --only ingest",
    );
    sqlx::query("DROP TABLE perf_ceiling").execute(&suite.pool).await.unwrap();
}

/// Records `events` events for `customer` through the batch API, 1,000 per request, 4 requests at a time.
async fn fill(suite: &Suite, customer: &Arc<Customer>, events: usize) {
    let requests = events.div_ceil(1000);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (http, url, customer, next) = (suite.http.clone(), suite.url.clone(), customer.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let size = (events - n * 1000).min(1000);
                let list: Vec<Value> =
                    (0..size).map(|i| json!({"eventType": "ai_token_consumed", "quantity": 1 + i % 7})).collect();
                let reply = http
                    .post(format!("{url}/api/usage/batch"))
                    .header("authorization", &customer.auth)
                    .json(&json!({ "events": list }))
                    .send()
                    .await
                    .expect("batch");
                assert!(reply.status().is_success(), "fill: {}", reply.status());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Latencies of sequential calls of the server function at `path` with `cookie`, until `until`.
async fn timed_calls(suite: &Suite, path: &str, cookie: &str, until: Instant) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let request = suite
            .http
            .post(format!("{}{path}", suite.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", cookie);
        let started = Instant::now();
        let reply = request.send().await.expect("call");
        let status = reply.status();
        let _ = reply.bytes().await;
        latencies.push(started.elapsed());
        assert!(status.is_success(), "{path}: {status}");
    }
    latencies
}

async fn meter_reads(suite: &mut Suite) {
    println!(
        "meter read: /api/usage/summary for a user with ~1,000 and one with 1,000,000 events this period, under ingest"
    );
    let users = customers(suite, "meter", 2, true).await;
    fill(suite, &users[0], 1_000).await;
    let started = Instant::now();
    fill(suite, &users[1], 1_000_000).await;
    println!("  (1,000,000 events recorded through the batch API in {:.1} s)", started.elapsed().as_secs_f64());
    let used: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM usage_events WHERE user_id = $1")
            .bind(users[1].user_id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    let seconds = suite.options.seconds;
    // Ingest in the background: 16 clients, as a busy hour would have.
    let load_customers = customers(suite, "meter-load", 16, false).await;
    let deadline = Instant::now() + Duration::from_secs(seconds + 1);
    let load: Vec<_> = load_customers
        .iter()
        .map(|c| tokio::spawn(ingest_client(suite.http.clone(), suite.url.clone(), c.clone(), deadline, 0)))
        .collect();
    for (label, user) in [("~1,000 events", &users[0]), ("1,000,000 events", &users[1])] {
        let until = Instant::now() + Duration::from_secs(seconds / 2);
        let mut latencies = timed_calls(suite, "/api/usage/summary", &user.cookie, until).await;
        latencies.sort();
        suite.row(
            &format!("meter read, {label}, under ingest"),
            "p99 ≤ 2 ms",
            format!("{} ({} reads)", p50_p99(&latencies), latencies.len()),
            "—".into(),
            "scripts/perf --only meter",
        );
    }
    let mut events = 0;
    for task in load {
        events += task.await.unwrap().events;
    }
    println!("  (background ingest: {} events; heavy user's total {used})", thousands(events as f64));
}

/// The CSV export of a period with 1,000,000 events, downloaded once: time to first byte, duration, rows/s, the
/// server's peak RSS while streaming, and the file checked against PostgreSQL (rows, sum, every time with its offset).
async fn export(suite: &mut Suite) {
    println!("CSV export: GET /api/usage/export.csv of a period with 1,000,000 events");
    let users = customers(suite, "export", 1, true).await;
    let events = 1_000_000;
    fill(suite, &users[0], events).await;
    let (expected_rows, expected_sum): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(quantity), 0)::bigint FROM usage_events WHERE user_id = $1")
            .bind(users[0].user_id)
            .fetch_one(&suite.pool)
            .await
            .unwrap();
    let rss_before = suite.rss_mib();
    let started = Instant::now();
    let download = {
        let (http, url, cookie) =
            (suite.http.clone(), format!("{}/api/usage/export.csv", suite.url), users[0].cookie.clone());
        tokio::spawn(async move {
            let mut reply = http.get(url).header("cookie", cookie).send().await.expect("export");
            assert!(reply.status().is_success(), "export: {}", reply.status());
            let (mut first_byte, mut body) = (None, Vec::new());
            while let Some(chunk) = reply.chunk().await.expect("the download broke off") {
                first_byte.get_or_insert_with(|| started.elapsed());
                body.extend_from_slice(&chunk);
            }
            (body, first_byte, started.elapsed())
        })
    };
    // The server's memory while it streams, sampled as the ingest phases do.
    let mut peak = rss_before;
    while !download.is_finished() {
        peak = peak.max(suite.rss_mib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (body, first_byte, elapsed) = download.await.expect("download task");
    let bytes = body.len();
    // Checked after the clock stopped, with the csv crate (quoting and all), against PostgreSQL.
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let header = reader.headers().expect("a header").clone();
    let column = |name: &str| header.iter().position(|h| h == name).expect(name);
    let (at_column, quantity_column) = (column("occurred_at"), column("quantity"));
    let (mut rows, mut sum, mut without_offset) = (0i64, 0i64, 0i64);
    for record in reader.records() {
        let record = record.expect("a CSV row");
        let occurred_at = &record[at_column];
        if chrono::DateTime::parse_from_rfc3339(occurred_at).is_err() || occurred_at.ends_with('Z') {
            without_offset += 1;
        }
        sum += record[quantity_column].parse::<i64>().unwrap_or(0);
        rows += 1;
    }
    let exact = rows == expected_rows && sum == expected_sum && without_offset == 0;
    if !exact {
        suite.inexact = true;
    }
    suite.row(
        "CSV export, 1,000,000 events",
        "streamed, exact, flat memory",
        format!(
            "{} rows in {:.1} s ({} rows/s, {:.0} MB), first byte after {}; server RSS {:.0} → peak {:.0} MiB; {}",
            thousands(rows as f64),
            elapsed.as_secs_f64(),
            thousands(rows as f64 / elapsed.as_secs_f64()),
            bytes as f64 / 1e6,
            ms(first_byte.unwrap_or(elapsed)),
            rss_before,
            peak,
            if exact {
                "rows, sum and offsets exact".to_owned()
            } else {
                format!("INEXACT: {rows} rows / sum {sum} vs {expected_rows} / {expected_sum}; {without_offset} times without offset")
            }
        ),
        "—".into(),
        "scripts/perf --only export",
    );
}

async fn ssr(suite: &mut Suite) {
    println!("dashboard SSR: GET / for a signed-in user (meter, chart, history, alerts, billing)");
    let users = customers(suite, "ssr", 1, true).await;
    fill(suite, &users[0], 5_000).await;
    let seconds = suite.options.seconds;
    for concurrency in [1, 32] {
        let until = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let cpu_before = cpu_seconds(suite.pid);
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, url, cookie) = (suite.http.clone(), suite.url.clone(), users[0].cookie.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < until {
                        let begun = Instant::now();
                        let reply = http.get(format!("{url}/")).header("cookie", &cookie).send().await.expect("page");
                        assert!(reply.status().is_success(), "dashboard: {}", reply.status());
                        let body = reply.text().await.unwrap();
                        assert!(body.contains("progressbar"), "the page holds the meter");
                        latencies.push(begun.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        latencies.sort();
        let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(suite.pid).per(cpu_before, latencies.len(), "page");
        suite.row(
            &format!("dashboard SSR, {concurrency} concurrent"),
            "≥ 2,000 req/s, p99 ≤ 30 ms",
            format!("{} req/s, {}; {cpu}", thousands(rate), p50_p99(&latencies)),
            "—".into(),
            "scripts/perf --only ssr",
        );
    }
}

async fn bundle(suite: &mut Suite) {
    println!("browser download: what hydrating the dashboard fetches");
    let pkg = std::path::PathBuf::from(std::env::var("SITE_PKG").expect("SITE_PKG"));
    let size = |cmd: &str, file: &std::path::Path| -> u64 {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} < '{}' | wc -c", file.display()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    };
    // The bundle's files as the build named them (`tally.<content hash>.<ext>` with hash-files on).
    let names: Vec<String> = ["wasm", "js", "css"]
        .iter()
        .map(|ext| {
            std::fs::read_dir(&pkg)
                .unwrap()
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .find(|name| name.starts_with("tally.") && name.ends_with(&format!(".{ext}")))
                .unwrap_or_else(|| panic!("no tally.*.{ext} in {}", pkg.display()))
        })
        .collect();
    let mut totals = (0, 0, 0);
    let mut parts = Vec::new();
    for name in &names {
        let file = pkg.join(name);
        let raw = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let (gzip, brotli) = (size("gzip -9", &file), size("brotli -q 11 -c", &file));
        parts.push(format!(
            "{name} {} / {} / {}",
            thousands(raw as f64),
            thousands(gzip as f64),
            thousands(brotli as f64)
        ));
        totals = (totals.0 + raw, totals.1 + gzip, totals.2 + brotli);
    }
    println!("  raw / gzip / brotli bytes: {}", parts.join("; "));
    suite.row(
        "browser download (wasm + JS + CSS)",
        "≤ 60 kB gzip",
        format!("{} kB gzip ({} kB raw, {} kB brotli)", totals.1 / 1000, totals.0 / 1000, totals.2 / 1000),
        "—".into(),
        "scripts/perf --only bundle",
    );
    // What actually crosses the network when Chromium asks (it accepts br and gzip).
    let mut transferred = 0;
    let mut encodings = Vec::new();
    for name in &names {
        let reply = suite
            .http
            .get(format!("{}/pkg/{name}", suite.url))
            .header("accept-encoding", "gzip, deflate, br, zstd")
            .send()
            .await
            .expect("fetch the bundle");
        let encoding =
            reply.headers().get("content-encoding").and_then(|v| v.to_str().ok()).unwrap_or("identity").to_owned();
        transferred += reply.bytes().await.map(|b| b.len()).unwrap_or(0);
        encodings.push(format!("{name}: {encoding}"));
    }
    suite.row(
        "bundle bytes sent to Chromium",
        "≤ 60 kB",
        format!("{} kB ({})", transferred / 1000, encodings.join(", ")),
        "—".into(),
        "scripts/perf --only bundle",
    );
}

/// The `used` values a live stream announced, with when each arrived.
type Seen = Arc<Mutex<Vec<(usize, i64, Instant)>>>;

async fn open_stream(http: reqwest::Client, url: String, cookie: String, user: usize, seen: Seen, until: Instant) {
    let Ok(mut response) = http.get(format!("{url}/api/usage/live")).header("cookie", cookie).send().await else {
        return;
    };
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until.into(), response.chunk()).await {
        let now = Instant::now();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(used) = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str::<Value>(d).ok())
                .and_then(|v| v["used"].as_i64())
            {
                seen.lock().unwrap().push((user, used, now));
            }
        }
    }
}

async fn live(suite: &mut Suite) {
    let streams = suite.options.streams;
    let users_count = (streams / 10).max(1);
    println!(
        "live latency: {streams} open streams ({users_count} users × {}), records through the API",
        streams / users_count
    );
    let users = customers(suite, "live", users_count, true).await;
    // After the sign-ins (each hashes a password with Argon2's 19 MiB), so the difference is the streams'.
    let idle = suite.rss_mib();
    let seen: Seen = Arc::default();
    let until = Instant::now() + Duration::from_secs(suite.options.seconds + 30);
    let mut tasks = Vec::new();
    for i in 0..streams {
        let user = i % users_count;
        let (http, url, cookie, seen) =
            (suite.http.clone(), suite.url.clone(), users[user].cookie.clone(), seen.clone());
        tasks.push(tokio::spawn(open_stream(http, url, cookie, user, seen, until)));
    }
    // Every stream announces the current total first; wait until all have.
    let opened = Instant::now();
    while seen.lock().unwrap().len() < streams && opened.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected = seen.lock().unwrap().len();
    let with_streams = suite.rss_mib();
    // Records, one every 50 ms, round the users; each must reach all of that user's streams.
    let mut sent: Vec<(usize, i64, Instant)> = Vec::new();
    let mut totals: HashMap<usize, i64> = HashMap::new();
    let rounds = (suite.options.seconds * 20) as usize;
    for n in 0..rounds {
        let user = (n * 7) % users_count;
        let quantity = 1 + (n % 50) as i64;
        let at = Instant::now();
        let reply = suite
            .http
            .post(format!("{}/api/usage/record", suite.url))
            .header("authorization", &users[user].auth)
            .json(&json!({"eventType": "ai_token_consumed", "quantity": quantity}))
            .send()
            .await
            .expect("record");
        assert!(reply.status().is_success());
        let total = totals.entry(user).or_default();
        *total += quantity;
        sent.push((user, *total, at));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = seen.lock().unwrap().clone();
    let mut latencies = Vec::new();
    let mut missed = 0;
    let per_user = streams / users_count;
    for (user, total, at) in &sent {
        let arrivals: Vec<Instant> = seen
            .iter()
            .filter(|(u, used, when)| u == user && used >= total && when >= at)
            .map(|(_, _, when)| *when)
            .collect();
        // The first arrival per stream: `seen` is in arrival order, and each stream announces each total once.
        let mut reached = 0;
        for when in arrivals.iter().take(per_user) {
            latencies.push(*when - *at);
            reached += 1;
        }
        missed += per_user - reached;
    }
    latencies.sort();
    suite.row(
        &format!("live latency, {streams} open streams"),
        "p99 ≤ 1 s",
        format!(
            "{} ({} deliveries, {missed} missed, {connected} streams connected)",
            p50_p99(&latencies),
            latencies.len()
        ),
        "—".into(),
        "scripts/perf --only live",
    );
    suite.row(
        &format!("memory with {streams} open streams"),
        "—",
        format!("{:.0} MiB RSS ({:.0} MiB before opening them)", with_streams, idle),
        "—".into(),
        "scripts/perf --only live",
    );
    for task in tasks {
        task.abort();
    }
}

fn drain(suite: &mut Suite) {
    let Ok(path) = std::env::var("DRAIN_REPORT") else { return };
    let report = std::fs::read_to_string(&path).unwrap_or_default();
    // | batched | events | customers | Stripe calls | events per call | 429s | seconds | events/s | calls/s | overlaps | exact |
    let Some(cells) =
        report.lines().find(|l| l.starts_with("| batched |")).map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
    else {
        println!("  no drain figures in {path}");
        return;
    };
    suite.row(
        "Stripe drain, 1M events / 1k customers",
        "≥ ingest rate; calls ≪ events",
        format!("{} ev/s delivered, {} calls ({} events/call), {}", cells[8], cells[4], cells[5], cells[11]),
        "double at 1,000 calls/s, 1 in flight per customer".into(),
        "scripts/perf --only drain (scripts/bench-delivery)",
    );
}

async fn memory(suite: &mut Suite) {
    let idle = suite.idle_rss;
    let soak = suite.options.soak_seconds;
    println!("memory: RSS idle, under ingest (64 clients), then a {soak} s soak (16 clients + 200 streams)");
    if suite.ingest_rss.lock().unwrap().is_none() {
        // Not measured by an ingest phase of this run: run the 64-client phase for it.
        let exact = ingest_phase(suite, 64, 0, suite.options.seconds).await.exact;
        suite.inexact |= !exact;
    }
    let peak = suite.ingest_rss.lock().unwrap().unwrap_or_default();
    suite.row("memory idle", "—", format!("{idle:.0} MiB RSS"), "—".into(), "scripts/perf --only memory");
    suite.row(
        "memory under ingest (64 clients)",
        "—",
        format!("{peak:.0} MiB RSS peak"),
        "—".into(),
        "scripts/perf --only memory",
    );
    if soak == 0 {
        return;
    }
    let users = customers(suite, "soak", 16, true).await;
    let until = Instant::now() + Duration::from_secs(soak);
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, url, cookie) = (suite.http.clone(), suite.url.clone(), users[i % users.len()].cookie.clone());
        tasks.push(tokio::spawn(open_stream(http, url, cookie, i, seen.clone(), until)));
    }
    let load: Vec<_> = users
        .iter()
        .map(|c| tokio::spawn(ingest_client(suite.http.clone(), suite.url.clone(), c.clone(), until, 0)))
        .collect();
    let mut samples = Vec::new();
    let started = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(30).min(until.saturating_duration_since(Instant::now()))).await;
        samples.push((started.elapsed().as_secs(), suite.rss_mib()));
    }
    let mut events = 0;
    for task in load {
        events += task.await.unwrap().events;
    }
    for task in tasks {
        task.abort();
    }
    // Growth: the last third's average against the first third's (after warm-up).
    let third = (samples.len() / 3).max(1);
    let average = |s: &[(u64, f64)]| s.iter().map(|(_, r)| r).sum::<f64>() / s.len().max(1) as f64;
    let (first, last) = (average(&samples[..third]), average(&samples[samples.len() - third..]));
    println!("  soak samples (s, MiB): {samples:?}");
    suite.row(
        &format!("memory over a {} min soak", soak / 60),
        "no growth",
        format!(
            "{first:.0} → {last:.0} MiB ({:+.1} %), {} events, 200 streams",
            (last - first) / first * 100.0,
            thousands(events as f64)
        ),
        "—".into(),
        "scripts/perf --only memory",
    );
}

#[tokio::main]
async fn main() {
    let options: Options = options();
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (run scripts/perf)"));
    let database_url = env("DATABASE_URL");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(&database_url).await.expect("connect");
    let mut suite = Suite {
        options,
        url: env("TALLY_URL"),
        pid: env("TALLY_PID").parse().expect("TALLY_PID"),
        pool,
        database_url,
        http: reqwest::Client::builder().pool_max_idle_per_host(2048).build().unwrap(),
        rows: Vec::new(),
        inexact: false,
        idle_rss: 0.0,
        ingest_rss: Mutex::new(None),
    };
    suite.idle_rss = suite.rss_mib();
    println!("server RSS at start (idle): {:.0} MiB", suite.idle_rss);
    if suite.wanted("ingest") {
        ingest_and_ceiling(&mut suite).await;
    }
    if suite.wanted("meter") {
        meter_reads(&mut suite).await;
    }
    if suite.wanted("ssr") {
        ssr(&mut suite).await;
    }
    if suite.wanted("export") {
        export(&mut suite).await;
    }
    if suite.wanted("bundle") {
        bundle(&mut suite).await;
    }
    if suite.wanted("live") {
        live(&mut suite).await;
    }
    if suite.wanted("drain") {
        drain(&mut suite);
    }
    if suite.wanted("memory") {
        memory(&mut suite).await;
    }

    println!();
    println!("| metric | target | measured | machine ceiling (same run) | command |");
    println!("|---|---|---|---|---|");
    for row in &suite.rows {
        println!("| {} | {} | {} | {} | `{}` |", row.metric, row.target, row.measured, row.ceiling, row.command);
    }
    if suite.inexact {
        std::process::exit(1);
    }
}
