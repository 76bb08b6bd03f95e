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

use crate::billing::error::BillingError;
use crate::billing::stripe::{MeterEvent, StripeClient, StripeError};
use crate::clock::Clock;
use crate::config::DeliveryConfig;
use crate::retry::{backoff, random_unit};
use crate::usage::period::LIVE_STATUSES;

pub use crate::usage::period::{DEADLINE_MARGIN, STRIPE_WINDOW};
/// Events older than Stripe's window are expired with this margin left for the call.
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
#[derive(Debug)]
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

mod batching;
mod budget;
mod maintenance;
mod sending;
mod verdict;

pub use batching::{plan_batches, Batch, BatchRules, DueRow};
use budget::{Budget, CallBudget};
pub(crate) use sending::outbox_follows;
pub use verdict::CallVerdict;

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

    /// Delivers forever: steps while there is work, sleeps `poll_ms` when there is none.
    pub async fn run(self) {
        self.run_until(tokio::sync::watch::channel(false).1).await;
    }

    /// Delivers until `stop` turns true, then returns after the step in progress: a step settles every delivery it
    /// claimed (delivered, retry later, failed or uncertain), so a graceful stop leaves no lease for another
    /// worker to wait out.
    pub async fn run_until(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        tracing::info!(
            calls_per_second = self.settings.calls_per_second,
            max_in_flight = self.settings.max_in_flight,
            "meter event delivery worker started"
        );
        let poll = Duration::from_millis(self.settings.poll_ms);
        while !*stop.borrow() {
            let pause = match self.step().await {
                Ok(progress) if progress.did_work() => continue,
                // Work is waiting for the shared budget: come back when it has a call again.
                Ok(progress) => progress.budget_wait.map_or(poll, |wait| wait.min(poll)),
                Err(err) => {
                    tracing::warn!(error = %err, "meter event delivery step failed; retrying");
                    poll
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        tracing::info!("meter event delivery worker stopped");
    }

    /// Steps until nothing is left to send (deliveries waiting for a retry included) or `deadline` passes.
    /// Returns what was done and how many outbox rows are still pending.
    pub async fn drain(&self, deadline: Duration) -> Result<(Progress, i64), BillingError> {
        let started = Instant::now();
        let mut total = Progress::default();
        loop {
            let progress = self.step().await?;
            total.add(progress);
            if progress.did_work() {
                continue;
            }
            let pending = sqlx::query_scalar!(
                r#"SELECT count(*) AS "pending!" FROM meter_event_outbox WHERE status = 'pending'"#
            )
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
    pub async fn step(&self) -> Result<Progress, BillingError> {
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
}
