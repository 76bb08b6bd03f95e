//! The fault suite: the real `tally` binary, a real PostgreSQL and the Stripe test double, broken on purpose while
//! usage flows in. Every scenario ends with the same audit: each acknowledged event is in PostgreSQL exactly once,
//! the period counters equal the events, and once deliveries settle Stripe holds, per customer, exactly
//! PostgreSQL's sum. Prints one table row per scenario; asserts no timing. Exit status 1 if anything was lost or
//! doubled.
//!
//! Run it through `scripts/reliability` (release build, a throwaway durable PostgreSQL), which sets:
//!   TALLY_BIN (the server binary), PG_DIR + PG_PORT + PG_OPTS (to stop and start the cluster with
//!   `scripts/lib.sh`), DATABASE_URL (an admin connection).
//! Arguments: `--only NAME[,NAME…]`, `--seconds N` (load per scenario, default 20), `--stripe-fault-seconds N`
//! (how long the double misbehaves, default 120).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::PgPool;
use stripe_double::{Faults, StripeDouble, DEFAULT_SECRET_KEY};
use tally_bench::{customer, options, Customer};
use uuid::Uuid;

const WEBHOOK_SECRET: &str = "whsec_fault_suite_secret";
const CUSTOMERS: usize = 12;
const CLIENTS: usize = 24;

/// The suite's arguments (after `cargo bench --bench faults --`).
#[derive(clap::Parser)]
struct Options {
    /// Scenarios to run, comma-separated: sigkill, pg-restart, read-only, stripe, instances, webhooks (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Seconds of load per scenario.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds the Stripe double keeps failing in the Stripe scenario.
    #[arg(long, default_value_t = 120)]
    stripe_fault_seconds: u64,
}

/// The machine the scenarios run on: the cluster, the server binary, the double.
struct Lab {
    admin_url: String,
    pg_dir: String,
    pg_port: String,
    pg_opts: String,
    tally_bin: PathBuf,
    double: StripeDouble,
    double_url: String,
    http: reqwest::Client,
    log_dir: PathBuf,
}

/// One running `tally serve`.
struct Instance {
    child: Child,
    url: String,
}

impl Lab {
    async fn fresh_database(&self, name: &str) -> (PgPool, String) {
        tally_bench::fresh_database(&self.admin_url, name, 8).await
    }

    /// Starts an instance on a free port and waits until it answers.
    async fn start(&self, database_url: &str, name: &str) -> Instance {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = self.log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut child = Command::new(&self.tally_bin)
            .arg("serve")
            // scripts/reliability builds the server alone, without the site and its hash.txt: no bundle to name.
            .env("LEPTOS_HASH_FILES", "false")
            .env("DATABASE_URL", database_url)
            .env("DATABASE_MAX_CONNECTIONS", "12")
            .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .env("STRIPE_SECRET_KEY", DEFAULT_SECRET_KEY)
            .env("STRIPE_API_BASE", &self.double_url)
            .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("STRIPE_CALLS_PER_SECOND", "500")
            .env("STRIPE_RETRY_BASE_MS", "200")
            .env("STRIPE_RETRY_MAX_MS", "3000")
            .env("STRIPE_REQUEST_TIMEOUT_MS", "1500")
            .env("STRIPE_LEASE_MS", "4000")
            .env("STRIPE_POLL_MS", "200")
            .env("TALLY_METERS_FILE", tally_bench::unlimited_meters_file())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start tally");
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..300 {
            if self.http.get(format!("{url}/login")).send().await.is_ok() {
                return Instance { child, url };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("tally did not start; see {}", log.display());
    }

    /// Stops or starts the cluster the way `scripts/lib.sh` does (as its owner, same port and options).
    fn pg(&self, action: &str) {
        let script = format!("{}/../../scripts/lib.sh", env!("CARGO_MANIFEST_DIR"));
        let command = match action {
            "stop" => r#"source "$0"; pg_stop "$PG_DIR""#,
            _ => r#"source "$0"; pg_start "$PG_DIR" "$PG_PORT" "$PG_OPTS""#,
        };
        let status = Command::new("bash")
            .args(["-c", command, &script])
            .env("PG_DIR", &self.pg_dir)
            .env("PG_PORT", &self.pg_port)
            .env("PG_OPTS", &self.pg_opts)
            .status()
            .expect("bash");
        assert!(status.success(), "PostgreSQL {action} failed");
    }

    async fn admin_sql(&self, sql: &str) {
        let admin = PgPool::connect(&self.admin_url).await.expect("admin connection");
        for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
            sqlx::query(statement).execute(&admin).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        admin.close().await;
    }
}

fn kill(instance: &mut Instance, signal: &str) {
    let _ = Command::new("kill").args([signal, &instance.child.id().to_string()]).status();
    let _ = instance.child.wait();
}

async fn customers(pool: &PgPool, count: usize) -> Vec<Customer> {
    let mut out = Vec::new();
    for i in 0..count {
        out.push(customer(pool, &format!("c{i}@faults.test"), "fault suite pw", None).await);
    }
    out
}

/// What the load tool tried and what it was told.
#[derive(Default)]
struct Ledger {
    /// Events attempted (a retried event counts once).
    tried: AtomicU64,
    /// Events answered 200: (user, idempotency key) → quantity.
    acked: Mutex<HashMap<(Uuid, String), i64>>,
    /// Answers other than 200, by status ("io" for no answer).
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl Ledger {
    fn refused(&self, what: String) {
        *self.refusals.lock().unwrap().entry(what).or_default() += 1;
    }
}

/// Sends usage until `until`: single events and batches of 20, to the targets in turn, each with idempotency keys;
/// an operation without a 200 is retried with the same keys until it gets one (as a careful client does) or the
/// grace period after `until` ends.
async fn load(
    lab: &Lab,
    targets: Arc<RwLock<Vec<String>>>,
    customers: Arc<Vec<Customer>>,
    ledger: Arc<Ledger>,
    prefix: &str,
    until: Instant,
) {
    let grace = until + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (http, targets, customers, ledger) = (lab.http.clone(), targets.clone(), customers.clone(), ledger.clone());
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut op = 0_u64;
            while Instant::now() < until {
                op += 1;
                let customer = &customers[(client + op as usize) % customers.len()];
                let batch = op.is_multiple_of(5);
                let events: Vec<(String, i64)> = (0..if batch { 20 } else { 1 })
                    .map(|i| (format!("{prefix}-{client}-{op}-{i}"), 1 + ((op * 7 + i) % 1000) as i64))
                    .collect();
                ledger.tried.fetch_add(events.len() as u64, Ordering::Relaxed);
                let (path, body) = if batch {
                    let list: Vec<Value> = events
                        .iter()
                        .map(|(key, q)| json!({"eventType": "ai_token_consumed", "quantity": q, "idempotencyKey": key}))
                        .collect();
                    ("/api/usage/batch", json!({ "events": list }))
                } else {
                    ("/api/usage/record", json!({"eventType": "ai_token_consumed", "quantity": events[0].1}))
                };
                let mut attempt = 0_usize;
                loop {
                    let target = {
                        let targets = targets.read().unwrap();
                        targets[(client + op as usize + attempt) % targets.len()].clone()
                    };
                    attempt += 1;
                    let mut request =
                        http.post(format!("{target}{path}")).header("authorization", &customer.auth).json(&body);
                    if !batch {
                        request = request.header("idempotency-key", &events[0].0);
                    }
                    match request.timeout(Duration::from_secs(10)).send().await {
                        Ok(response) if response.status() == 200 => {
                            let mut acked = ledger.acked.lock().unwrap();
                            for (key, quantity) in &events {
                                acked.insert((customer.user_id, key.clone()), *quantity);
                            }
                            break;
                        }
                        Ok(response) => ledger.refused(response.status().as_u16().to_string()),
                        Err(_) => ledger.refused("io".into()),
                    }
                    if Instant::now() > grace {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// One row of the table.
struct Audit {
    scenario: String,
    tried: u64,
    acked: u64,
    in_postgres: u64,
    delivered: u64,
    lost: u64,
    doubled: u64,
    notes: Vec<String>,
}

/// Waits until every outbox row is delivered (or `limit` passes), then compares everything.
async fn audit(scenario: &str, pool: &PgPool, lab: &Lab, ledger: &Ledger, customers: &[Customer]) -> Audit {
    let settle_from = Instant::now();
    let mut notes = Vec::new();
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM meter_event_outbox WHERE status <> 'delivered'")
            .fetch_one(pool)
            .await
            .unwrap();
        if open == 0 {
            notes.push(format!("settled in {:.1} s", settle_from.elapsed().as_secs_f64()));
            break;
        }
        if settle_from.elapsed() > Duration::from_secs(300) {
            notes.push(format!("{open} outbox rows not delivered after 300 s"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let acked = ledger.acked.lock().unwrap().clone();
    let stored: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT user_id, idempotency_key, count(*), sum(quantity)::bigint FROM usage_events
         WHERE idempotency_key IS NOT NULL GROUP BY user_id, idempotency_key",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let stored: HashMap<(Uuid, String), (i64, i64)> =
        stored.into_iter().map(|(user, key, count, sum)| ((user, key), (count, sum))).collect();
    let mut lost = 0_u64;
    let mut doubled = 0_u64;
    for (key, quantity) in &acked {
        match stored.get(key) {
            None => lost += 1,
            Some((count, sum)) => {
                if *count > 1 {
                    doubled += (*count - 1) as u64;
                }
                if *sum != *quantity * *count {
                    notes.push(format!("{key:?}: stored quantity {sum}, acknowledged {quantity}"));
                    lost += 1;
                }
            }
        }
    }
    let load_users: std::collections::HashSet<Uuid> = customers.iter().map(|c| c.user_id).collect();
    let in_postgres = stored
        .iter()
        .filter(|((user, _), _)| load_users.contains(user))
        .map(|(_, (count, _))| *count as u64)
        .sum::<u64>();

    // The rollup the meter reads must equal the events it sums.
    let drift: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT user_id, sum(quantity) AS q FROM usage_events GROUP BY user_id
         ) e FULL JOIN (
             SELECT user_id, sum(quantity) AS q FROM usage_period_totals WHERE period_kind = 'calendar' GROUP BY user_id
         ) t USING (user_id) WHERE e.q IS DISTINCT FROM t.q",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if drift > 0 {
        notes.push(format!("{drift} users' period counters differ from their events"));
        doubled += drift as u64;
    }

    // Stripe's sum per customer against PostgreSQL's.
    let mut delivered = 0_u64;
    for customer in customers {
        let (stripe_id, events, sum): (Option<String>, i64, i64) = sqlx::query_as(
            "SELECT u.stripe_customer_id, count(e.id), coalesce(sum(e.quantity), 0)::bigint
             FROM users u LEFT JOIN usage_events e ON e.user_id = u.id WHERE u.id = $1 GROUP BY u.id",
        )
        .bind(customer.user_id)
        .fetch_one(pool)
        .await
        .unwrap();
        let Some(stripe_id) = stripe_id else {
            notes.push(format!("user {} has no Stripe customer", customer.user_id));
            continue;
        };
        let at_stripe = lab.double.total(&stripe_id, tally::usage::AI_TOKENS_EVENT);
        match at_stripe.cmp(&sum) {
            std::cmp::Ordering::Equal => delivered += events as u64,
            std::cmp::Ordering::Less => {
                notes.push(format!("{stripe_id}: Stripe {at_stripe} < PostgreSQL {sum}"));
                lost += 1;
            }
            std::cmp::Ordering::Greater => {
                notes.push(format!("{stripe_id}: Stripe {at_stripe} > PostgreSQL {sum}"));
                doubled += 1;
            }
        }
    }
    let refusals = ledger.refusals.lock().unwrap();
    if !refusals.is_empty() {
        notes.push(format!("answers other than 200 (retried): {refusals:?}"));
    }
    Audit {
        scenario: scenario.to_owned(),
        tried: ledger.tried.load(Ordering::Relaxed),
        acked: acked.len() as u64,
        in_postgres,
        delivered,
        lost,
        doubled,
        notes,
    }
}

/// A scenario's common start: a fresh database, customers, `count` instances.
async fn setup(lab: &Lab, name: &str, count: usize) -> (PgPool, String, Arc<Vec<Customer>>, Vec<Instance>) {
    let (pool, url) = lab.fresh_database(&format!("faults_{name}")).await;
    let customers = Arc::new(customers(&pool, CUSTOMERS).await);
    let mut instances = Vec::new();
    for i in 0..count {
        instances.push(lab.start(&url, &format!("{name}-{i}")).await);
    }
    (pool, url, customers, instances)
}

fn targets(instances: &[Instance]) -> Arc<RwLock<Vec<String>>> {
    Arc::new(RwLock::new(instances.iter().map(|i| i.url.clone()).collect()))
}

async fn sigkill(lab: &Lab, seconds: u64) -> Audit {
    let (pool, url, customers, mut instances) = setup(lab, "sigkill", 1).await;
    let targets = targets(&instances);
    let ledger = Arc::new(Ledger::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let load = load(lab, targets.clone(), customers.clone(), ledger.clone(), "kill", until);
    let chaos = async {
        for round in 0..3 {
            tokio::time::sleep(Duration::from_secs(seconds / 4)).await;
            kill(&mut instances[0], "-KILL");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            instances[0] = lab.start(&url, &format!("sigkill-restart-{round}")).await;
            targets.write().unwrap()[0] = instances[0].url.clone();
        }
    };
    tokio::join!(load, chaos);
    let mut audit = audit("SIGKILL the app 3× under load", &pool, lab, &ledger, &customers).await;
    audit.notes.push("killed with SIGKILL 3 times mid-load, restarted each time".into());
    finish(instances);
    audit
}

async fn postgres_restart(lab: &Lab, seconds: u64) -> Audit {
    let (pool, _url, customers, instances) = setup(lab, "pgrestart", 1).await;
    let targets = targets(&instances);
    let ledger = Arc::new(Ledger::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let load = load(lab, targets, customers.clone(), ledger.clone(), "pg", until);
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
        lab.pg("stop");
        tokio::time::sleep(Duration::from_secs(3)).await;
        lab.pg("start");
    };
    tokio::join!(load, chaos);
    // The audit's own pool reconnects too.
    let mut audit = audit("PostgreSQL stopped 3 s mid-load", &pool, lab, &ledger, &customers).await;
    let refusals = ledger.refusals.lock().unwrap().values().sum::<u64>();
    audit.notes.push(format!(
        "the app was not restarted; {refusals} requests were refused while PostgreSQL was down (the rest waited \
         for a connection and then completed)"
    ));
    finish(instances);
    audit
}

async fn read_only(lab: &Lab, seconds: u64) -> Audit {
    let (pool, _url, customers, instances) = setup(lab, "readonly", 1).await;
    let targets = targets(&instances);
    let ledger = Arc::new(Ledger::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let load = load(lab, targets, customers.clone(), ledger.clone(), "ro", until);
    let chaos = async {
        tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
        lab.admin_sql("ALTER SYSTEM SET default_transaction_read_only = on; SELECT pg_reload_conf()").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        lab.admin_sql("ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()").await;
    };
    tokio::join!(load, chaos);
    let mut audit = audit("database read-only for 5 s", &pool, lab, &ledger, &customers).await;
    let refused = ledger.refusals.lock().unwrap().get("503").copied().unwrap_or(0);
    audit.notes.push(format!("{refused} requests answered 503 while read-only"));
    finish(instances);
    audit
}

async fn stripe_faults(lab: &Lab, seconds: u64, fault_seconds: u64) -> Audit {
    let (pool, _url, customers, instances) = setup(lab, "stripe", 2).await;
    let targets = targets(&instances);
    let ledger = Arc::new(Ledger::default());
    lab.double.set_faults(Faults {
        rate_limit: 40,
        rate_limit_ratio: 0.25,
        server_error_ratio: 0.15,
        lose_response_ratio: 0.15,
        slow: 30,
        slow_ms: 2_500,
        drop_connection: 20,
        ..Faults::default()
    });
    let load_until = Instant::now() + Duration::from_secs(seconds.max(fault_seconds / 2));
    let load = load(lab, targets, customers.clone(), ledger.clone(), "stripe", load_until);
    let recover = async {
        tokio::time::sleep(Duration::from_secs(fault_seconds)).await;
        lab.double.set_faults(Faults::default());
    };
    let before = lab.double.state();
    tokio::join!(load, recover);
    let mut audit = audit("Stripe: 429/500/timeouts/lost answers", &pool, lab, &ledger, &customers).await;
    let after = lab.double.state();
    audit.notes.push(format!(
        "{} s of faults: {} injected, {} duplicate identifiers refused, {} overlapping calls per customer",
        fault_seconds,
        after.injected_faults - before.injected_faults,
        after.duplicate_identifiers - before.duplicate_identifiers,
        after.concurrent_calls_per_customer - before.concurrent_calls_per_customer
    ));
    if after.concurrent_calls_per_customer > before.concurrent_calls_per_customer {
        audit.doubled += 1;
    }
    finish(instances);
    audit
}

/// Latest `used` on a live stream, read for `within`.
async fn live_value(http: &reqwest::Client, url: &str, cookie: &str, within: Duration) -> Option<i64> {
    let mut response = http.get(format!("{url}/api/usage/live")).header("cookie", cookie).send().await.ok()?;
    let deadline = tokio::time::Instant::now() + within;
    let mut text = String::new();
    let mut last = None;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
        for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if let Some(used) = serde_json::from_str::<Value>(line).ok().and_then(|v| v["used"].as_i64()) {
                last = Some(used);
            }
        }
        text = text.rsplit_once("\n\n").map(|(_, rest)| rest.to_owned()).unwrap_or(text);
    }
    last
}

async fn instances(lab: &Lab, seconds: u64, count: usize) -> Audit {
    let name = format!("instances{count}");
    let (pool, _url, customers, instances) = setup(lab, &name, count).await;
    let targets = targets(&instances);
    let ledger = Arc::new(Ledger::default());

    // One account with a limit, a session and an alert webhook to a local receiver.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_url = format!("http://{}/alerts", receiver.local_addr().unwrap());
    let kept = received.clone();
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |body: String| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(Value::Null));
                    "ok"
                }
            }),
        );
        axum::serve(receiver, app).await.unwrap();
    });
    let limit = 100_000_i64;
    let alerted = tally::auth::users::register(
        &pool,
        "alerts@faults.test",
        "fault suite pw",
        &[(tally::usage::AI_TOKENS_EVENT.into(), Some(limit))],
    )
    .await
    .unwrap();
    sqlx::query("UPDATE users SET alert_webhook_url = $2, alert_webhook_secret = $3 WHERE id = $1")
        .bind(alerted)
        .bind(&receiver_url)
        .bind(tally::usage::alert_webhooks::new_secret().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let login = lab
        .http
        .post(format!("{}/api/auth/login", instances[0].url))
        .form(&[("email", "alerts@faults.test"), ("password", "fault suite pw")])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();

    let until = Instant::now() + Duration::from_secs(seconds);
    let load = load(lab, targets.clone(), customers.clone(), ledger.clone(), &name, until);
    // The limited account spends its allowance through every instance at once, 1,000 tokens a request.
    let spend = async {
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let (http, targets, cookie) = (lab.http.clone(), targets.clone(), cookie.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..10 {
                    let target = targets.read().unwrap()[(worker + n) % targets.read().unwrap().len()].clone();
                    let _ = http
                        .post(format!("{target}/api/usage/record"))
                        .header("cookie", &cookie)
                        .header("idempotency-key", format!("spend-{worker}-{n}"))
                        .json(&json!({"eventType": "ai_token_consumed", "quantity": 1000}))
                        .send()
                        .await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::join!(load, spend);
    let mut audit = audit(&format!("{count} instances, round-robin"), &pool, lab, &ledger, &customers).await;

    // Live meters on every instance agree with PostgreSQL.
    let total: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(quantity), 0)::bigint FROM usage_events WHERE user_id = $1")
            .bind(alerted)
            .fetch_one(&pool)
            .await
            .unwrap();
    for instance in &instances {
        let shown = live_value(&lab.http, &instance.url, &cookie, Duration::from_millis(700)).await;
        if shown != Some(total) {
            audit.notes.push(format!("live meter on {} shows {shown:?}, PostgreSQL {total}", instance.url));
            audit.lost += 1;
        }
    }
    // Each threshold once in the database and once at the receiver.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_alerts WHERE user_id = $1")
        .bind(alerted)
        .fetch_one(&pool)
        .await
        .unwrap();
    let received = received.lock().unwrap().clone();
    let mut thresholds: Vec<i64> = received.iter().filter_map(|b| b["data"]["threshold_percent"].as_i64()).collect();
    thresholds.sort();
    audit.notes.push(format!(
        "limited account at {total} of {limit}: {alerts} alerts stored, webhooks received for thresholds {thresholds:?}; \
         live meter equal on all {count} instances"
    ));
    if alerts != 3 || thresholds != [80, 90, 100] {
        audit.doubled += 1;
    }
    finish(instances);
    audit
}

fn subscription_event(id: &str, created: i64, status: &str, period: (i64, i64)) -> Vec<u8> {
    let fixture = |name: &str| -> Value {
        let path = format!("{}/../../tests/fixtures/stripe/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("fixture JSON")
    };
    let mut subscription = fixture("openapi-fixtures3.subscription.json");
    subscription["id"] = json!("sub_storm");
    subscription["customer"] = json!("cus_storm");
    subscription["status"] = json!(status);
    subscription["items"]["data"][0]["current_period_start"] = json!(period.0);
    subscription["items"]["data"][0]["current_period_end"] = json!(period.1);
    let mut event = fixture("openapi-fixtures3.event.json");
    event["id"] = json!(id);
    event["type"] = json!("customer.subscription.updated");
    event["created"] = json!(created);
    event["data"] = json!({ "object": subscription });
    event.to_string().into_bytes()
}

async fn webhook_storm(lab: &Lab) -> Audit {
    let (pool, _url, customers, instances) = setup(lab, "storm", 3).await;
    let statuses = ["active", "past_due", "active", "unpaid", "active", "canceled"];
    let events: Vec<(i64, Vec<u8>)> = (0..30)
        .map(|n| {
            let created = 1_900_000_000 + n * 60;
            let status = statuses[n as usize % statuses.len()];
            (created, subscription_event(&format!("evt_storm_{n}"), created, status, (created, created + 2_592_000)))
        })
        .collect();
    // Every event 10 times, newest first, then shuffled (deterministically), concurrently, to all instances.
    let mut deliveries: Vec<usize> = (0..events.len()).rev().flat_map(|i| std::iter::repeat_n(i, 10)).collect();
    let mut seed = 0x2545_f491_u64;
    for i in (1..deliveries.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        deliveries.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let statuses_seen: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for (n, index) in deliveries.iter().enumerate() {
        let (http, seen) = (lab.http.clone(), statuses_seen.clone());
        let url = format!("{}{}", instances[n % instances.len()].url, tally::billing::webhook::PATH);
        let body = events[*index].1.clone();
        tasks.push(tokio::spawn(async move {
            let signature = format!(
                "t={now},v1={}",
                stripe_double::webhook_signature(WEBHOOK_SECRET, chrono::Utc::now().timestamp(), &body),
                now = chrono::Utc::now().timestamp()
            );
            let status = match http.post(url).header("stripe-signature", signature).body(body).send().await {
                Ok(response) => response.status().as_u16(),
                Err(_) => 0,
            };
            *seen.lock().unwrap().entry(status).or_default() += 1;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events").fetch_one(&pool).await.unwrap();
    let (status, start): (String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT status, current_period_start FROM subscriptions WHERE stripe_subscription_id = 'sub_storm'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let newest = events.len() as i64 - 1;
    let want_status = statuses[newest as usize % statuses.len()];
    let want_start = 1_900_000_000 + newest * 60;
    let seen = statuses_seen.lock().unwrap().clone();
    let ok = stored == events.len() as i64 && status == want_status && start.timestamp() == want_start;
    let mut audit = audit("webhook storm (30 events × 10, shuffled)", &pool, lab, &Ledger::default(), &customers).await;
    audit.tried = deliveries.len() as u64;
    audit.acked = seen.get(&200).copied().unwrap_or(0);
    audit.in_postgres = stored as u64;
    audit.notes.push(format!(
        "answers {seen:?}; {stored} events stored once each; subscription ends {status} from {start} (newest event: \
         {want_status})"
    ));
    if !ok || audit.acked != deliveries.len() as u64 {
        audit.doubled += 1;
    }
    finish(instances);
    audit
}

fn finish(instances: Vec<Instance>) {
    for mut instance in instances {
        kill(&mut instance, "-TERM");
    }
}

/// Secrets must never appear in the servers' logs, nor any API key longer than its display prefix.
fn scan_logs(lab: &Lab, secrets: &[&str]) -> Vec<String> {
    let prefix = tally::auth::api_key::KEY_PREFIX;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&lab.log_dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for secret in secrets {
            if text.contains(secret) {
                found.push(format!("{} contains a secret", entry.path().display()));
            }
        }
        let full_keys = text
            .match_indices(prefix)
            .filter(|(at, _)| text[at + prefix.len()..].chars().take_while(char::is_ascii_alphanumeric).count() > 4)
            .count();
        if full_keys > 0 {
            found.push(format!("{} contains {full_keys} API keys", entry.path().display()));
        }
    }
    found
}

#[tokio::main]
async fn main() {
    let options: Options = options();
    let env =
        |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (run scripts/reliability)"));
    let (double, double_url) = tally_bench::stripe_double(&[tally::usage::AI_TOKENS_EVENT]).await;
    let log_dir = std::env::temp_dir().join(format!("tally-faults-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).unwrap();
    let lab = Lab {
        admin_url: env("DATABASE_URL"),
        pg_dir: env("PG_DIR"),
        pg_port: env("PG_PORT"),
        pg_opts: std::env::var("PG_OPTS").unwrap_or_default(),
        tally_bin: PathBuf::from(env("TALLY_BIN")),
        double,
        double_url,
        http: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        log_dir,
    };
    let wanted = |name: &str| options.only.as_ref().is_none_or(|only| only.iter().any(|o| o == name));
    let mut rows = Vec::new();
    let s = options.seconds;
    if wanted("sigkill") {
        rows.push(sigkill(&lab, s).await);
    }
    if wanted("pg-restart") {
        rows.push(postgres_restart(&lab, s).await);
    }
    if wanted("read-only") {
        rows.push(read_only(&lab, s).await);
    }
    if wanted("stripe") {
        rows.push(stripe_faults(&lab, s, options.stripe_fault_seconds).await);
    }
    if wanted("instances") {
        rows.push(instances(&lab, s, 2).await);
        rows.push(instances(&lab, s, 3).await);
    }
    if wanted("webhooks") {
        rows.push(webhook_storm(&lab).await);
    }
    let leaks = scan_logs(&lab, &[DEFAULT_SECRET_KEY, WEBHOOK_SECRET, "fault suite pw"]);

    println!();
    println!("| scenario | tried | acknowledged | in PostgreSQL | delivered to Stripe | lost | doubled |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.scenario, row.tried, row.acked, row.in_postgres, row.delivered, row.lost, row.doubled
        );
    }
    println!();
    for row in &rows {
        println!("{}:", row.scenario);
        for note in &row.notes {
            println!("  - {note}");
        }
    }
    println!(
        "logs scanned for secrets and full API keys: {}",
        if leaks.is_empty() { "none found".into() } else { leaks.join("; ") }
    );
    println!("server logs: {}", lab.log_dir.display());
    let bad = rows.iter().any(|r| r.lost > 0 || r.doubled > 0) || !leaks.is_empty();
    std::process::exit(if bad { 1 } else { 0 });
}
