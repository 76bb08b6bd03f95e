//! The billing clock scenarios: the app, its delivery worker and a Stripe double that models Stripe's clocks
//! (identifier memory that ends after 24 h, invoices finalized at period end + grace that ignore usage arriving
//! later, meter event summaries), on one clock the tests move instead of waiting. Each scenario ends with the units
//! on Stripe's invoices (or meter) equal to the units recorded, none twice.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use stripe_double::{Faults, StripeDouble, DEFAULT_SECRET_KEY};
use tally::billing::delivery::DeliveryWorker;
use tally::clock::Clock;
use tally::config::DeliveryConfig;
use tally::usage::AI_TOKENS_EVENT;
use uuid::Uuid;

use crate::delivery::fast_settings;
use crate::support::{app, TestApp, WEBHOOK_SECRET};

/// Stripe's default finalization grace, as the worker is configured in these scenarios.
const GRACE_SECONDS: i64 = 3_600;

/// The app's worker and a double on one movable clock.
struct Scenario {
    app: TestApp,
    double: StripeDouble,
    double_base: String,
    worker: DeliveryWorker,
    clock: Clock,
}

impl Scenario {
    async fn start(pool: PgPool, settings: DeliveryConfig) -> Scenario {
        let clock = Clock::system();
        let double = StripeDouble::with_clock(DEFAULT_SECRET_KEY, clock.clone());
        double.add_meter(AI_TOKENS_EVENT);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(stripe_double::serve(listener, double.clone()));
        let worker = DeliveryWorker::new(pool.clone(), &base, DEFAULT_SECRET_KEY, settings, "Asia/Tokyo")
            .with_clock(clock.clone());
        Scenario { app: app(pool), double, double_base: base, worker, clock }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A user linked to a customer of its own.
    async fn customer(&self, email: &str) -> (Uuid, String) {
        self.app.signup(email).await;
        let user = self.app.user_id(email).await;
        let customer = format!("cus_{}", &user.simple().to_string()[..12]);
        tally::billing::status::link_customer(&self.app.pool, email, &customer).await.expect("link");
        (user, customer)
    }

    async fn record(&self, user: Uuid, quantity: i64, at: DateTime<Utc>) {
        self.app.insert_usage(user, AI_TOKENS_EVENT, quantity, &at.to_rfc3339()).await;
    }

    /// Worker steps until one does nothing.
    async fn steps(&self) {
        for _ in 0..50 {
            let progress = self.worker.step().await.expect("worker step");
            if progress.calls + progress.batched + progress.resolved + progress.restamped + progress.uncertain == 0 {
                return;
            }
        }
    }

    /// Moves the clock `total` forward in `every` steps, letting the worker work after each.
    async fn pass(&self, total: chrono::Duration, every: chrono::Duration) {
        let mut passed = chrono::Duration::zero();
        while passed < total {
            self.clock.advance(every);
            passed += every;
            self.steps().await;
        }
    }

    /// Delivers a Stripe event to the webhook endpoint, signed as Stripe signs it.
    async fn webhook(&self, event: serde_json::Value) {
        let payload = event.to_string().into_bytes();
        let t = Utc::now().timestamp();
        let request = Request::post("/api/stripe/webhook")
            .header(header::HOST, "127.0.0.1:3000")
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                "stripe-signature",
                format!("t={t},v1={}", stripe_double::webhook_signature(WEBHOOK_SECRET, t, &payload)),
            )
            .body(Body::from(payload))
            .unwrap();
        let reply = self.app.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "webhook refused: {}", reply.body);
    }

    /// `customer.subscription.<kind>` with the current period `[start, end)`, created now.
    async fn subscription_event(
        &self,
        kind: &str,
        customer: &str,
        status: &str,
        period: (DateTime<Utc>, DateTime<Utc>),
    ) {
        let id = format!("evt_{}", Uuid::new_v4().simple());
        self.webhook(json!({
            "id": id, "object": "event", "type": format!("customer.subscription.{kind}"),
            "created": self.now().timestamp(), "livemode": false, "api_version": "2025-03-31.basil",
            "data": { "object": {
                "id": format!("sub_{customer}"), "object": "subscription", "customer": customer, "status": status,
                "cancel_at_period_end": false,
                "items": { "object": "list", "data": [{
                    "id": "si_1", "object": "subscription_item",
                    "current_period_start": period.0.timestamp(), "current_period_end": period.1.timestamp()
                }]}
            }}
        }))
        .await;
    }

    /// `invoice.<kind>` for `customer` with one metered line of `quantity` for `period`, as Stripe sends it (basil).
    async fn invoice_event(
        &self,
        kind: &str,
        invoice: &str,
        customer: &str,
        status: &str,
        period: (DateTime<Utc>, DateTime<Utc>),
        quantity: i64,
    ) {
        let id = format!("evt_{}", Uuid::new_v4().simple());
        self.webhook(json!({
            "id": id, "object": "event", "type": format!("invoice.{kind}"),
            "created": self.now().timestamp(), "livemode": false, "api_version": "2025-03-31.basil",
            "data": { "object": {
                "id": invoice, "object": "invoice", "customer": customer, "status": status, "currency": "jpy",
                "amount_paid": 0,
                "parent": { "type": "subscription_details",
                            "subscription_details": { "subscription": format!("sub_{customer}") } },
                "lines": { "object": "list", "data": [{
                    "id": format!("il_{invoice}"), "object": "line_item",
                    "parent": { "type": "subscription_item_details",
                                "subscription_item_details": { "subscription_item": "si_1" } },
                    "pricing": { "type": "price_details", "price_details": { "price": "price_metered" } },
                    "period": { "start": period.0.timestamp(), "end": period.1.timestamp() },
                    "quantity": quantity
                }]}
            }}
        }))
        .await;
    }

    /// Stripe's invoices against Tally's deliveries, as `tally stripe reconcile` compares them.
    async fn invoice_checks(&self) -> Vec<tally::billing::reconcile::InvoiceCheck> {
        let filter = tally::billing::reconcile::InvoiceFilter {
            since: DateTime::UNIX_EPOCH,
            event_name: Some(AI_TOKENS_EVENT),
            price: None,
            invoice: None,
        };
        tally::billing::reconcile::invoices(&self.app.pool, &filter).await.expect("reconcile invoices")
    }

    /// What Stripe's invoice for `customer`'s period `[start, end)` bills, finalized at end + grace.
    fn invoiced(&self, customer: &str, period: (DateTime<Utc>, DateTime<Utc>)) -> i64 {
        self.double.invoiced_quantity(
            customer,
            AI_TOKENS_EVENT,
            period.0.timestamp(),
            period.1.timestamp(),
            GRACE_SECONDS,
        )
    }

    async fn delivery_column(&self, column: &str) -> Vec<Option<String>> {
        sqlx::query_scalar(&format!("SELECT {column}::text FROM meter_deliveries ORDER BY created_at"))
            .fetch_all(&self.app.pool)
            .await
            .unwrap()
    }
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

/// Settings on the scenario clock: retries every few simulated minutes.
fn clocked_settings() -> DeliveryConfig {
    DeliveryConfig { retry_base_ms: 60_000, retry_max_ms: 600_000, ..fast_settings() }
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_lost_answer_then_thirty_hours_of_401s_bills_once(pool: PgPool) {
    let s = Scenario::start(pool, clocked_settings()).await;
    let (counted_user, counted_customer) = s.customer("counted@example.com").await;
    let (dropped_user, dropped_customer) = s.customer("dropped@example.com").await;
    s.record(counted_user, 100, s.now()).await;
    // The first call of one customer is counted but its answer lost; the other's connection drops before Stripe
    // handles it. Then the key is rolled at Stripe and Tally keeps the old one for 30 hours: 401 after 401.
    s.double.set_faults(Faults { lose_response: 1, ..Faults::default() });
    s.steps().await;
    s.double.set_faults(Faults { drop_connection: 1, ..Faults::default() });
    s.record(dropped_user, 7, s.now()).await;
    s.steps().await;
    assert_eq!(s.double.total(&counted_customer, AI_TOKENS_EVENT), 100, "the lost answer's event counted");
    assert_eq!(s.double.total(&dropped_customer, AI_TOKENS_EVENT), 0, "the dropped call did not");
    s.double.set_secret_key("sk_test_rolled");
    s.pass(chrono::Duration::hours(30), minutes(10)).await;
    // By now Stripe has long forgotten both identifiers: a re-send under them would be counted again.
    assert_eq!(s.delivery_column("status").await, [Some("uncertain".to_owned()), Some("uncertain".to_owned())]);

    s.double.set_secret_key(DEFAULT_SECRET_KEY);
    s.pass(chrono::Duration::hours(2), minutes(10)).await;
    assert_eq!(s.double.total(&counted_customer, AI_TOKENS_EVENT), 100, "counted once, not re-sent");
    assert_eq!(s.double.total(&dropped_customer, AI_TOKENS_EVENT), 7, "not counted, so sent again");
    assert_eq!(s.delivery_column("status").await, [Some("delivered".to_owned()), Some("delivered".to_owned())]);
    let resolutions = s.delivery_column("resolution").await;
    assert!(resolutions[0].as_deref().unwrap_or_default().starts_with("counted"), "{resolutions:?}");
    assert!(resolutions[1].as_deref().unwrap_or_default().contains("new identifier"), "{resolutions:?}");
    let previous: Vec<String> = sqlx::query_scalar("SELECT unnest(previous_identifiers) FROM meter_deliveries")
        .fetch_all(&s.app.pool)
        .await
        .unwrap();
    assert_eq!(previous.len(), 1, "the resent delivery keeps its old identifier on record");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn stripe_down_for_three_hours_across_a_renewal_bills_every_unit_on_the_next_invoice(pool: PgPool) {
    let s = Scenario::start(pool, clocked_settings()).await;
    let (user, customer) = s.customer("renewal@example.com").await;
    let t0 = DateTime::from_timestamp(s.now().timestamp(), 0).unwrap();
    let old_period = (t0 - chrono::Duration::days(29), t0 + minutes(30));
    let new_period = (old_period.1, old_period.1 + chrono::Duration::days(30));
    s.subscription_event("created", &customer, "active", old_period).await;

    // Stripe goes down (every meter event call a 500) just before the period ends, for three hours.
    s.double.set_faults(Faults { server_error: u32::MAX, ..Faults::default() });
    s.record(user, 40, s.now()).await;
    s.pass(minutes(20), minutes(5)).await;
    s.record(user, 60, s.now()).await;
    s.pass(minutes(40), minutes(5)).await;
    // Renewed at Stripe meanwhile, but the webhook is as late as everything else: usage goes on.
    s.record(user, 25, s.now()).await;
    s.pass(minutes(120), minutes(5)).await;

    s.double.set_faults(Faults::default());
    s.subscription_event("updated", &customer, "active", new_period).await;
    s.pass(minutes(60), minutes(5)).await;

    assert_eq!(s.invoiced(&customer, old_period), 0, "nothing reached Stripe before that invoice was final");
    assert_eq!(s.invoiced(&customer, new_period), 125, "so all of it is on the next invoice, once");
    assert_eq!(s.double.total(&customer, AI_TOKENS_EVENT), 125);
    let late: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT late_from_period_start, late_from_period_end FROM meter_deliveries WHERE late_from_period_start IS NOT NULL",
    )
    .fetch_all(&s.app.pool)
    .await
    .unwrap();
    assert!(!late.is_empty() && late.iter().all(|p| *p == old_period), "late usage keeps its own period: {late:?}");

    // Stripe's invoices, as their webhooks report them, agree with Tally period by period, and the old period's
    // line names what went to the next invoice.
    s.invoice_event("finalized", "in_old", &customer, "open", old_period, s.invoiced(&customer, old_period)).await;
    s.invoice_event("created", "in_new", &customer, "draft", new_period, s.invoiced(&customer, new_period)).await;
    let checks = s.invoice_checks().await;
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| c.matches()), "{checks:?}");
    let old = checks.iter().find(|c| c.invoice == "in_old").unwrap();
    assert_eq!((old.invoiced, old.moved_to_next), (0, 100), "the 40 + 60 used before the renewal");
}

/// An operator who sets STRIPE_INVOICE_GRACE_MINUTES longer than the account's real grace lets usage reach Stripe
/// after the invoice was final: the meter has it, the invoice does not, and the invoice comparison says so.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn usage_that_missed_a_finalized_invoice_shows_in_the_invoice_comparison_with_its_reason(pool: PgPool) {
    let settings = DeliveryConfig { invoice_grace_minutes: 180, ..clocked_settings() };
    let s = Scenario::start(pool, settings).await;
    let (user, customer) = s.customer("grace@example.com").await;
    let t0 = DateTime::from_timestamp(s.now().timestamp(), 0).unwrap();
    let period = (t0 - chrono::Duration::days(29), t0 + minutes(10));
    s.subscription_event("created", &customer, "active", period).await;
    s.double.set_faults(Faults { server_error: u32::MAX, ..Faults::default() });
    s.record(user, 80, s.now()).await;
    s.pass(minutes(100), minutes(5)).await;
    s.double.set_faults(Faults::default());
    s.pass(minutes(10), minutes(5)).await;

    assert_eq!(s.double.total(&customer, AI_TOKENS_EVENT), 80, "the meter has it");
    assert_eq!(s.invoiced(&customer, period), 0, "Stripe's invoice, final an hour after the period, does not");
    s.invoice_event("finalized", "in_missed", &customer, "open", period, 0).await;
    let checks = s.invoice_checks().await;
    assert_eq!(checks.len(), 1);
    assert!(!checks[0].matches());
    assert_eq!((checks[0].invoiced, checks[0].delivered), (0, 80));
    let reason = checks[0].reason().unwrap();
    assert!(reason.contains("STRIPE_INVOICE_GRACE_MINUTES"), "{reason}");
    // `tally stripe status` lists it too.
    let status = tally::billing::status::read(&s.app.pool).await.unwrap();
    assert_eq!(status.invoice_differences, checks);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn usage_before_subscribing_is_not_billed_whatever_the_webhook_order(pool: PgPool) {
    for webhook_first in [false, true] {
        let s = Scenario::start(pool.clone(), clocked_settings()).await;
        let (user, customer) = s.customer(&format!("order-{webhook_first}@example.com")).await;
        let start = DateTime::from_timestamp(s.now().timestamp() + 60, 0).unwrap();
        let period = (start, start + chrono::Duration::days(30));
        // Free usage before the subscription starts (two of them in the second before it), billed usage after.
        for (quantity, offset_ms) in [(10, -30_000), (20, -300), (30, 200), (40, 10_000)] {
            s.record(user, quantity, start + chrono::Duration::milliseconds(offset_ms)).await;
        }
        s.clock.set(start + chrono::Duration::seconds(20));
        if webhook_first {
            s.subscription_event("created", &customer, "active", period).await;
            s.steps().await;
        } else {
            s.steps().await;
            s.subscription_event("created", &customer, "active", period).await;
            s.steps().await;
        }
        assert_eq!(s.double.total(&customer, AI_TOKENS_EVENT), 100, "every unit reached the meter");
        assert_eq!(s.invoiced(&customer, period), 70, "webhook first: {webhook_first}");
    }
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn two_checkouts_at_once_open_one_session_and_a_second_subscription_is_flagged(pool: PgPool) {
    let s = Scenario::start(pool.clone(), clocked_settings()).await;
    let mut config = crate::support::config();
    config.stripe_secret_key = Some(DEFAULT_SECRET_KEY.into());
    config.stripe_api_base = s.double_base.clone();
    crate::support::save_price(&pool, AI_TOKENS_EVENT, "price_metered", "0.00005").await;
    let app = crate::support::app_with(pool, config);
    let cookie = app.signup("tabs@example.com").await;
    let user = app.user_id("tabs@example.com").await;

    let (first, second) = tokio::join!(
        app.post_form("/api/billing/checkout", &[], Some(&cookie)),
        app.post_form("/api/billing/checkout", &[], Some(&cookie))
    );
    let (first, second) = (first.headers["location"].clone(), second.headers["location"].clone());
    assert_eq!(first, second, "both tabs get the same Checkout");
    assert_eq!(s.double.state().calls.get("POST /v1/checkout/sessions"), Some(&1), "one session at Stripe");
    // Sign-up made no customer; Checkout gave the account its one (both tabs asked for it).
    assert_eq!(s.double.state().customers, 1);

    // Subscribed: the server refuses another Checkout, whatever the page shows.
    let customer: String = sqlx::query_scalar("SELECT stripe_customer_id FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let period = (s.now(), s.now() + chrono::Duration::days(30));
    let scenario = Scenario { app, ..s };
    scenario.subscription_event("created", &customer, "active", period).await;
    let refused = scenario.app.post_form("/api/billing/checkout", &[], Some(&cookie)).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert!(refused.body.contains("already have a subscription"), "{}", refused.body);

    // A second live subscription made elsewhere (Stripe's dashboard) is flagged, not silently billed twice.
    scenario.webhook(json!({
        "id": "evt_second_sub", "object": "event", "type": "customer.subscription.created",
        "created": scenario.now().timestamp(), "livemode": false,
        "data": { "object": {
            "id": "sub_second", "object": "subscription", "customer": customer, "status": "active",
            "items": { "data": [{ "current_period_start": period.0.timestamp(), "current_period_end": period.1.timestamp() }] }
        }}
    }))
    .await;
    let status = tally::billing::status::read(&scenario.app.pool).await.unwrap();
    assert_eq!(status.duplicate_subscriptions.len(), 1, "{:?}", status.duplicate_subscriptions);
    assert_eq!(status.duplicate_subscriptions[0].0, "sub_second");
    let overview = scenario.app.post_form("/api/billing/overview", &[], Some(&cookie)).await.json();
    assert_eq!(overview["duplicateSubscription"], true);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn one_account_stripe_refuses_holds_up_no_other_and_gets_its_customer_once_fixed(pool: PgPool) {
    let s = Scenario::start(pool.clone(), DeliveryConfig { create_customers: true, ..clocked_settings() }).await;
    // Signed up before Stripe was configured: no customers yet. The first one's creation fails at Stripe.
    for email in ["refused@example.com", "b@example.com", "c@example.com", "d@example.com"] {
        s.app.signup(email).await;
    }
    s.double.set_faults(Faults { customer_error_emails: vec!["refused@example.com".into()], ..Faults::default() });
    s.steps().await;
    let customers: Vec<(String, Option<String>, i32)> =
        sqlx::query_as("SELECT email, stripe_customer_id, customer_attempts FROM users ORDER BY created_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(customers[0].1.is_none() && customers[0].2 >= 1, "{customers:?}");
    assert!(customers[1..].iter().all(|(_, customer, _)| customer.is_some()), "the others got theirs: {customers:?}");
    let status = tally::billing::status::read(&pool).await.unwrap();
    assert_eq!(status.customer_failures.len(), 1);
    assert!(
        status.customer_failures[0].2.as_deref().unwrap_or_default().contains("500"),
        "{:?}",
        status.customer_failures
    );

    // Fixed at Stripe: the next attempt (after its backoff) uses a new Idempotency-Key instead of replaying the 500.
    s.double.set_faults(Faults::default());
    s.pass(chrono::Duration::minutes(30), minutes(5)).await;
    let refused: Option<String> =
        sqlx::query_scalar("SELECT stripe_customer_id FROM users WHERE email = 'refused@example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(refused.is_some());
    assert_eq!(s.double.state().customers, 4, "one customer per account, no duplicates");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_customer_created_behind_a_lost_answer_is_found_not_duplicated(pool: PgPool) {
    let s = Scenario::start(pool.clone(), DeliveryConfig { create_customers: true, ..clocked_settings() }).await;
    s.app.signup("lost@example.com").await;
    let user = s.app.user_id("lost@example.com").await;
    // Stripe created it, but the answer never reached Tally (another Idempotency-Key would create a second one).
    let stripe = tally::billing::stripe::StripeClient::new(reqwest::Client::new(), &s.double_base, DEFAULT_SECRET_KEY);
    let made = stripe.create_customer("lost@example.com", &user.to_string(), "lost-answer").await.unwrap();
    sqlx::query("UPDATE users SET customer_attempts = 3").execute(&pool).await.unwrap();
    s.steps().await;
    let linked: Option<String> =
        sqlx::query_scalar("SELECT stripe_customer_id FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(linked, Some(made));
    assert_eq!(s.double.state().customers, 1);
}

/// Rule 4: whatever the subscription does, the meter and the hard limit count exactly the usage of the period that
/// applies now, from a counter that forgot nothing at the switch (before: cancelling fell back to a calendar-month
/// counter that had missed everything recorded under the subscription that month).
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn cancel_mid_period_then_keep_using_keeps_the_meter_and_the_limit_whole(pool: PgPool) {
    use tally::usage::writer::{LimitPolicy, NewEvent};

    let s = Scenario::start(pool, clocked_settings()).await;
    let (user, customer) = s.customer("cancel@example.com").await;
    let state = &s.app.state;
    // The meter reads the real time; the subscription's period is laid around it.
    let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let period = (now - chrono::Duration::days(10), now + chrono::Duration::days(20));
    let mut recorded = 0;
    let mut record = |quantity: i64, at: DateTime<Utc>| {
        recorded += quantity;
        s.record(user, quantity, at)
    };

    // Usage before Stripe announces the subscription, then the subscription, then more usage.
    record(300, now - chrono::Duration::days(5)).await;
    s.subscription_event("created", &customer, "active", period).await;
    record(200, now).await;
    assert!(meter_is_whole(&s, user, "subscribed", "subscription").await >= 500);

    // past_due still bills the subscription's period.
    s.clock.advance(minutes(1));
    s.subscription_event("updated", &customer, "past_due", period).await;
    meter_is_whole(&s, user, "past due", "subscription").await;

    // Paused (not live): the calendar month applies, with what was recorded under the subscription in it.
    s.clock.advance(minutes(1));
    s.subscription_event("updated", &customer, "paused", period).await;
    let paused = meter_is_whole(&s, user, "paused", "calendar").await;
    assert!(paused >= 200, "the month keeps the usage recorded under the subscription");
    record(50, now).await;
    meter_is_whole(&s, user, "used while paused", "calendar").await;

    // Resumed: the subscription's period again, including what was used while paused.
    s.clock.advance(minutes(1));
    s.subscription_event("updated", &customer, "active", period).await;
    assert!(meter_is_whole(&s, user, "resumed", "subscription").await >= 550);

    // Cancelled immediately, mid-period, then used some more.
    s.clock.advance(minutes(1));
    s.subscription_event("deleted", &customer, "canceled", period).await;
    let after_cancel = meter_is_whole(&s, user, "cancelled", "calendar").await;
    assert!(after_cancel >= 250, "nothing recorded this month is forgotten at the switch");
    record(25, now).await;
    let used = meter_is_whole(&s, user, "used after cancelling", "calendar").await;

    // The hard limit reads the same counter: room for exactly `limit - used`.
    crate::support::set_token_limit(&s.app.pool, Some(user), Some(used + 10)).await;
    let submit = |quantity: i64| {
        let event = NewEvent {
            event_type: AI_TOKENS_EVENT.into(),
            quantity,
            metadata: json!({}),
            idempotency_key: None,
            occurred_at: Utc::now(),
        };
        state.writer.submit(tally::auth::caller::Caller::User(user), vec![event], LimitPolicy::Enforce)
    };
    let refused = submit(11).await.expect_err("one past the limit");
    assert!(matches!(refused, tally::usage::writer::WriteError::LimitExceeded { remaining: 10, .. }), "{refused:?}");
    let allowed = submit(10).await.expect("exactly up to the limit");
    assert_eq!(allowed.allowance.map(|a| a.used), Some(used + 10));
    recorded += 10;
    meter_is_whole(&s, user, "at the limit", "calendar").await;

    // A new subscription starting now counts from its own start.
    s.clock.advance(minutes(1));
    let next = (now, now + chrono::Duration::days(30));
    s.subscription_event("created", &customer, "active", next).await;
    meter_is_whole(&s, user, "subscribed again", "subscription").await;

    // And every unit recorded reached Stripe's meter once.
    s.steps().await;
    assert_eq!(s.double.total(&customer, AI_TOKENS_EVENT), recorded);
}

/// The meter equals the events of the period the rule says applies now (of `expected_kind`), recounted from the
/// events themselves; returns it.
async fn meter_is_whole(s: &Scenario, user: Uuid, step: &str, expected_kind: &str) -> i64 {
    let (pool, clock) = (&s.app.pool, &s.app.state.clock);
    let applying = tally::usage::period::for_user(pool, clock, user, Utc::now()).await.unwrap();
    assert_eq!(applying.kind, expected_kind, "{step}");
    let summary =
        tally::usage::totals::summary_at(pool, clock, &crate::support::catalog(), user, AI_TOKENS_EVENT, Utc::now())
            .await
            .unwrap()
            .unwrap();
    let recount = crate::support::recount(pool, user, AI_TOKENS_EVENT, &applying).await;
    assert_eq!((summary.period_start, summary.period_end), (applying.start, applying.end), "{step}");
    assert_eq!(summary.used, recount, "{step}: the meter counts the whole period that applies");
    summary.used
}
