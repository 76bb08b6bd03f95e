//! Delivery of usage to Stripe's meter, against the Stripe test double over real HTTP: every path of the worker,
//! and under injected faults the invariant that matters: the sum Stripe holds per customer equals the sum
//! PostgreSQL holds, with no identifier accepted twice and no row in two deliveries.

use std::time::Duration;

use sqlx::PgPool;
use stripe_double::{Faults, StripeDouble, DEFAULT_SECRET_KEY};
use tally::billing::delivery::DeliveryWorker;
use tally::config::DeliveryConfig;
use tally::usage::AI_TOKENS_EVENT;
use uuid::Uuid;

use crate::support::{app, TestApp};

/// Starts a double (with the `ai_token_consumed` meter) on a free port; returns its base URL.
pub async fn start_double() -> (String, StripeDouble) {
    let double = StripeDouble::new(DEFAULT_SECRET_KEY);
    double.add_meter(AI_TOKENS_EVENT);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(stripe_double::serve(listener, double.clone()));
    (base, double)
}

/// Delivery settings for tests: quick retries, short timeouts and leases, no customer sweep.
pub fn fast_settings() -> DeliveryConfig {
    DeliveryConfig {
        run_in_server: false,
        calls_per_second: Some(100_000),
        max_in_flight: 16,
        batch_max_events: 10_000,
        retry_base_ms: 5,
        retry_max_ms: 50,
        request_timeout_ms: 400,
        lease_ms: 1_000,
        poll_ms: 10,
        create_customers: false,
        invoice_grace_minutes: 60,
    }
}

fn worker(pool: &PgPool, base: &str, settings: DeliveryConfig) -> DeliveryWorker {
    DeliveryWorker::new(pool.clone(), base, DEFAULT_SECRET_KEY, settings, "Asia/Tokyo")
}

/// A user linked to a fresh Stripe customer id.
async fn customer(app: &TestApp, email: &str) -> (Uuid, String) {
    app.signup(email).await;
    let user = app.user_id(email).await;
    let customer = format!("cus_{}", &user.simple().to_string()[..12]);
    tally::billing::status::link_customer(&app.pool, email, &customer).await.expect("link");
    (user, customer)
}

async fn record(app: &TestApp, user: Uuid, quantity: i64) {
    app.insert_usage(user, AI_TOKENS_EVENT, quantity, &chrono::Utc::now().to_rfc3339()).await;
}

/// PostgreSQL's usage per customer, every event counted.
async fn postgres_total(pool: &PgPool, customer: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(e.quantity), 0)::bigint FROM usage_events e JOIN users u ON u.id = e.user_id
         WHERE u.stripe_customer_id = $1",
    )
    .bind(customer)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn outbox(pool: &PgPool, status: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM meter_event_outbox WHERE status = $1")
        .bind(status)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn drain(worker: &DeliveryWorker) -> tally::billing::delivery::Progress {
    let (progress, pending) = worker.drain(Duration::from_secs(60)).await.expect("drain");
    assert_eq!(pending, 0, "rows left pending: {progress:?}");
    progress
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn each_event_reaches_the_meter_with_its_id_and_time(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let (user, customer) = customer(&app, "one@example.com").await;
    for quantity in [120, 30, 7] {
        record(&app, user, quantity).await;
    }
    let worker = worker(&pool, &base, DeliveryConfig { batch_max_events: 1, ..fast_settings() });
    let progress = drain(&worker).await;
    assert_eq!((progress.calls, progress.delivered), (3, 3));

    let events: Vec<(Uuid, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, quantity, occurred_at FROM usage_events ORDER BY occurred_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut sent = double.events();
    sent.sort_by_key(|e| e.identifier.clone());
    let mut expected: Vec<(String, i64, i64)> =
        events.iter().map(|(id, q, at)| (id.to_string(), *q, at.timestamp())).collect();
    expected.sort();
    let got: Vec<(String, i64, i64)> = sent.iter().map(|e| (e.identifier.clone(), e.value, e.timestamp)).collect();
    assert_eq!(got, expected, "identifier = usage event id, timestamp = when it occurred");
    assert!(sent.iter().all(|e| e.customer == customer && e.event_name == AI_TOKENS_EVENT));
    assert_eq!(outbox(&pool, "delivered").await, 3);
    assert_eq!(double.total(&customer, AI_TOKENS_EVENT), 157);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn due_events_of_a_customer_go_out_as_one_meter_event_carrying_their_sum(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let (a, customer_a) = customer(&app, "a@example.com").await;
    let (b, customer_b) = customer(&app, "b@example.com").await;
    // Subscribed customers: their usage is summed per billing period (without a subscription Stripe bills each
    // event by its own time, so batches never span a second, and 50 records may cross one).
    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, user_id, status, current_period_start,
                                    current_period_end, state_at)
         SELECT 'sub_' || id, stripe_customer_id, id, 'active', now() - interval '1 day', now() + interval '29 days',
                now()
         FROM users",
    )
    .execute(&pool)
    .await
    .unwrap();
    for i in 1..=50 {
        record(&app, a, i).await;
    }
    record(&app, b, 999).await;

    let progress = drain(&worker(&pool, &base, fast_settings())).await;
    assert_eq!(progress.calls, 2, "one call per customer: {progress:?}");
    assert_eq!(double.total(&customer_a, AI_TOKENS_EVENT), 1275);
    assert_eq!(double.total(&customer_b, AI_TOKENS_EVENT), 999);
    // The batch was written, members and identifier, before it was sent; it names what it carries.
    let (count, quantity): (i32, i64) =
        sqlx::query_as("SELECT event_count, quantity FROM meter_deliveries WHERE user_id = $1")
            .bind(a)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((count, quantity), (50, 1275));
    let latest: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(occurred_at) FROM usage_events WHERE user_id = $1")
            .bind(a)
            .fetch_one(&pool)
            .await
            .unwrap();
    let sent = double.events().into_iter().find(|e| e.customer == customer_a).unwrap();
    assert_eq!(sent.timestamp, latest.timestamp(), "stamped with its latest member");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_batch_never_spans_a_billing_period_boundary(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let (user, customer) = customer(&app, "periods@example.com").await;
    // A live subscription whose period began two days ago: an event three days ago is in the calendar month
    // before it, one an hour ago inside it.
    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, user_id, status, current_period_start,
                                    current_period_end, cancel_at_period_end, state_at)
         VALUES ('sub_periods', $1, $2, 'active', now() - interval '2 days', now() + interval '28 days', false, now())",
    )
    .bind(&customer)
    .bind(user)
    .execute(&pool)
    .await
    .unwrap();
    record(&app, user, 10).await;
    record(&app, user, 20).await;
    sqlx::query(
        "UPDATE usage_events SET occurred_at = now() - CASE quantity WHEN 10 THEN interval '3 days' ELSE interval '1 hour' END",
    )
    .execute(&pool)
    .await
    .unwrap();

    let progress = drain(&worker(&pool, &base, fast_settings())).await;
    assert_eq!(progress.calls, 2, "one meter event per period");
    // Every member lies in its delivery's period, and the delivery is stamped inside it.
    let outside: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM meter_event_outbox o JOIN usage_events e ON e.id = o.usage_event_id
         JOIN meter_deliveries d ON d.id = o.delivery_id
         WHERE NOT (d.period_start <= e.occurred_at AND e.occurred_at < d.period_end
                    AND d.period_start <= d.event_timestamp AND d.event_timestamp < d.period_end)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(outside, 0);
    let periods: Vec<(i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT quantity, period_start FROM meter_deliveries ORDER BY quantity")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(periods.iter().map(|p| p.0).collect::<Vec<_>>(), [10, 20]);
    assert_ne!(periods[0].1, periods[1].1, "two different periods");
    let subscription_start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT current_period_start FROM subscriptions").fetch_one(&pool).await.unwrap();
    assert_eq!(periods[1].1, subscription_start, "the recent event is billed in the subscription's period");
    assert_eq!(double.total(&customer, AI_TOKENS_EVENT), 30);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn events_wait_for_a_customer_and_go_out_once_one_is_linked(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    app.signup("later@example.com").await;
    let user = app.user_id("later@example.com").await;
    record(&app, user, 40).await;
    assert_eq!(outbox(&pool, "awaiting_customer").await, 1);

    let worker = worker(&pool, &base, fast_settings());
    let progress = drain(&worker).await;
    assert_eq!(progress.calls, 0, "nothing can be sent without a customer");
    assert_eq!(outbox(&pool, "awaiting_customer").await, 1);

    tally::billing::status::link_customer(&pool, "later@example.com", "cus_linkedlater").await.unwrap();
    drain(&worker).await;
    assert_eq!(outbox(&pool, "delivered").await, 1);
    assert_eq!(double.total("cus_linkedlater", AI_TOKENS_EVENT), 40);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn events_older_than_stripes_35_days_are_expired_not_sent(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let (user, customer) = customer(&app, "old@example.com").await;
    record(&app, user, 5).await;
    record(&app, user, 6).await;
    sqlx::query("UPDATE usage_events SET occurred_at = now() - interval '36 days' WHERE quantity = 5")
        .execute(&pool)
        .await
        .unwrap();

    let progress = drain(&worker(&pool, &base, fast_settings())).await;
    assert_eq!((progress.expired, progress.calls), (1, 1));
    let reason: String = sqlx::query_scalar("SELECT last_error FROM meter_event_outbox WHERE status = 'expired'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(reason.contains("35 days"), "{reason}");
    assert_eq!(double.total(&customer, AI_TOKENS_EVENT), 6);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_meter_event_stripe_refuses_is_failed_with_its_message_and_can_be_retried(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let (user, customer) = customer(&app, "refused@example.com").await;
    // `image_generated` is a recordable type with no meter at Stripe (yet): Stripe refuses it.
    app.insert_usage(user, "image_generated", 3, &chrono::Utc::now().to_rfc3339()).await;
    record(&app, user, 11).await;

    let worker = worker(&pool, &base, fast_settings());
    let progress = drain(&worker).await;
    assert_eq!((progress.delivered, progress.failed), (1, 1));
    let reason: String = sqlx::query_scalar("SELECT last_error FROM meter_event_outbox WHERE status = 'failed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(reason.contains("No active meter was found for event_name 'image_generated'"), "{reason}");
    let period = crate::support::calendar_month(&pool, chrono::Utc::now(), "Asia/Tokyo").await;
    let sync = tally::billing::status::for_user(&pool, user, period.period()).await.unwrap();
    assert_eq!((sync.delivered, sync.failed), (1, 1));
    assert_eq!(sync.last_failure.as_deref(), Some(reason.as_str()));

    // Once the meter exists, `tally stripe retry` sends it again.
    double.add_meter("image_generated");
    assert_eq!(tally::billing::uncertain::retry_failed(&pool, chrono::Utc::now()).await.unwrap(), (1, 0));
    drain(&worker).await;
    assert_eq!(outbox(&pool, "delivered").await, 2);
    assert_eq!(double.total(&customer, "image_generated"), 3);
    assert_eq!(double.total(&customer, AI_TOKENS_EVENT), 11);
}

/// Sums agree, every row is delivered, nothing was accepted twice, and calls never overlapped per customer.
async fn assert_settled_exactly(pool: &PgPool, double: &StripeDouble, customers: &[String]) {
    for customer in customers {
        assert_eq!(
            double.total(customer, AI_TOKENS_EVENT),
            postgres_total(pool, customer).await,
            "Stripe and PostgreSQL disagree for {customer}"
        );
    }
    assert_eq!(
        outbox(pool, "delivered").await,
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM usage_events").fetch_one(pool).await.unwrap()
    );
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM meter_deliveries WHERE status = 'delivered'")
        .fetch_one(pool)
        .await
        .unwrap();
    let state = double.state();
    assert_eq!(state.accepted_events as i64, deliveries, "each delivery accepted exactly once");
    let identifiers: std::collections::HashSet<String> = double.events().into_iter().map(|e| e.identifier).collect();
    assert_eq!(identifiers.len() as u64, state.accepted_events, "no identifier accepted twice");
    assert_eq!(state.concurrent_calls_per_customer, 0, "two calls in flight for one customer");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn rate_limits_server_errors_timeouts_and_lost_answers_still_sum_exactly(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let mut customers = Vec::new();
    for i in 0..4 {
        let (user, customer) = customer(&app, &format!("fault{i}@example.com")).await;
        for q in 1..=5 {
            record(&app, user, q * 10 + i).await;
        }
        customers.push(customer);
    }
    double.set_faults(Faults {
        rate_limit: 3,
        server_error: 2,
        drop_connection: 2,
        lose_response: 3,
        slow: 2,
        slow_ms: 1_500,
        ..Faults::default()
    });
    let worker = worker(&pool, &base, DeliveryConfig { batch_max_events: 1, ..fast_settings() });
    let progress = drain(&worker).await;
    assert_eq!(progress.retried, 12, "every fault forces one retry: {progress:?}");
    assert_eq!(double.faults(), Faults { slow_ms: 1_500, ..Faults::default() }, "all faults were injected");
    let state = double.state();
    assert_eq!(state.duplicate_identifiers, 3, "each lost answer was retried into Stripe's duplicate refusal");
    assert_settled_exactly(&pool, &double, &customers).await;
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_storm_of_random_faults_settles_to_equal_sums(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let mut customers = Vec::new();
    for i in 0..6 {
        let (user, customer) = customer(&app, &format!("storm{i}@example.com")).await;
        customers.push((user, customer));
    }
    double.set_faults(Faults {
        rate_limit_ratio: 0.25,
        server_error_ratio: 0.2,
        lose_response_ratio: 0.2,
        ..Faults::default()
    });
    let worker = worker(&pool, &base, DeliveryConfig { batch_max_events: 3, ..fast_settings() });
    // Usage keeps arriving while the worker runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = tokio::spawn({
        let (worker, stop) = (worker.clone(), stop.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                worker.step().await.expect("step");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    for round in 0..10 {
        for (user, _) in &customers {
            record(&app, *user, round + 1).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    running.await.unwrap();
    // The storm goes on until everything is through.
    drain(&worker).await;
    let state = double.state();
    assert!(state.injected_faults > 5, "the storm happened: {state:?}");
    let customers: Vec<String> = customers.into_iter().map(|(_, c)| c).collect();
    assert_settled_exactly(&pool, &double, &customers).await;
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_worker_killed_between_stripes_answer_and_its_commit_is_made_good_by_another(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let (user, customer) = customer(&app, "killed@example.com").await;
    record(&app, user, 77).await;
    // Stripe records the event, then takes its time answering; the worker dies meanwhile.
    double.set_faults(Faults { slow_answer: 1, slow_ms: 5_000, ..Faults::default() });
    let settings = DeliveryConfig { request_timeout_ms: 10_000, lease_ms: 300, ..fast_settings() };
    let doomed = worker(&pool, &base, settings.clone());
    let task = tokio::spawn(async move { doomed.step().await });
    for _ in 0..200 {
        if double.state().accepted_events == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(double.state().accepted_events, 1, "Stripe holds the event");
    task.abort();
    assert_eq!(outbox(&pool, "pending").await, 1, "the dead worker committed nothing");

    // Another worker takes over once the lease has passed, sends the same identifier, and learns it counted.
    drain(&worker(&pool, &base, settings)).await;
    assert_eq!(double.state().duplicate_identifiers, 1);
    assert_settled_exactly(&pool, &double, &[customer]).await;
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn three_workers_on_one_database_never_send_a_row_twice(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let mut customers = Vec::new();
    for i in 0..12 {
        let (user, customer) = customer(&app, &format!("multi{i}@example.com")).await;
        for q in 1..=25 {
            record(&app, user, q).await;
        }
        customers.push(customer);
    }
    let settings = DeliveryConfig { batch_max_events: 4, max_in_flight: 4, ..fast_settings() };
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let worker = worker(&pool, &base, settings.clone());
            tokio::spawn(async move { worker.drain(Duration::from_secs(60)).await })
        })
        .collect();
    let mut calls = 0;
    for run in runs {
        let (progress, _) = run.await.unwrap().unwrap();
        calls += progress.calls;
    }
    assert_eq!(double.state().duplicate_identifiers, 0, "no delivery was sent by two workers");
    assert_eq!(calls, double.state().meter_event_calls);
    assert_settled_exactly(&pool, &double, &customers).await;
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn workers_share_one_call_rate_as_stripe_counts_it_per_account(pool: PgPool) {
    let (base, double) = start_double().await;
    let app = app(pool.clone());
    let (user, customer) = customer(&app, "rate@example.com").await;
    for q in 1..=70 {
        record(&app, user, q).await;
    }
    // Two processes, each told the account's rate: together they must stay within it, not at twice it.
    let settings = DeliveryConfig { batch_max_events: 1, calls_per_second: Some(20), ..fast_settings() };
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let worker = worker(&pool, &base, settings.clone());
            tokio::spawn(async move { worker.drain(Duration::from_secs(60)).await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let state = double.state();
    assert_eq!(state.meter_event_calls, 70, "one call per event, none refused");
    // A bucket of 20 calls/s holding at most one call: at most 21 in a second of the clock, one more for calls
    // granted just before a second ends that arrive just after.
    assert!(
        state.busiest_second_meter_event_calls <= 22,
        "the workers made {} calls in one second against a shared limit of 20/s",
        state.busiest_second_meter_event_calls
    );
    assert_settled_exactly(&pool, &double, &[customer]).await;
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn without_stripe_usage_stays_pending_and_the_dashboard_says_why(pool: PgPool) {
    let app = app(pool.clone());
    let cookie = app.signup("nostripe@example.com").await;
    let user = app.user_id("nostripe@example.com").await;
    tally::billing::status::link_customer(&pool, "nostripe@example.com", "cus_nostripe").await.unwrap();
    record(&app, user, 9).await;
    assert!(tally::billing::delivery::DeliveryWorker::from_config(pool.clone(), &app.state.config).is_none());
    assert_eq!(outbox(&pool, "pending").await, 1);

    let overview = app.post_form("/api/billing/overview", &[], Some(&cookie)).await;
    let sync = &overview.json()["sync"];
    assert_eq!((sync["pending"].as_i64(), sync["stripeConfigured"].as_bool()), (Some(1), Some(false)), "{sync}");
    let page = app.get("/", Some(&cookie)).await;
    // `<!>` marks where interpolated text joins the translation around it.
    let text = page.body.replace("<!>", "");
    assert!(text.contains("1 event waiting to be sent to Stripe (Stripe is not configured"), "{text}");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn sign_up_never_waits_for_stripe_and_the_worker_creates_the_customer(pool: PgPool) {
    let (base, double) = start_double().await;
    let mut config = crate::support::config();
    config.stripe_secret_key = Some(DEFAULT_SECRET_KEY.into());
    config.stripe_api_base = base.clone();
    let app = crate::support::app_with(pool.clone(), config);
    app.signup("new@example.com").await;
    assert_eq!(double.state().customers, 0, "sign-up makes no Stripe call");
    let user = app.user_id("new@example.com").await;
    // Its events wait for a customer; the worker creates one and sends them.
    record(&app, user, 12).await;
    assert_eq!(outbox(&pool, "awaiting_customer").await, 1);
    let worker = worker(&pool, &base, DeliveryConfig { create_customers: true, ..fast_settings() });
    let progress = drain(&worker).await;
    assert_eq!(progress.customers_created, 1);
    let customer: String = sqlx::query_scalar("SELECT stripe_customer_id FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(customer.starts_with("cus_"), "{customer}");
    assert_eq!(double.total(&customer, AI_TOKENS_EVENT), 12);
    assert_eq!(double.state().customers, 1);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn setup_creates_the_meter_and_price_once_and_reconcile_finds_differences(pool: PgPool) {
    let double = StripeDouble::new(DEFAULT_SECRET_KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stripe_double::serve(listener, double.clone()));
    let stripe = tally::billing::stripe::StripeClient::new(reqwest::Client::new(), &base, DEFAULT_SECRET_KEY);
    let plan = tally::billing::setup::SetupPlan {
        event_name: AI_TOKENS_EVENT.into(),
        meter_display_name: "AI tokens".into(),
        product_name: "Tally AI tokens".into(),
        price: crate::support::catalog().get(AI_TOKENS_EVENT).and_then(|m| m.price.clone()),
        lookup_key: "tally_ai_tokens".into(),
    };
    let first = tally::billing::setup::setup(&stripe, &plan).await.unwrap();
    assert!(first.meter_created && first.price_created);
    let second = tally::billing::setup::setup(&stripe, &plan).await.unwrap();
    assert!(!second.meter_created && !second.price_created);
    assert_eq!((&second.meter_id, &second.price.id), (&first.meter_id, &first.price.id));
    assert_eq!(second.price.json["unit_amount_decimal"], "0.00005", "the price as Stripe has it, to keep");
    let state = double.state();
    assert_eq!((state.meters, state.products, state.prices), (1, 1, 1), "a second run creates nothing");

    let app = app(pool.clone());
    let (user, customer) = customer(&app, "recon@example.com").await;
    record(&app, user, 500).await;
    record(&app, user, 250).await;
    drain(&worker(&pool, &base, fast_settings())).await;
    let since = chrono::Utc::now() - chrono::Duration::days(40);
    let lines = tally::billing::reconcile::meter(&pool, &stripe, since, &|_| {}).await.unwrap();
    assert_eq!(lines.len(), 1);
    assert!(lines[0].matches(), "{lines:?}");
    assert_eq!((lines[0].delivered, lines[0].stripe), (750, Some(750)));

    // Usage Stripe holds that Tally did not send (someone else reporting to the meter) is a difference.
    let stray = tally::billing::stripe::MeterEvent {
        event_name: AI_TOKENS_EVENT,
        customer: &customer,
        value: 1,
        identifier: "stray",
        timestamp: chrono::Utc::now().timestamp(),
    };
    stripe.create_meter_event(&stray, "stray-key").await.unwrap();
    let lines = tally::billing::reconcile::meter(&pool, &stripe, since, &|_| {}).await.unwrap();
    assert!(!lines[0].matches());
    assert_eq!((lines[0].delivered, lines[0].stripe), (750, Some(751)));
}

/// Reconciling retries Stripe's passing failures with backoff, and a period Stripe keeps refusing is reported with
/// its error while every other period is still compared (one bad answer never hides the rest).
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn reconcile_retries_and_reports_every_period_whatever_stripe_answers(pool: PgPool) {
    use axum::extract::{Path, Query};
    use axum::routing::get;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let app = app(pool.clone());
    let (busy_user, busy) = customer(&app, "busy@example.com").await;
    let (broken_user, broken) = customer(&app, "broken@example.com").await;
    for (user, customer, quantity) in [(busy_user, &busy, 40), (broken_user, &broken, 60)] {
        sqlx::query(
            "INSERT INTO meter_deliveries (id, identifier, user_id, stripe_customer_id, event_name, period_kind,
                                            period_start, period_end, event_timestamp, quantity, event_count, status)
             VALUES (gen_random_uuid(), gen_random_uuid()::text, $1, $2, 'ai_token_consumed', 'calendar',
                     now() - interval '1 day', now() + interval '1 day', now(), $3, 1, 'delivered')",
        )
        .bind(user)
        .bind(customer)
        .bind(quantity)
        .execute(&pool)
        .await
        .unwrap();
    }
    // A Stripe that answers `busy` with two 500s before the summary, and `broken` with a 400 every time.
    let calls = Arc::new(AtomicU32::new(0));
    let summaries = {
        let (calls, busy, broken) = (calls.clone(), busy.clone(), broken.clone());
        move |Path(_meter): Path<String>, Query(query): Query<std::collections::HashMap<String, String>>| {
            let (calls, busy, broken) = (calls.clone(), busy.clone(), broken.clone());
            async move {
                let customer = query.get("customer").cloned().unwrap_or_default();
                let error = |status: u16, message: &str| {
                    let body = serde_json::json!({"error": {"type": "api_error", "message": message}});
                    (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(body))
                };
                if customer == broken {
                    return error(400, "No such customer");
                }
                if customer == busy && calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    return error(500, "try again");
                }
                let summary = serde_json::json!({"id": "mes_1", "aggregated_value": 40.0});
                (axum::http::StatusCode::OK, axum::Json(serde_json::json!({"data": [summary], "has_more": false})))
            }
        }
    };
    let meters = || async {
        let meter = serde_json::json!({"id": "mtr_1", "event_name": "ai_token_consumed", "status": "active"});
        axum::Json(serde_json::json!({"data": [meter], "has_more": false}))
    };
    let router = axum::Router::new()
        .route("/v1/billing/meters", get(meters))
        .route("/v1/billing/meters/{meter}/event_summaries", get(summaries));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let stripe = tally::billing::stripe::StripeClient::new(reqwest::Client::new(), &base, DEFAULT_SECRET_KEY);

    let done = std::sync::Mutex::new(Vec::new());
    let since = chrono::Utc::now() - chrono::Duration::days(40);
    let lines = tally::billing::reconcile::meter(&pool, &stripe, since, &|p| done.lock().unwrap().push(p))
        .await
        .expect("a refused period does not abort the comparison");
    assert_eq!(lines.len(), 2);
    let line = |customer: &str| lines.iter().find(|l| l.customer == customer).unwrap().clone();
    assert!(line(&busy).matches(), "two 500s were retried: {:?}", line(&busy));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let refused = line(&broken);
    assert_eq!((refused.stripe, refused.matches()), (None, false));
    assert!(refused.error.as_deref().unwrap_or_default().contains("No such customer"), "{refused:?}");
    use tally::billing::reconcile::Progress;
    assert_eq!(*done.lock().unwrap(), [Progress::Total(2), Progress::Done, Progress::Done]);
}

/// `tally stripe setup` takes an existing meter for the event name only if it bills Tally's events right; any
/// other is refused with what differs (a meter cannot be changed once created).
#[tokio::test]
async fn setup_refuses_an_existing_meter_that_would_not_bill_right_saying_what_differs() {
    let (base, double) = start_double().await;
    let stripe = tally::billing::stripe::StripeClient::new(reqwest::Client::new(), &base, DEFAULT_SECRET_KEY);
    let http = reqwest::Client::new();
    let create = |event_name: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let mut form = vec![
            ("display_name", event_name),
            ("event_name", event_name),
            ("default_aggregation[formula]", "sum"),
            ("customer_mapping[type]", "by_id"),
            ("customer_mapping[event_payload_key]", "stripe_customer_id"),
            ("value_settings[event_payload_key]", "value"),
        ];
        for (key, value) in extra {
            form.retain(|(k, _)| k != key);
            form.push((key, value));
        }
        let request = http.post(format!("{base}/v1/billing/meters")).bearer_auth(DEFAULT_SECRET_KEY).form(&form);
        async move {
            let reply = request.send().await.unwrap();
            assert!(reply.status().is_success(), "{}", reply.text().await.unwrap());
            reply.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };
    let plan = |event_name: &str| tally::billing::setup::SetupPlan {
        event_name: event_name.into(),
        meter_display_name: "AI tokens".into(),
        product_name: "Tally AI tokens".into(),
        price: crate::support::catalog().get(AI_TOKENS_EVENT).and_then(|m| m.price.clone()),
        lookup_key: format!("tally_{event_name}"),
    };
    // (event name, the meter's settings that differ from Tally's, what setup must say)
    type Case = (&'static str, &'static [(&'static str, &'static str)], &'static str);
    let cases: [Case; 4] = [
        ("counted", &[("default_aggregation[formula]", "count")], "aggregates by \"count\""),
        ("by_customer_key", &[("customer_mapping[event_payload_key]", "customer")], "payload key \"customer\""),
        ("by_tokens_key", &[("value_settings[event_payload_key]", "tokens")], "payload key \"tokens\""),
        ("hourly", &[("event_time_window", "hour")], "pre-aggregated per hour"),
    ];
    for (event_name, extra, expected) in cases {
        let meter = create(event_name, extra).await;
        let refused = tally::billing::setup::setup(&stripe, &plan(event_name)).await.expect_err(event_name).to_string();
        assert!(refused.contains(&meter) && refused.contains(expected), "{event_name}: {refused}");
        assert_eq!(double.state().prices, 0, "{event_name}: no price was made for a meter that bills wrong");
    }
    // A deactivated meter accepts no events: refused too, while a right one is taken as it is.
    let right = create("right", &[]).await;
    double.deactivate_meter(&right);
    let refused = tally::billing::setup::setup(&stripe, &plan("right")).await.expect_err("inactive").to_string();
    assert!(refused.contains("inactive"), "{refused}");
    let fine = create("fine", &[]).await;
    let done = tally::billing::setup::setup(&stripe, &plan("fine")).await.unwrap();
    assert_eq!((done.meter_id, done.meter_created, done.price_created), (fine, false, true));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn meter_error_reports_are_fetched_and_shown_to_the_user_they_concern(pool: PgPool) {
    let (base, double) = start_double().await;
    let mut config = crate::support::config();
    config.stripe_secret_key = Some(DEFAULT_SECRET_KEY.into());
    config.stripe_api_base = base.clone();
    let app = crate::support::app_with(pool.clone(), config);
    let cookie = app.signup("reported@example.com").await;
    let user = app.user_id("reported@example.com").await;
    record(&app, user, 30).await;
    record(&app, user, 12).await;
    // Sign-up makes no Stripe call; the worker gives the account its customer before sending.
    let worker = worker(&pool, &base, DeliveryConfig { create_customers: true, ..fast_settings() });
    drain(&worker).await;
    let identifier: String =
        sqlx::query_scalar("SELECT identifier FROM meter_deliveries").fetch_one(&pool).await.unwrap();

    // Stripe's asynchronous validation finds a problem and notifies with a thin event.
    let thin = double.add_meter_error_report(
        "mtr_reported",
        &[&identifier],
        "meter_event_customer_not_found",
        "Customer not found.",
    );
    let payload = thin.to_string();
    let t = chrono::Utc::now().timestamp();
    let signature = stripe_double::webhook_signature(crate::support::WEBHOOK_SECRET, t, payload.as_bytes());
    let request = axum::http::Request::post(tally::billing::webhook::PATH)
        .header("host", "127.0.0.1:3000")
        .header("content-type", "application/json")
        .header("stripe-signature", format!("t={t},v1={signature}"))
        .body(axum::body::Body::from(payload))
        .unwrap();
    assert_eq!(app.send(request).await.status, axum::http::StatusCode::OK);

    // The worker fetches the details (GET /v2/core/events/{id}) and maps the identifier back to the user.
    worker.step().await.unwrap();
    let overview = app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json();
    let sync = &overview["sync"];
    assert_eq!(sync["reportedByStripe"], 2, "both events of the delivery: {sync}");
    assert_eq!(sync["lastReport"], "meter_event_customer_not_found: Customer not found.");
    let page = app.get("/", Some(&cookie)).await.body.replace("<!>", "");
    assert!(page.contains("Stripe reported that it could not count 2 events"), "{page}");
    // Not counted at Stripe, so not delivered: failed with Stripe's reason, and sent again under a new identifier
    // once the cause is fixed.
    assert_eq!(outbox(&pool, "failed").await, 2);
    let reason: String = sqlx::query_scalar("SELECT last_error FROM meter_deliveries").fetch_one(&pool).await.unwrap();
    assert_eq!(reason, "meter_event_customer_not_found: Customer not found.");
    assert_eq!(tally::billing::uncertain::retry_failed(&pool, chrono::Utc::now()).await.unwrap(), (1, 0));
    drain(&worker).await;
    let resent: Vec<String> = double.events().into_iter().map(|e| e.identifier).collect();
    assert_eq!(resent.len(), 2, "sent again: {resent:?}");
    assert_ne!(resent[1], identifier, "under a new identifier");
    assert_eq!(outbox(&pool, "delivered").await, 2);

    // Someone else's dashboard says nothing about it.
    let other = app.signup("unconcerned@example.com").await;
    let theirs = app.post_form("/api/billing/overview", &[], Some(&other)).await.json();
    assert_eq!(theirs["sync"]["reportedByStripe"], 0);
}

/// The sync state's counts, computed the cheap way (period counters minus undelivered rows), equal a count of every
/// outbox row joined to its event, for the current period, the previous one and all time, whatever the mix of states.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn sync_counts_equal_a_count_of_every_row(pool: PgPool) {
    let app = app(pool.clone());
    let (user, _) = customer(&app, "counts@example.com").await;
    let now = chrono::Utc::now();
    let current = crate::support::calendar_month(&pool, now, "Asia/Tokyo").await;
    let previous =
        crate::support::calendar_month(&pool, current.start - chrono::Duration::seconds(1), "Asia/Tokyo").await;
    for i in 0..60 {
        let at = if i % 3 == 0 { previous.start + chrono::Duration::hours(i) } else { now };
        app.insert_usage(user, AI_TOKENS_EVENT, 1 + i, &at.to_rfc3339()).await;
    }
    // Every state, spread over both periods (the status column is all the count reads).
    sqlx::query(
        "UPDATE meter_event_outbox o SET status = (ARRAY['delivered', 'delivered', 'pending', 'awaiting_customer',
                                                        'failed', 'expired'])[1 + (e.quantity / 3) % 6]
         FROM usage_events e WHERE e.id = o.usage_event_id",
    )
    .execute(&pool)
    .await
    .unwrap();

    let spans = [
        (current.start, current.end),
        (previous.start, previous.end),
        (chrono::DateTime::UNIX_EPOCH, now + chrono::Duration::days(36_500)),
    ];
    for (from, until) in spans {
        let span = tally::usage::period::Span { start: from, end: until };
        let calendar = tally::usage::period::Period { kind: tally::usage::period::PeriodKind::Calendar, span };
        let sync = tally::billing::status::for_user(&pool, user, calendar).await.unwrap();
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT o.status, count(*) FROM meter_event_outbox o JOIN usage_events e ON e.id = o.usage_event_id
             WHERE o.user_id = $1 AND e.occurred_at >= $2 AND e.occurred_at < $3 GROUP BY o.status",
        )
        .bind(user)
        .bind(from)
        .bind(until)
        .fetch_all(&pool)
        .await
        .unwrap();
        let count = |status: &str| counts.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
        assert_eq!(
            (sync.delivered, sync.pending, sync.awaiting_customer, sync.failed, sync.expired),
            (count("delivered"), count("pending"), count("awaiting_customer"), count("failed"), count("expired")),
            "{from} – {until}"
        );
        assert!(sync.delivered > 0 && sync.expired > 0, "both kinds are present in {from} – {until}");
    }
}
