//! Group commit: concurrent recording requests share transactions.
//!
//! Every commit waits for PostgreSQL's WAL flush (0.1–3 ms here), so one transaction per request caps a small
//! machine at a few thousand events per second. Requests therefore hand their events to a queue, and a few writer
//! tasks each take everything queued, write it in one transaction, and answer every request only after that
//! transaction committed: an acknowledged event is always durable, and a failed commit is never acknowledged.
//!
//! One transaction writes, for all its events at once: the `usage_events` rows, their `meter_event_outbox` rows,
//! the `usage_period_totals` increments (see `totals.rs`) and the quarter-hour buckets the history reads. Hard
//! limits are checked inside the transaction, under a row lock on each limited user, so two writers can never both
//! let through events that together pass a limit. Each event is counted in the billing period containing it (the
//! user's subscription period, else the calendar month), chosen under the users' shared period lock so that a period
//! change (`period.rs`) never races a writer.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::alerts;
use super::period::{self, PeriodClock};
use crate::auth::caller::Caller;
use crate::meters::Catalog;

mod error;
mod plan;
mod sql;

pub use error::WriteError;
use plan::{plan, EventPeriods, EventRows, MeterKey};
use sql::{existing_keys, keys_to_ids, lock_limits_read_periods, period_usage, resolve_callers};

/// Most events one transaction takes (a group always takes at least one whole submission).
const MAX_GROUP_EVENTS: usize = 2_000;
/// Submissions that may wait for a writer before `submit` itself waits (back-pressure, not an error).
const QUEUE_CAPACITY: usize = 8_192;

/// A validated event, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    pub quantity: i64,
    pub metadata: serde_json::Value,
    pub idempotency_key: Option<String>,
    /// When the usage happened: the moment Tally received it.
    pub occurred_at: DateTime<Utc>,
}

/// What happened to one submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub id: Uuid,
    /// The idempotency key was seen before; `id` is the first event's and nothing was stored.
    pub duplicate: bool,
}

/// Where a user with a hard limit stands after a submission, on the meter and in the period of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub limit: i64,
    pub used: i64,
    pub warning_percent: i16,
}

impl Allowance {
    pub fn remaining(&self) -> i64 {
        (self.limit - self.used).max(0)
    }

    /// Whether the user has reached the warning share of their limit.
    pub fn warning(&self) -> bool {
        i128::from(self.used) * 100 >= i128::from(self.limit) * i128::from(self.warning_percent)
    }
}

/// The result of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One entry per submitted event, in order.
    pub events: Vec<Recorded>,
    /// Present when the user has a hard limit on the last event's type.
    pub allowance: Option<Allowance>,
}

/// Whether a submission may be refused for passing the user's hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// Refuse the whole submission if it would pass the limit (the recording API).
    Enforce,
    /// Record regardless: the usage already happened and must be billed (tokens an AI call consumed).
    RecordAnyway,
}

struct Submission {
    caller: Caller,
    events: Vec<NewEvent>,
    /// The events' ids, fixed before the first attempt: if a commit's answer is lost and the writer tries again,
    /// the rows it already wrote are recognised by id and not written twice (events without idempotency keys too).
    /// Time-ordered (UUIDv7): new events land at the right edge of the primary-key indexes of `usage_events` and the
    /// outbox instead of on a random page of a large index (fewer pages dirtied and written to the WAL per commit).
    ids: Vec<Uuid>,
    policy: LimitPolicy,
    reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// Handle to the writer tasks of one app instance.
#[derive(Clone)]
pub struct UsageWriter {
    queue: mpsc::Sender<Submission>,
    /// Writer tasks still running (readiness), of `started`.
    alive: Arc<AtomicUsize>,
    started: usize,
}

/// Counts its writer task as running until the task ends (returns or panics).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl UsageWriter {
    /// Starts `writers` writer tasks on the current tokio runtime.
    pub fn start(pool: PgPool, clock: Arc<PeriodClock>, catalog: Arc<Catalog>, writers: u16) -> UsageWriter {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(Mutex::new(receiver));
        let alive = Arc::new(AtomicUsize::new(usize::from(writers)));
        for slot in 0..writers {
            let writer =
                Writer { slot: slot as i16, pool: pool.clone(), clock: clock.clone(), catalog: catalog.clone() };
            let running = Running(alive.clone());
            let receiver = receiver.clone();
            tokio::spawn(async move {
                let _running = running;
                writer.run(receiver).await;
            });
        }
        UsageWriter { queue, alive, started: usize::from(writers) }
    }

    /// (Writer tasks running, writer tasks started): readiness wants at least one.
    pub fn writers(&self) -> (usize, usize) {
        (self.alive.load(Ordering::Relaxed), self.started)
    }

    /// Records `events` for `caller`, all or nothing, and answers once they are committed. An API key caller is
    /// resolved inside the transaction: an unknown or revoked key gets [`WriteError::UnknownCaller`].
    pub async fn submit(
        &self,
        caller: Caller,
        events: Vec<NewEvent>,
        policy: LimitPolicy,
    ) -> Result<Outcome, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Submission { caller, ids: events.iter().map(|_| Uuid::now_v7()).collect(), events, policy, reply })
            .await
            .map_err(|_| WriteError::Stopped("queue is closed"))?;
        answer.await.map_err(|_| WriteError::Stopped("dropped a submission"))?
    }
}

struct Writer {
    /// This writer's counter slot in `usage_period_totals`.
    slot: i16,
    pool: PgPool,
    clock: Arc<PeriodClock>,
    /// The meters: their default limits, and their configured prices for money alerts.
    catalog: Arc<Catalog>,
}

impl Writer {
    async fn run(self, receiver: Arc<Mutex<mpsc::Receiver<Submission>>>) {
        loop {
            let group = {
                let mut receiver = receiver.lock().await;
                let Some(first) = receiver.recv().await else { return };
                let mut events = first.events.len();
                let mut group = vec![first];
                while events < MAX_GROUP_EVENTS {
                    match receiver.try_recv() {
                        Ok(next) => {
                            events += next.events.len();
                            group.push(next);
                        }
                        Err(_) => break,
                    }
                }
                group
            };
            self.commit_group(group).await;
        }
    }

    async fn commit_group(&self, group: Vec<Submission>) {
        let started = std::time::Instant::now();
        let events: usize = group.iter().map(|s| s.events.len()).sum();
        match self.commit(&group).await {
            Ok(results) => {
                metrics::histogram!(crate::telemetry::INGEST_GROUP_EVENTS).record(events as f64);
                metrics::histogram!(crate::telemetry::INGEST_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                for (submission, result) in group.into_iter().zip(results) {
                    count(&result);
                    let _ = submission.reply.send(result);
                }
            }
            // One submission's failure (its user was just deleted, say) must not fail the others: retry each alone.
            Err(err) if group.len() > 1 => {
                tracing::warn!(%err, submissions = group.len(), "group commit failed; retrying one by one");
                for submission in group {
                    let result = match self.commit(std::slice::from_ref(&submission)).await {
                        Ok(mut results) => results.pop().unwrap_or(Err(WriteError::Stopped("answered nothing"))),
                        Err(err) => Err(commit_error(err)),
                    };
                    count(&result);
                    let _ = submission.reply.send(result);
                }
            }
            Err(err) => {
                for submission in group {
                    let result = Err(commit_error(err.clone()));
                    count(&result);
                    let _ = submission.reply.send(result);
                }
            }
        }
    }

    /// Writes `group` in one transaction. The outer error means nothing was committed; the inner results are the
    /// per-submission answers of a committed transaction (a refused submission stored nothing).
    async fn commit(&self, group: &[Submission]) -> Result<Vec<Result<Outcome, WriteError>>, WriteError> {
        let mut tx = self.pool.begin().await?;
        let (resolved, mut results) = resolve_callers(&mut tx, group).await?;
        let users: Vec<Uuid> = resolved.iter().map(|r| r.user_id).collect::<BTreeSet<_>>().into_iter().collect();
        period::lock_users_shared(&mut tx, &users).await?;
        let sql::Locked { limits, periods, rules } =
            lock_limits_read_periods(&mut tx, &resolved, &self.clock.timezone, &self.catalog).await?;
        // Complete: `lock_limits_read_periods` answers every (user, instant) of the group or fails.
        let period_of = |user: Uuid, event: &NewEvent| -> EventPeriods { periods[&(user, event.occurred_at)] };
        let watched: HashSet<(Uuid, String)> =
            limits.keys().cloned().chain(rules.iter().map(|r| (r.user_id, r.event_type.clone()))).collect();
        let mut used = period_usage(&mut tx, &watched, &resolved, &period_of).await?;
        let used_before = used.clone();
        let mut known = existing_keys(&mut tx, &resolved).await?;

        let mut rows = EventRows::default();
        for entry in &resolved {
            results[entry.index] =
                plan(entry.user_id, entry.submission, &limits, &mut used, &mut known, &period_of, &mut rows);
        }

        if !rows.ids.is_empty() {
            let lost = rows.insert(&mut tx, self.slot).await?;
            if !lost.is_empty() {
                // A concurrent writer committed the same idempotency keys first: answer with its events.
                let winners = keys_to_ids(&mut tx, &lost).await?;
                for outcome in results.iter_mut().flatten() {
                    for event in &mut outcome.events {
                        if let Some(key) = rows.key_of(event.id).filter(|key| lost.contains(key)) {
                            *event = Recorded { id: winners.get(&key).copied().unwrap_or(event.id), duplicate: true };
                        }
                    }
                }
            }
            let caps: HashMap<(Uuid, String), i64> = limits.iter().map(|(key, l)| (key.clone(), l.limit)).collect();
            // Alerts are kept per (user, event type, period start).
            let by_start = |totals: &HashMap<MeterKey, i64>| -> HashMap<alerts::AlertKey, i64> {
                totals
                    .iter()
                    .map(|((user, kind, period), used)| ((*user, kind.clone(), period.span.start), *used))
                    .collect()
            };
            let (before, after) = (by_start(&used_before), by_start(&used));
            alerts::record_crossings(&mut tx, &caps, &before, &after).await?;
            alerts::record_rule_crossings(&mut tx, &self.catalog, &rules, &before, &after).await?;
        }
        tx.commit().await?;
        Ok(results)
    }
}

/// Tells every instance's live meters (`live.rs`) that these users' usage changed. NOTIFY is transactional: it
/// is delivered when, and only if, the transaction commits; repeats within it are folded into one.
pub async fn notify_usage(tx: &mut Transaction<'_, Postgres>, users: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT count(pg_notify($2, u::text)) FROM (SELECT DISTINCT unnest($1::uuid[]) AS u) AS changed",
        users,
        super::live::CHANNEL
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}

/// Counts a submission's answer in the ingest metrics.
fn count(result: &Result<Outcome, WriteError>) {
    use crate::telemetry::{INGEST_EVENTS, INGEST_SUBMISSIONS};
    let outcome = match result {
        Ok(outcome) => {
            let duplicates = outcome.events.iter().filter(|e| e.duplicate).count() as u64;
            metrics::counter!(INGEST_EVENTS, "outcome" => "recorded")
                .increment(outcome.events.len() as u64 - duplicates);
            metrics::counter!(INGEST_EVENTS, "outcome" => "duplicate").increment(duplicates);
            "recorded"
        }
        Err(WriteError::LimitExceeded { .. }) => "limit_exceeded",
        Err(WriteError::UnknownCaller) => "unknown_caller",
        Err(_) => "failed",
    };
    metrics::counter!(INGEST_SUBMISSIONS, "outcome" => outcome).increment(1);
}

/// The answer for a submission whose transaction failed: nothing of it was stored.
fn commit_error(err: WriteError) -> WriteError {
    match err {
        WriteError::Database(db) if is_missing_user(&db) => WriteError::UnknownCaller,
        other => other,
    }
}

fn is_missing_user(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.constraint())
        .is_some_and(|c| c == "usage_events_user_id_fkey" || c == "meter_event_outbox_user_id_fkey")
}
