//! Delivery of recorded usage to Stripe's meter: every committed usage event reaches it exactly once in effect.
//!
//! Each usage event has a `meter_event_outbox` row, written in the transaction that recorded it. The worker
//! ([`DeliveryWorker::step`], looped by [`DeliveryWorker::run`]; any number of processes may run it):
//!
//! 1. **Batches** due outbox rows into `meter_deliveries`: per customer, meter and billing period, summing up to
//!    `STRIPE_BATCH_MAX_EVENTS` events (and at most 15 digits, Stripe's limit) into one meter event stamped with
//!    the latest member's time, which lies inside the period. Rows are taken `FOR UPDATE SKIP LOCKED`; a customer
//!    with a delivery still open gets no new one, so events due while a call is in flight ride together on the
//!    next one. The batch is committed, with its members and its `identifier`, before it is ever sent.
//! 2. **Claims** due deliveries under a lease: at most one per customer and meter across all workers (Stripe
//!    allows one concurrent call per customer and meter), oldest first.
//! 3. **Sends** each with its `identifier` (a single event's own id, else the batch id), within a rate shared by
//!    all workers on the database (`stripe_call_budget`: Stripe's limit is per account, not per process).
//!    A 200, or Stripe's 400 "An event already exists with identifier …", marks it delivered; 429, 5xx, 409,
//!    timeouts and lost answers retry later with exponential backoff and jitter; other 4xx mark it failed with
//!    Stripe's message (shown by `tally stripe status` and on the dashboard; `tally stripe retry` re-queues).
//!    Events too old for Stripe's 35-day window are marked expired instead of sent.
//!
//! Why a fresh `Idempotency-Key` per attempt: Stripe saves the first answer under a key, *including a 500*, so a
//! key reused after a 500 would get that 500 forever. The identifier, not the key, is what makes a retry count
//! once: a retry of a call whose answer was lost gets the "already exists" 400, which counts as delivered.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::billing::stripe::{MeterEvent, StripeClient, StripeError};
use crate::clock::Clock;
use crate::config::DeliveryConfig;
use crate::error::AppError;
use crate::retry::{backoff, random_unit};
use crate::usage::period::LIVE_STATUSES;

/// Stripe takes meter events from the past 35 days; older ones are expired with this margin left for the call.
const STRIPE_WINDOW: chrono::Duration = chrono::Duration::days(35);
const EXPIRY_MARGIN: chrono::Duration = chrono::Duration::minutes(5);
/// Stripe refuses meter values of more than 15 digits.
const MAX_METER_VALUE: i64 = 999_999_999_999_999;
/// Outbox rows batched per step, and customers considered per step.
const ROWS_PER_STEP: i64 = 100_000;
const CUSTOMERS_PER_STEP: i64 = 2_000;
/// Stripe de-duplicates identifiers for at least 24 hours. A delivery whose outcome is unknown is re-sent under its
/// identifier only while its first unknown attempt is younger than this: well inside the window, so that a
/// re-send can never be counted a second time by a Stripe that has forgotten the identifier.
pub const IDENTIFIER_SAFE_AGE: chrono::Duration = chrono::Duration::hours(12);
/// How long after its latest attempt an uncertain delivery is checked against the meter event summaries: Stripe
/// aggregates asynchronously, so a summary read right after a call may not include it yet.
pub const SUMMARY_SETTLE: chrono::Duration = chrono::Duration::minutes(30);
/// Usage of a subscription period is sent at the latest this long before its invoice is finalized (period end +
/// grace); a call in flight at the deadline could otherwise land after it.
pub const DEADLINE_MARGIN: chrono::Duration = chrono::Duration::minutes(5);
/// Serialises claims across workers so that "no call in flight for this customer and meter" is read and acted
/// on atomically (the claim is one short statement), and so that the shared call budget is read and spent at once.
const CLAIM_LOCK: i64 = 0x7461_6c6c_7964_6c76;

/// What one or more steps did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Outbox rows put into new deliveries.
    pub batched: u64,
    /// Deliveries created.
    pub deliveries: u64,
    /// Meter event calls made.
    pub calls: u64,
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    /// Outbox rows and deliveries marked expired.
    pub expired: u64,
    pub customers_created: u64,
    /// Deliveries whose outcome became unknown beyond the identifier window's safety margin (now `uncertain`).
    pub uncertain: u64,
    /// Uncertain deliveries settled from the meter event summaries (counted, or resent under a new identifier).
    pub resolved: u64,
    /// Deliveries that missed their period's invoice, restamped into the current period (billed on the next one).
    pub restamped: u64,
    /// Set when the shared call budget was spent: how long until the next call may be made.
    pub budget_wait: Option<Duration>,
}

impl Progress {
    fn did_work(&self) -> bool {
        self.batched
            + self.calls
            + self.expired
            + self.customers_created
            + self.resolved
            + self.restamped
            + self.uncertain
            > 0
    }

    fn add(&mut self, other: Progress) {
        self.batched += other.batched;
        self.deliveries += other.deliveries;
        self.calls += other.calls;
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.failed += other.failed;
        self.expired += other.expired;
        self.customers_created += other.customers_created;
        self.uncertain += other.uncertain;
        self.resolved += other.resolved;
        self.restamped += other.restamped;
        self.budget_wait = other.budget_wait;
    }
}

/// Reports usage from the outbox to Stripe. Cheap to clone.
#[derive(Clone)]
pub struct DeliveryWorker {
    pool: PgPool,
    stripe: StripeClient,
    settings: DeliveryConfig,
    timezone: String,
    budget: CallBudget,
    /// The billing clock (tests move it).
    clock: Clock,
}

/// A delivery this worker holds the lease of.
#[derive(Debug, sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    identifier: String,
    stripe_customer_id: String,
    event_name: String,
    quantity: i64,
    event_timestamp: DateTime<Utc>,
    attempts: i32,
    lease_token: Uuid,
    /// When this attempt began, by the billing clock.
    attempt_started_at: DateTime<Utc>,
}

/// How one call ended, for the books.
enum Outcome {
    Delivered,
    Retry,
    Failed,
    Expired,
    /// Stripe may or may not have counted it, and it may not be re-sent: settled from the summaries later.
    Uncertain,
}

/// What a meter event call's answer says about whether Stripe counted the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallVerdict {
    /// Counted: a 200 with Stripe's answer, or "an event already exists with this identifier".
    Counted,
    /// Refused before it was recorded (429, 409, 401, 403: nothing was counted); try again later.
    RefusedRetry,
    /// Refused for good (another 4xx): nothing was counted; the delivery fails with Stripe's message.
    RefusedFinal,
    /// Unknown (a timeout, a lost or garbled answer, a 5xx): Stripe may have counted it. Retried under the same
    /// identifier while that is safe, else settled from the meter event summaries.
    Unknown { retry: bool },
}

impl CallVerdict {
    /// The verdict on one call's result.
    pub fn of(result: &Result<(), StripeError>) -> CallVerdict {
        match result {
            Ok(()) => CallVerdict::Counted,
            Err(err) if err.is_duplicate_identifier() => CallVerdict::Counted,
            // Authentication and permission errors wait for the operator to fix the key instead of failing usage.
            Err(StripeError::Api { status: 401 | 403 | 409 | 429, .. }) => CallVerdict::RefusedRetry,
            // Stripe may have done the work behind a 5xx; `Stripe-Should-Retry: false` says not to call again.
            Err(StripeError::Api { status, should_retry, .. }) if *status >= 500 => {
                CallVerdict::Unknown { retry: *should_retry != Some(false) }
            }
            Err(err @ StripeError::Api { .. }) if err.is_retryable() => CallVerdict::RefusedRetry,
            Err(StripeError::Api { .. }) => CallVerdict::RefusedFinal,
            Err(StripeError::Network(_)) => CallVerdict::Unknown { retry: true },
            // A 2xx whose body is not Stripe's answer: something answered, perhaps after Stripe counted it.
            Err(StripeError::Decode(_)) => CallVerdict::Unknown { retry: false },
        }
    }
}

impl DeliveryWorker {
    /// A worker for `stripe`. Its HTTP client gives every call `request_timeout_ms`.
    pub fn new(
        pool: PgPool,
        stripe_api_base: &str,
        secret_key: &str,
        settings: DeliveryConfig,
        timezone: &str,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .build()
            .unwrap_or_default();
        let stripe = StripeClient::new(http, stripe_api_base, secret_key);
        let rate = settings.calls_per_second.unwrap_or(if stripe.is_live() { 1_000 } else { 25 });
        let budget = CallBudget::new(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN));
        DeliveryWorker { pool, stripe, settings, timezone: timezone.to_owned(), budget, clock: Clock::system() }
    }

    /// The same worker on `clock` (tests move it to pass Stripe's time windows without waiting).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The worker the configuration asks for; `None` without `STRIPE_SECRET_KEY`.
    pub fn from_config(pool: PgPool, config: &crate::config::Config) -> Option<DeliveryWorker> {
        let key = config.stripe_secret_key.as_deref()?;
        Some(DeliveryWorker::new(pool, &config.stripe_api_base, key, config.delivery.clone(), &config.billing_timezone))
    }

    /// The Stripe client the worker calls with.
    pub fn stripe(&self) -> &StripeClient {
        &self.stripe
    }

    /// Delivers forever: steps while there is work, sleeps `poll_ms` when there is none.
    pub async fn run(self) {
        tracing::info!(
            calls_per_second = self.settings.calls_per_second,
            max_in_flight = self.settings.max_in_flight,
            "meter event delivery worker started"
        );
        let poll = Duration::from_millis(self.settings.poll_ms);
        loop {
            let pause = match self.step().await {
                Ok(progress) if progress.did_work() => continue,
                // Work is waiting for the shared budget: come back when it has a call again.
                Ok(progress) => progress.budget_wait.map_or(poll, |wait| wait.min(poll)),
                Err(err) => {
                    tracing::warn!(error = %err, "meter event delivery step failed; retrying");
                    poll
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Steps until nothing is left to send (deliveries waiting for a retry included) or `deadline` passes.
    /// Returns what was done and how many outbox rows are still pending.
    pub async fn drain(&self, deadline: Duration) -> Result<(Progress, i64), AppError> {
        let started = Instant::now();
        let mut total = Progress::default();
        loop {
            let progress = self.step().await?;
            total.add(progress);
            if progress.did_work() {
                continue;
            }
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM meter_event_outbox WHERE status = 'pending'")
                .fetch_one(&self.pool)
                .await?;
            if pending == 0 || started.elapsed() >= deadline {
                return Ok((total, pending));
            }
            tokio::time::sleep(Duration::from_millis(self.settings.poll_ms.min(50))).await;
        }
    }

    /// One round: create missing customers (now and then), expire what Stripe would refuse, batch due rows, then
    /// claim and send up to `max_in_flight` deliveries at once.
    pub async fn step(&self) -> Result<Progress, AppError> {
        let mut progress = Progress::default();
        if self.settings.create_customers {
            progress.customers_created =
                super::customers::create_missing(&self.pool, &self.stripe, 100, self.clock.now()).await?;
        }
        self.fetch_meter_error_details().await?;
        progress.expired = self.expire_old_rows().await?;
        progress.uncertain = self.stop_unsafe_resends().await?;
        progress.resolved = super::uncertain::resolve_due(&self.pool, &self.stripe, self.clock.now()).await?;
        progress.restamped = self.restamp_late().await?;
        let (batched, deliveries) = self.form_batches().await?;
        progress.batched = batched;
        progress.deliveries = deliveries;

        let (claimed, budget) = self.claim().await?;
        let milli_calls = match budget {
            // Nothing was claimed.
            Budget::Empty { wait } => {
                progress.budget_wait = Some(wait);
                return Ok(progress);
            }
            Budget::Held { milli_calls } => milli_calls,
        };
        let sends = claimed
            .into_iter()
            .enumerate()
            .map(|(position, delivery)| self.deliver(delivery, self.budget.slot(position, milli_calls)));
        let outcomes = futures::future::join_all(sends).await;
        for outcome in outcomes {
            progress.calls += 1;
            match outcome? {
                Outcome::Delivered => progress.delivered += 1,
                Outcome::Retry => progress.retried += 1,
                Outcome::Failed => progress.failed += 1,
                Outcome::Uncertain => progress.uncertain += 1,
                Outcome::Expired => {
                    progress.calls -= 1;
                    progress.expired += 1;
                }
            }
        }
        Ok(progress)
    }

    /// Fetches the details of meter error reports received as thin webhooks: which identifiers Stripe could not
    /// count, and why. A report Stripe cannot give now is tried again on a later step (and its error kept).
    async fn fetch_meter_error_details(&self) -> Result<(), AppError> {
        let reports: Vec<String> = sqlx::query_scalar(
            "SELECT stripe_event_id FROM meter_error_reports WHERE details_fetched_at IS NULL
             ORDER BY reported_at LIMIT 10",
        )
        .fetch_all(&self.pool)
        .await?;
        for report in reports {
            match self.stripe.get_v2_event(&report).await {
                Ok(event) => super::events::store_meter_error_details(&self.pool, &report, &event).await?,
                Err(err) => {
                    tracing::warn!(event = %report, error = %err, "could not fetch a meter error report");
                    sqlx::query("UPDATE meter_error_reports SET fetch_error = $2 WHERE stripe_event_id = $1")
                        .bind(&report)
                        .bind(err.to_string())
                        .execute(&self.pool)
                        .await?;
                    if !err.is_retryable() {
                        // Not going to change: stop asking.
                        sqlx::query(
                            "UPDATE meter_error_reports SET details_fetched_at = now() WHERE stripe_event_id = $1",
                        )
                        .bind(&report)
                        .execute(&self.pool)
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks unsent rows older than Stripe's window as expired: Stripe would refuse them, so they are kept, with
    /// the reason, instead of sent.
    async fn expire_old_rows(&self) -> Result<u64, AppError> {
        let expired = sqlx::query(
            "UPDATE meter_event_outbox o
             SET status = 'expired', updated_at = now(),
                 last_error = 'older than the 35 days Stripe accepts meter events for'
             FROM usage_events e
             WHERE e.id = o.usage_event_id AND o.status IN ('pending', 'awaiting_customer')
               AND o.delivery_id IS NULL AND e.occurred_at < $1",
        )
        .bind(self.clock.now() - STRIPE_WINDOW + EXPIRY_MARGIN)
        .execute(&self.pool)
        .await?;
        Ok(expired.rows_affected())
    }

    /// Deliveries whose first unknown attempt is older than [`IDENTIFIER_SAFE_AGE`], or whose period's invoice
    /// deadline has passed, are not sent again under their identifier: they become `uncertain` (with their outbox rows) and are settled from the meter event
    /// summaries ([`super::uncertain`]). A lease that ran out without being released is an attempt whose outcome
    /// nobody learnt (its worker died mid-call), so it counts as unknown too.
    async fn stop_unsafe_resends(&self) -> Result<u64, AppError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let stopped: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE meter_deliveries d
             SET status = 'uncertain',
                 uncertain_since = coalesce(d.uncertain_since, d.attempt_started_at),
                 leased_until = NULL, next_attempt_at = $1,
                 last_error = 'outcome unknown for longer than is safe to re-send under the same identifier; '
                              || 'checking Stripe''s meter event summaries',
                 updated_at = now()
             WHERE d.status = 'pending'
               AND (d.leased_until IS NULL OR d.leased_until <= now())
               AND coalesce(d.uncertain_since, CASE WHEN d.leased_until IS NOT NULL THEN d.attempt_started_at END)
                   < CASE WHEN d.period_kind = 'subscription'
                               AND d.period_end + $3 * interval '1 minute' <= $1 + $4 * interval '1 second'
                          -- Past its invoice's deadline a re-send under the old stamp would bill nothing: settle it
                          -- now, and if Stripe did not count it, it goes on the next invoice (restamp_late).
                          THEN 'infinity'::timestamptz
                          ELSE $2 END
             RETURNING d.id",
        )
        .bind(now)
        .bind(now - IDENTIFIER_SAFE_AGE)
        .bind(f64::from(self.settings.invoice_grace_minutes))
        .bind(DEADLINE_MARGIN.num_seconds() as f64)
        .fetch_all(&mut *tx)
        .await?;
        if !stopped.is_empty() {
            outbox_follows(&mut tx, &stopped, "uncertain", None).await?;
            tracing::warn!(
                deliveries = stopped.len(),
                "meter events with an unknown outcome past the safe re-send age"
            );
        }
        tx.commit().await?;
        Ok(stopped.len() as u64)
    }

    /// The late-usage rule. A delivery of a subscription period that has not reached Stripe by the period's
    /// invoice deadline (period end + grace − [`DEADLINE_MARGIN`]) would be accepted and billed on no invoice, so
    /// it is moved to the invoice after: stamped now, into the period containing now, under a new identifier, its
    /// own period kept in `late_from_period_*`. Only deliveries Stripe provably has not counted move (no unknown
    /// attempt, no lease left behind); the others are settled first.
    async fn restamp_late(&self) -> Result<u64, AppError> {
        let now = self.clock.now();
        let restamped = sqlx::query(
            "UPDATE meter_deliveries d
             SET late_from_period_start = coalesce(d.late_from_period_start, d.period_start),
                 late_from_period_end = coalesce(d.late_from_period_end, d.period_end),
                 period_start = x.period_start, period_end = x.period_end, period_kind = x.period_kind,
                 event_timestamp = $1,
                 previous_identifiers = d.previous_identifiers || d.identifier,
                 identifier = gen_random_uuid()::text,
                 next_attempt_at = $1, updated_at = now()
             FROM (SELECT c.id, p.* FROM meter_deliveries c
                   CROSS JOIN LATERAL billing_period_at(c.user_id, $1, $3, $4) AS p
                   WHERE c.status = 'pending' AND c.period_kind = 'subscription' AND c.uncertain_since IS NULL
                     AND c.leased_until IS NULL
                     AND c.period_end + $2 * interval '1 minute' <= $1 + $5 * interval '1 second'
                   FOR UPDATE OF c SKIP LOCKED) AS x
             WHERE d.id = x.id",
        )
        .bind(now)
        .bind(f64::from(self.settings.invoice_grace_minutes))
        .bind(&self.timezone)
        .bind(LIVE_STATUSES)
        .bind(DEADLINE_MARGIN.num_seconds() as f64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if restamped > 0 {
            tracing::warn!(deliveries = restamped, "usage missed its invoice's deadline; billed on the next invoice");
        }
        Ok(restamped)
    }

    /// Puts due outbox rows of customers without an open delivery into new deliveries; returns (rows, deliveries).
    async fn form_batches(&self) -> Result<(u64, u64), AppError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let users: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT o.user_id FROM meter_event_outbox o
             WHERE o.status = 'pending' AND o.delivery_id IS NULL AND o.next_attempt_at <= $2
               AND NOT EXISTS (SELECT 1 FROM meter_deliveries d WHERE d.user_id = o.user_id AND d.status = 'pending')
             LIMIT $1",
        )
        .bind(CUSTOMERS_PER_STEP)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        if users.is_empty() {
            return Ok((0, 0));
        }
        // Periods must not move while they are read: the same shared lock usage writers take.
        crate::usage::period::lock_users_shared(&mut tx, &users).await?;
        let rows: Vec<DueRow> = sqlx::query_as(
            "SELECT o.usage_event_id, o.user_id, u.stripe_customer_id, e.event_type, e.quantity, e.occurred_at,
                    p.period_start, p.period_end, p.period_kind,
                    c.period_start AS current_start, c.period_end AS current_end, c.period_kind AS current_kind
             FROM meter_event_outbox o
             JOIN usage_events e ON e.id = o.usage_event_id
             JOIN users u ON u.id = o.user_id
             CROSS JOIN LATERAL billing_period_at(o.user_id, e.occurred_at, $3, $4) AS p
             CROSS JOIN LATERAL billing_period_at(o.user_id, $5, $3, $4) AS c
             WHERE o.user_id = ANY($1) AND o.status = 'pending' AND o.delivery_id IS NULL
               AND o.next_attempt_at <= $5 AND u.stripe_customer_id IS NOT NULL
             ORDER BY o.user_id, e.occurred_at, o.usage_event_id
             LIMIT $2
             FOR UPDATE OF o SKIP LOCKED",
        )
        .bind(&users)
        .bind(ROWS_PER_STEP)
        .bind(&self.timezone)
        .bind(LIVE_STATUSES)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let rules = BatchRules {
            max_events: self.settings.batch_max_events as usize,
            now,
            invoice_grace: chrono::Duration::minutes(i64::from(self.settings.invoice_grace_minutes)),
        };
        let batches = plan_batches(rows, &rules);
        let mut deliveries = NewDeliveries::default();
        for batch in &batches {
            deliveries.push(batch);
        }
        deliveries.insert(&mut tx, now).await?;
        tx.commit().await?;
        Ok((deliveries.members.len() as u64, batches.len() as u64))
    }

    /// Leases up to `max_in_flight` due deliveries (and at most a second's worth of calls), one per customer and
    /// meter, none whose customer and meter already has a call in flight anywhere. Each is a call reserved from
    /// the shared budget, which may go into debt: the calls beyond what it held wait for their slot
    /// ([`CallBudget::slot`]), and every worker waits until the debt is paid. With less than one call in the
    /// budget, claims nothing and says how long until it holds one.
    async fn claim(&self) -> Result<(Vec<Claimed>, Budget), AppError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CLAIM_LOCK).execute(&mut *tx).await?;
        let milli_calls = self.budget.refill(&mut tx).await?;
        if milli_calls < 1_000 {
            tx.commit().await?;
            return Ok((Vec::new(), Budget::Empty { wait: self.budget.wait_for_one(milli_calls) }));
        }
        let claimed: Vec<Claimed> = sqlx::query_as(
            "WITH claimed AS (
                 UPDATE meter_deliveries d
                 SET leased_until = now() + $2 * interval '1 millisecond', lease_token = gen_random_uuid(),
                     attempts = d.attempts + 1, updated_at = now(),
                     -- A lease never released: the previous attempt's worker died mid-call, outcome unknown.
                     uncertain_since = CASE WHEN d.leased_until IS NOT NULL
                                            THEN coalesce(d.uncertain_since, d.attempt_started_at)
                                            ELSE d.uncertain_since END,
                     attempt_started_at = $4
                 WHERE d.id IN (
                     SELECT id FROM (
                         -- Per customer and meter the closing period's delivery first (its invoice is due first).
                         SELECT DISTINCT ON (c.stripe_customer_id, c.event_name) c.id, c.period_end, c.next_attempt_at
                         FROM meter_deliveries c
                         WHERE c.status = 'pending' AND c.next_attempt_at <= $4
                           AND (c.leased_until IS NULL OR c.leased_until <= now())
                           AND NOT EXISTS (
                               SELECT 1 FROM meter_deliveries f
                               WHERE f.status = 'pending' AND f.stripe_customer_id = c.stripe_customer_id
                                 AND f.event_name = c.event_name AND f.leased_until > now())
                         ORDER BY c.stripe_customer_id, c.event_name, c.period_end, c.next_attempt_at, c.created_at
                     ) AS one_per_customer
                     ORDER BY period_end, next_attempt_at
                     LIMIT $1)
                 RETURNING d.id, d.identifier, d.stripe_customer_id, d.event_name, d.quantity, d.event_timestamp,
                           d.attempts, d.lease_token, d.attempt_started_at
             ),
             spent AS (
                 UPDATE stripe_call_budget SET milli_calls = milli_calls - 1000 * (SELECT count(*) FROM claimed)
                 WHERE name = $3
             )
             SELECT * FROM claimed",
        )
        .bind(i64::from(self.settings.max_in_flight.min(self.budget.rate.get())))
        .bind(self.settings.lease_ms as f64)
        .bind(CallBudget::NAME)
        .bind(self.clock.now())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((claimed, Budget::Held { milli_calls }))
    }

    /// Sends one claimed delivery after waiting `slot` (its place in the shared call budget) and records how it
    /// ended ([`CallVerdict`]).
    async fn deliver(&self, delivery: Claimed, slot: Duration) -> Result<Outcome, AppError> {
        if delivery.event_timestamp < self.clock.now() - STRIPE_WINDOW + chrono::Duration::minutes(1) {
            self.settle(&delivery, "expired", Some("older than the 35 days Stripe accepts meter events for")).await?;
            return Ok(Outcome::Expired);
        }
        tokio::time::sleep(slot).await;
        let event = MeterEvent {
            event_name: &delivery.event_name,
            customer: &delivery.stripe_customer_id,
            value: delivery.quantity,
            identifier: &delivery.identifier,
            timestamp: delivery.event_timestamp.timestamp(),
        };
        let idempotency_key = format!("{}-attempt-{}", delivery.identifier, delivery.attempts);
        let result = self.stripe.create_meter_event(&event, &idempotency_key).await;
        match (CallVerdict::of(&result), result) {
            (CallVerdict::Counted, Ok(())) => {
                self.settle(&delivery, "delivered", None).await?;
                Ok(Outcome::Delivered)
            }
            (CallVerdict::Counted, Err(_)) => {
                // An earlier attempt reached Stripe but its answer did not reach us.
                self.settle(&delivery, "delivered", Some("Stripe already held this identifier")).await?;
                Ok(Outcome::Delivered)
            }
            (CallVerdict::RefusedRetry, Err(err)) => {
                self.retry_later(&delivery, &err, false).await?;
                Ok(Outcome::Retry)
            }
            (CallVerdict::Unknown { retry: true }, Err(err)) => {
                self.retry_later(&delivery, &err, true).await?;
                Ok(Outcome::Retry)
            }
            (CallVerdict::Unknown { retry: false }, Err(err)) => {
                tracing::warn!(
                    identifier = %delivery.identifier,
                    customer = %delivery.stripe_customer_id,
                    error = %err,
                    "meter event outcome unknown and not to be re-sent; settling it from the meter summaries"
                );
                self.mark_uncertain(&delivery, &err).await?;
                Ok(Outcome::Uncertain)
            }
            (_, err) => {
                let err = err.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(
                    identifier = %delivery.identifier,
                    customer = %delivery.stripe_customer_id,
                    error = %err,
                    "Stripe refused a meter event; marked failed"
                );
                self.settle(&delivery, "failed", Some(&err)).await?;
                Ok(Outcome::Failed)
            }
        }
    }

    /// Ends a delivery and its outbox rows in `status`. Only a pending delivery changes: a second worker that
    /// took over an expired lease may have settled it already.
    async fn settle(&self, delivery: &Claimed, status: &str, note: Option<&str>) -> Result<(), AppError> {
        let mut tx = self.pool.begin().await?;
        let settled = sqlx::query(
            "UPDATE meter_deliveries
             SET status = $2, last_error = $3, leased_until = NULL, updated_at = now(),
                 delivered_at = CASE WHEN $2 = 'delivered' THEN $4 END
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(delivery.id)
        .bind(status)
        .bind(note)
        .bind(self.clock.now())
        .execute(&mut *tx)
        .await?;
        if settled.rows_affected() == 1 {
            outbox_follows(&mut tx, &[delivery.id], status, if status == "delivered" { None } else { note }).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An attempt whose outcome is unknown and that must not be repeated: the delivery waits as `uncertain` until
    /// the meter event summaries can say whether it counted.
    async fn mark_uncertain(&self, delivery: &Claimed, err: &StripeError) -> Result<(), AppError> {
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query(
            "UPDATE meter_deliveries
             SET status = 'uncertain', uncertain_since = coalesce(uncertain_since, $3), leased_until = NULL,
                 next_attempt_at = $4, last_error = $5, updated_at = now()
             WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
        )
        .bind(delivery.id)
        .bind(delivery.lease_token)
        .bind(delivery.attempt_started_at)
        .bind(self.clock.now() + SUMMARY_SETTLE)
        .bind(err.to_string())
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 1 {
            outbox_follows(&mut tx, &[delivery.id], "uncertain", None).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Releases the lease and schedules the next attempt: exponential backoff with jitter. `unknown`: this attempt
    /// may have been counted, which starts the identifier's safe re-send age if nothing had before.
    async fn retry_later(&self, delivery: &Claimed, err: &StripeError, unknown: bool) -> Result<(), AppError> {
        let delay = backoff(
            delivery.attempts,
            Duration::from_millis(self.settings.retry_base_ms),
            Duration::from_millis(self.settings.retry_max_ms),
            random_unit(),
        );
        tracing::debug!(identifier = %delivery.identifier, attempts = delivery.attempts, error = %err, ?delay, "meter event retry");
        sqlx::query(
            "UPDATE meter_deliveries
             SET next_attempt_at = $5 + $3 * interval '1 millisecond', leased_until = NULL, last_error = $4,
                 uncertain_since = CASE WHEN $6 THEN coalesce(uncertain_since, $7) ELSE uncertain_since END,
                 updated_at = now()
             WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
        )
        .bind(delivery.id)
        .bind(delivery.lease_token)
        .bind(delay.as_millis() as f64)
        .bind(err.to_string())
        .bind(self.clock.now())
        .bind(unknown)
        .bind(delivery.attempt_started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The outbox rows of `deliveries` take their delivery's new `status`, with `note` as their last error (cleared when
/// `None`): the one statement by which a delivery's state reaches the usage events it carries.
pub(crate) async fn outbox_follows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deliveries: &[Uuid],
    status: &str,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE meter_event_outbox SET status = $2, last_error = $3, updated_at = now() WHERE delivery_id = ANY($1)",
    )
    .bind(deliveries)
    .bind(status)
    .bind(note)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What the shared call budget held when a worker claimed.
#[derive(Debug, Clone, Copy)]
enum Budget {
    /// Less than one call: nothing was claimed; the budget holds a call again after `wait`.
    Empty { wait: Duration },
    /// `milli_calls` thousandths of a call, before the claim spent from it.
    Held { milli_calls: i64 },
}

/// Stripe's meter event rate limit, shared by every worker on the database: a token bucket in
/// `stripe_call_budget`, refilled at `rate` calls per second and holding at most a twentieth of a second's worth;
/// a claim may take it into debt by up to a second's worth, paid off by spacing the calls at the rate.
/// (Stripe counts per second: a full second's burst at the end of one second plus the steady rate in the next
/// would run into 429s.)
#[derive(Debug, Clone, Copy)]
struct CallBudget {
    rate: NonZeroU32,
    /// Most calls the bucket holds, in thousandths.
    capacity_milli: i64,
}

impl CallBudget {
    /// The bucket's row: Stripe's limit for meter events.
    const NAME: &'static str = "meter_events";

    fn new(rate: NonZeroU32) -> CallBudget {
        let burst = (rate.get() / 20).max(1);
        CallBudget { rate, capacity_milli: i64::from(burst) * 1_000 }
    }

    /// Refills the bucket by the time since its last refill (a new bucket starts full); returns what it holds,
    /// in thousandths of a call. Must run under the claim lock, whose holder then spends from it.
    async fn refill(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<i64, sqlx::Error> {
        // clock_timestamp, not now(): now() is when the transaction began, before it waited for the claim lock.
        sqlx::query_scalar(
            "INSERT INTO stripe_call_budget AS b (name, milli_calls, refilled_at) VALUES ($1, $2, clock_timestamp())
             ON CONFLICT (name) DO UPDATE SET
                 milli_calls = LEAST($2, b.milli_calls + floor(
                     GREATEST(0, extract(epoch FROM clock_timestamp() - b.refilled_at)) * $3 * 1000)::bigint),
                 refilled_at = clock_timestamp()
             RETURNING milli_calls",
        )
        .bind(Self::NAME)
        .bind(self.capacity_milli)
        .bind(f64::from(self.rate.get()))
        .fetch_one(&mut **tx)
        .await
    }

    /// How long until a bucket holding `milli_calls` (perhaps in debt) holds one whole call.
    fn wait_for_one(&self, milli_calls: i64) -> Duration {
        self.refill_time(1_000 - milli_calls)
    }

    /// When the call at `position` (from 0) of a claim made with `milli_calls` in the bucket may go out: at once
    /// while the bucket covers it, then one call every `1 / rate` seconds, as the bucket refills.
    fn slot(&self, position: usize, milli_calls: i64) -> Duration {
        let needed = (i64::try_from(position).unwrap_or(i64::MAX).saturating_add(1)).saturating_mul(1_000);
        self.refill_time(needed - milli_calls)
    }

    /// How long the bucket takes to refill `milli_calls` thousandths of a call (nothing for zero or less).
    fn refill_time(&self, milli_calls: i64) -> Duration {
        let missing = u64::try_from(milli_calls).unwrap_or(0);
        Duration::from_micros(missing.saturating_mul(1_000) / u64::from(self.rate.get()))
    }
}

/// A due outbox row with what batching needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueRow {
    pub usage_event_id: Uuid,
    pub user_id: Uuid,
    pub stripe_customer_id: String,
    pub event_type: String,
    pub quantity: i64,
    pub occurred_at: DateTime<Utc>,
    /// The billing period the event was used in, and whether it is a subscription's (`subscription`) or a
    /// calendar month with no subscription known for it (`calendar`).
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub period_kind: String,
    /// The user's period at the time of batching (where late usage goes).
    pub current_start: DateTime<Utc>,
    pub current_end: DateTime<Utc>,
    pub current_kind: String,
}

/// What batching needs to know besides the rows.
#[derive(Debug, Clone, Copy)]
pub struct BatchRules {
    /// Most usage events in one meter event.
    pub max_events: usize,
    /// Now, by the billing clock.
    pub now: DateTime<Utc>,
    /// Stripe's invoice finalization grace.
    pub invoice_grace: chrono::Duration,
}

impl BatchRules {
    /// Whether usage of this subscription period can no longer reach its invoice: past its end + grace, less the
    /// margin a call needs.
    fn missed_invoice(&self, period_end: DateTime<Utc>) -> bool {
        period_end + self.invoice_grace <= self.now + DEADLINE_MARGIN
    }
}

/// Rows that go out as one meter event.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub members: Vec<Uuid>,
    pub user_id: Uuid,
    pub stripe_customer_id: String,
    pub event_name: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub period_kind: String,
    /// The period the usage was used in, when it missed that period's invoice and goes on the next one.
    pub late_from: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub quantity: i64,
    /// Inside the period: the latest member's time for a subscription period; the members' common second for a
    /// calendar month; now for late usage.
    pub timestamp: DateTime<Utc>,
}

/// Groups rows into meter events, by three rules:
/// - per customer, meter and billing period, never across a period boundary, each group cut into batches of at
///   most `max_events` members and [`MAX_METER_VALUE`];
/// - usage outside any subscription period Tally knows of is summed only within one whole second, stamped with
///   it: Stripe bills each event by its own time, so a subscription Tally has not heard of yet (its webhooks late
///   or out of order) bills exactly the usage at and after its start, never a second before;
/// - usage of a subscription period that can no longer reach its invoice goes into the current period, stamped
///   now, with its own period recorded (billed on the next invoice; see [`BatchRules::missed_invoice`]).
pub fn plan_batches(rows: Vec<DueRow>, rules: &BatchRules) -> Vec<Batch> {
    type Key =
        (Uuid, String, String, DateTime<Utc>, DateTime<Utc>, Option<(DateTime<Utc>, DateTime<Utc>)>, Option<i64>);
    let mut groups: BTreeMap<Key, (String, Vec<DueRow>)> = BTreeMap::new();
    for row in rows {
        let late = row.period_kind == "subscription" && rules.missed_invoice(row.period_end);
        let (start, end, kind, late_from) = if late {
            (row.current_start, row.current_end, row.current_kind.clone(), Some((row.period_start, row.period_end)))
        } else {
            (row.period_start, row.period_end, row.period_kind.clone(), None)
        };
        let second = (kind == "calendar" && !late).then(|| row.occurred_at.timestamp());
        let key = (row.user_id, row.stripe_customer_id.clone(), row.event_type.clone(), start, end, late_from, second);
        groups.entry(key).or_insert_with(|| (kind, Vec::new())).1.push(row);
    }
    let mut batches = Vec::new();
    for ((user_id, customer, event_name, period_start, period_end, late_from, second), (kind, rows)) in groups {
        let mut current: Option<Batch> = None;
        for row in rows {
            let fits = current.as_ref().is_some_and(|b| {
                b.members.len() < rules.max_events.max(1) && b.quantity.saturating_add(row.quantity) <= MAX_METER_VALUE
            });
            if !fits {
                batches.extend(current.take());
                current = Some(Batch {
                    members: Vec::new(),
                    user_id,
                    stripe_customer_id: customer.clone(),
                    event_name: event_name.clone(),
                    period_start,
                    period_end,
                    period_kind: kind.clone(),
                    late_from,
                    quantity: 0,
                    timestamp: match (late_from, second) {
                        (Some(_), _) => rules.now,
                        (None, Some(second)) => DateTime::from_timestamp(second, 0).unwrap_or(row.occurred_at),
                        (None, None) => row.occurred_at,
                    },
                });
            }
            let batch = current.as_mut().expect("set above");
            batch.members.push(row.usage_event_id);
            batch.quantity += row.quantity;
            if late_from.is_none() && second.is_none() {
                batch.timestamp = batch.timestamp.max(row.occurred_at);
            }
        }
        batches.extend(current);
    }
    batches
}

/// Deliveries and their members, inserted with two statements.
#[derive(Default)]
struct NewDeliveries {
    ids: Vec<Uuid>,
    identifiers: Vec<String>,
    users: Vec<Uuid>,
    customers: Vec<String>,
    event_names: Vec<String>,
    period_starts: Vec<DateTime<Utc>>,
    period_ends: Vec<DateTime<Utc>>,
    period_kinds: Vec<String>,
    late_starts: Vec<Option<DateTime<Utc>>>,
    late_ends: Vec<Option<DateTime<Utc>>>,
    timestamps: Vec<DateTime<Utc>>,
    quantities: Vec<i64>,
    counts: Vec<i32>,
    members: Vec<Uuid>,
    member_deliveries: Vec<Uuid>,
}

impl NewDeliveries {
    fn push(&mut self, batch: &Batch) {
        let id = Uuid::new_v4();
        // A delivery of one event is identified by that event, as Stripe's docs suggest; a sum by its batch.
        let identifier = match batch.members.as_slice() {
            [only] => only.to_string(),
            _ => id.to_string(),
        };
        self.ids.push(id);
        self.identifiers.push(identifier);
        self.users.push(batch.user_id);
        self.customers.push(batch.stripe_customer_id.clone());
        self.event_names.push(batch.event_name.clone());
        self.period_starts.push(batch.period_start);
        self.period_ends.push(batch.period_end);
        self.period_kinds.push(batch.period_kind.clone());
        self.late_starts.push(batch.late_from.map(|(start, _)| start));
        self.late_ends.push(batch.late_from.map(|(_, end)| end));
        self.timestamps.push(batch.timestamp);
        self.quantities.push(batch.quantity);
        self.counts.push(batch.members.len() as i32);
        self.members.extend(&batch.members);
        self.member_deliveries.extend(std::iter::repeat_n(id, batch.members.len()));
    }

    /// Inserts the deliveries, due at `now` (by the billing clock).
    async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO meter_deliveries (id, identifier, user_id, stripe_customer_id, event_name, period_start,
                                           period_end, event_timestamp, quantity, event_count, period_kind,
                                           late_from_period_start, late_from_period_end, next_attempt_at)
             SELECT *, $14 FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[],
                                       $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::int[], $11::text[],
                                       $12::timestamptz[], $13::timestamptz[])",
        )
        .bind(&self.ids)
        .bind(&self.identifiers)
        .bind(&self.users)
        .bind(&self.customers)
        .bind(&self.event_names)
        .bind(&self.period_starts)
        .bind(&self.period_ends)
        .bind(&self.timestamps)
        .bind(&self.quantities)
        .bind(&self.counts)
        .bind(&self.period_kinds)
        .bind(&self.late_starts)
        .bind(&self.late_ends)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE meter_event_outbox o SET delivery_id = m.delivery_id, updated_at = now()
             FROM unnest($1::uuid[], $2::uuid[]) AS m (usage_event_id, delivery_id)
             WHERE o.usage_event_id = m.usage_event_id",
        )
        .bind(&self.members)
        .bind(&self.member_deliveries)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_beyond_the_budget_are_spaced_at_the_rate() {
        let test_mode = CallBudget::new(NonZeroU32::new(25).unwrap());
        assert_eq!(test_mode.capacity_milli, 1_000, "test mode holds one call at a time");
        let slots: Vec<u128> = (0..4).map(|i| test_mode.slot(i, 1_000).as_millis()).collect();
        assert_eq!(slots, [0, 40, 80, 120]);
        // In debt: the next call waits until the debt is paid and one call refilled.
        assert_eq!(test_mode.wait_for_one(-2_000).as_millis(), 120);
        assert_eq!(test_mode.wait_for_one(400).as_millis(), 24);

        let live = CallBudget::new(NonZeroU32::new(1_000).unwrap());
        assert_eq!(live.capacity_milli, 50_000, "a twentieth of a second");
        assert_eq!(live.slot(49, 50_000), Duration::ZERO);
        assert_eq!(live.slot(50, 50_000), Duration::from_millis(1));
        assert_eq!(live.slot(0, 1_500), Duration::ZERO);
    }

    fn time(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(s, 0).unwrap()
    }

    /// A row of a subscription period; the current period is the same one.
    fn row(user: u128, quantity: i64, at: i64, period: (i64, i64)) -> DueRow {
        DueRow {
            usage_event_id: Uuid::new_v4(),
            user_id: Uuid::from_u128(user),
            stripe_customer_id: format!("cus_{user}"),
            event_type: "ai_token_consumed".into(),
            quantity,
            occurred_at: time(at),
            period_start: time(period.0),
            period_end: time(period.1),
            period_kind: "subscription".into(),
            current_start: time(period.0),
            current_end: time(period.1),
            current_kind: "subscription".into(),
        }
    }

    /// Rules at `now` (unix seconds) with a one-hour grace.
    fn rules(max_events: usize, now: i64) -> BatchRules {
        BatchRules { max_events, now: time(now), invoice_grace: chrono::Duration::hours(1) }
    }

    #[test]
    fn usage_outside_a_known_subscription_is_summed_only_within_one_second() {
        let calendar = |at_ms: i64| {
            let mut r = row(1, 1, 0, (0, 100_000));
            r.occurred_at = DateTime::from_timestamp_millis(at_ms).unwrap();
            r.period_kind = "calendar".into();
            r.current_kind = "calendar".into();
            r
        };
        // Three events in second 10, two in second 11: a subscription starting at second 11 (whose webhook has not
        // arrived) must bill exactly the two.
        let rows = vec![calendar(10_000), calendar(10_400), calendar(10_999), calendar(11_000), calendar(11_500)];
        let batches = plan_batches(rows, &rules(100, 12));
        let summary: Vec<(i64, i64)> = batches.iter().map(|b| (b.timestamp.timestamp_millis(), b.quantity)).collect();
        assert_eq!(summary, [(10_000, 3), (11_000, 2)]);
        assert!(batches.iter().all(|b| b.period_kind == "calendar" && b.late_from.is_none()));
    }

    #[test]
    fn usage_that_missed_its_invoice_goes_into_the_current_period_stamped_now() {
        // Period [0, 1000) ended; its invoice is final at 1000 + 3600. The current period is [1000, 5000).
        let late =
            |at: i64| DueRow { current_start: time(1_000), current_end: time(5_000), ..row(1, 7, at, (0, 1_000)) };
        let in_time = plan_batches(vec![late(900)], &rules(100, 1_000 + 3_600 - 301));
        assert_eq!((in_time[0].period_start, in_time[0].timestamp, in_time[0].late_from), (time(0), time(900), None));
        let now = 1_000 + 3_600 - 300;
        let moved = plan_batches(vec![late(900), late(950)], &rules(100, now));
        assert_eq!(moved.len(), 1);
        assert_eq!((moved[0].period_start, moved[0].period_end), (time(1_000), time(5_000)));
        assert_eq!(moved[0].timestamp, time(now));
        assert_eq!(moved[0].late_from, Some((time(0), time(1_000))));
        assert_eq!(moved[0].quantity, 14);
        // Calendar months have no invoice: their usage keeps its own time, however old.
        let mut calendar = late(900);
        calendar.period_kind = "calendar".into();
        let kept = plan_batches(vec![calendar], &rules(100, now + 100_000));
        assert_eq!((kept[0].timestamp, kept[0].late_from), (time(900), None));
    }

    #[test]
    fn one_batch_per_customer_and_period_stamped_with_its_latest_event() {
        let rows = vec![
            row(1, 10, 100, (0, 1000)),
            row(1, 20, 900, (0, 1000)),
            row(1, 5, 1000, (1000, 2000)),
            row(2, 7, 50, (0, 1000)),
        ];
        let batches = plan_batches(rows, &rules(100, 1_000));
        let summary: Vec<(String, i64, i64, usize)> = batches
            .iter()
            .map(|b| (b.stripe_customer_id.clone(), b.quantity, b.timestamp.timestamp(), b.members.len()))
            .collect();
        assert_eq!(
            summary,
            [("cus_1".to_owned(), 30, 900, 2), ("cus_1".to_owned(), 5, 1000, 1), ("cus_2".to_owned(), 7, 50, 1)]
        );
        for batch in &batches {
            assert!(batch.period_start <= batch.timestamp && batch.timestamp < batch.period_end);
        }
    }

    #[test]
    fn batches_are_cut_by_member_count_and_by_stripes_fifteen_digits() {
        let rows: Vec<DueRow> = (0..5).map(|i| row(1, 1, i, (0, 1000))).collect();
        assert_eq!(plan_batches(rows, &rules(2, 1_000)).iter().map(|b| b.members.len()).collect::<Vec<_>>(), [2, 2, 1]);
        let big = 600_000_000_000_000;
        let rows = vec![row(1, big, 1, (0, 1000)), row(1, big, 2, (0, 1000))];
        let batches = plan_batches(rows, &rules(100, 1_000));
        assert_eq!(batches.len(), 2);
        assert!(batches.iter().all(|b| b.quantity <= MAX_METER_VALUE));
    }

    #[test]
    fn only_answers_that_prove_nothing_was_counted_are_refusals() {
        let api = |status: u16, should_retry: Option<bool>, message: &str| {
            Err(StripeError::Api { status, kind: "x".into(), code: None, message: message.into(), should_retry })
        };
        assert_eq!(CallVerdict::of(&Ok(())), CallVerdict::Counted);
        assert_eq!(
            CallVerdict::of(&api(400, Some(false), "An event already exists with identifier x.")),
            CallVerdict::Counted
        );
        for status in [401, 403, 409, 429] {
            assert_eq!(CallVerdict::of(&api(status, None, "no")), CallVerdict::RefusedRetry, "{status}");
        }
        assert_eq!(CallVerdict::of(&api(400, None, "bad")), CallVerdict::RefusedFinal);
        assert_eq!(CallVerdict::of(&api(500, None, "oops")), CallVerdict::Unknown { retry: true });
        // Stripe may have counted it, and says not to call again: settled from the summaries, never failed.
        assert_eq!(CallVerdict::of(&api(503, Some(false), "oops")), CallVerdict::Unknown { retry: false });
        assert_eq!(CallVerdict::of(&Err(StripeError::Network("timeout".into()))), CallVerdict::Unknown { retry: true });
        // A 200 whose body is not Stripe's answer: something took the call.
        assert_eq!(
            CallVerdict::of(&Err(StripeError::Decode("HTTP 200, not JSON".into()))),
            CallVerdict::Unknown { retry: false }
        );
    }
}
