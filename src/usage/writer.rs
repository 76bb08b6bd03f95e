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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::alerts;
use super::period::{self, PeriodClock, PeriodKind, Span};
use super::AI_TOKENS_EVENT;
use crate::auth::api_key;
use crate::auth::caller::Caller;
use crate::error::AppError;

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

/// Where a user with a hard limit stands after a submission, in the period of its last event.
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
    /// Present when the user has a hard limit on the limited event type.
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
    reply: oneshot::Sender<Result<Outcome, AppError>>,
}

/// Handle to the writer tasks of one app instance.
#[derive(Clone)]
pub struct UsageWriter {
    queue: mpsc::Sender<Submission>,
}

impl UsageWriter {
    /// Starts `writers` writer tasks on the current tokio runtime.
    pub fn start(pool: PgPool, clock: Arc<PeriodClock>, writers: u16) -> UsageWriter {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(Mutex::new(receiver));
        for slot in 0..writers {
            let writer = Writer { slot: slot as i16, pool: pool.clone(), clock: clock.clone() };
            tokio::spawn(writer.run(receiver.clone()));
        }
        UsageWriter { queue }
    }

    /// Records `events` for `caller`, all or nothing, and answers once they are committed. An API key caller is
    /// resolved inside the transaction: an unknown or revoked key gets [`AppError::Unauthorized`].
    pub async fn submit(
        &self,
        caller: Caller,
        events: Vec<NewEvent>,
        policy: LimitPolicy,
    ) -> Result<Outcome, AppError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Submission { caller, ids: events.iter().map(|_| Uuid::now_v7()).collect(), events, policy, reply })
            .await
            .map_err(|_| AppError::internal("usage writer queue closed"))?;
        answer.await.map_err(|_| AppError::internal("usage writer dropped a submission"))?
    }
}

struct Writer {
    /// This writer's counter slot in `usage_period_totals`.
    slot: i16,
    pool: PgPool,
    clock: Arc<PeriodClock>,
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
        match self.commit(&group).await {
            Ok(results) => {
                for (submission, result) in group.into_iter().zip(results) {
                    let _ = submission.reply.send(result);
                }
            }
            // One submission's failure (its user was just deleted, say) must not fail the others: retry each alone.
            Err(err) if group.len() > 1 => {
                tracing::warn!(%err, submissions = group.len(), "group commit failed; retrying one by one");
                for submission in group {
                    let result = match self.commit(std::slice::from_ref(&submission)).await {
                        Ok(mut results) => results.pop().unwrap_or(Err(AppError::Internal)),
                        Err(err) => Err(commit_error(err)),
                    };
                    let _ = submission.reply.send(result);
                }
            }
            Err(err) => {
                for submission in group {
                    let _ = submission.reply.send(Err(commit_error(err.clone())));
                }
            }
        }
    }

    /// Writes `group` in one transaction. The outer error means nothing was committed; the inner results are the
    /// per-submission answers of a committed transaction (a refused submission stored nothing).
    async fn commit(&self, group: &[Submission]) -> Result<Vec<Result<Outcome, AppError>>, CommitError> {
        let mut tx = self.pool.begin().await?;
        let (resolved, mut results) = resolve_callers(&mut tx, group).await?;
        let users: Vec<Uuid> = resolved.iter().map(|r| r.user_id).collect::<BTreeSet<_>>().into_iter().collect();
        period::lock_users_shared(&mut tx, &users).await?;
        let (limits, periods) = lock_limits_read_periods(&mut tx, &resolved, &self.clock.timezone).await?;
        // Complete: `lock_limits_read_periods` answers every (user, instant) of the group or fails.
        let period_of = |user: Uuid, event: &NewEvent| -> EventPeriods { periods[&(user, event.occurred_at)] };
        let mut used = period_usage(&mut tx, &limits, &resolved, &period_of).await?;
        let used_before = used.clone();
        let mut known = existing_keys(&mut tx, &resolved).await?;

        let mut rows = EventRows::default();
        for entry in &resolved {
            let limit = limits.get(&entry.user_id).copied();
            results[entry.index] = plan(entry, limit, &mut used, &mut known, &period_of, &mut rows);
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
            let caps: HashMap<Uuid, i64> = limits.iter().map(|(user, l)| (*user, l.limit)).collect();
            // Alerts are kept per (user, period start).
            let by_start = |totals: &HashMap<(Uuid, Period), i64>| -> HashMap<(Uuid, DateTime<Utc>), i64> {
                totals.iter().map(|((user, period), used)| ((*user, period.span.start), *used)).collect()
            };
            alerts::record_crossings(&mut tx, AI_TOKENS_EVENT, &caps, &by_start(&used_before), &by_start(&used))
                .await?;
        }
        tx.commit().await?;
        Ok(results)
    }
}

/// Tells every instance's live meters (`live.rs`) that these users' usage changed. NOTIFY is transactional: it
/// is delivered when, and only if, the transaction commits; repeats within it are folded into one.
pub async fn notify_usage(tx: &mut Transaction<'_, Postgres>, users: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT count(pg_notify($2, u::text)) FROM (SELECT DISTINCT unnest($1::uuid[]) AS u) AS changed")
        .bind(users)
        .bind(super::live::CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A user's hard limit, as locked for this transaction.
#[derive(Debug, Clone, Copy)]
struct Limit {
    limit: i64,
    warning_percent: i16,
}

type UserKey = (Uuid, String);

/// A submission whose caller is known to be `user_id`.
struct Resolved<'a> {
    /// Position in the group (and in its results).
    index: usize,
    user_id: Uuid,
    submission: &'a Submission,
}

/// Finds each submission's user; API keys are looked up all at once. Submissions with an unknown or revoked key
/// are answered [`AppError::Unauthorized`] in the returned results and take no further part.
async fn resolve_callers<'a>(
    tx: &mut Transaction<'_, Postgres>,
    group: &'a [Submission],
) -> Result<(Vec<Resolved<'a>>, Vec<Result<Outcome, AppError>>), sqlx::Error> {
    let hashes: Vec<_> = group
        .iter()
        .filter_map(|s| match s.caller {
            Caller::ApiKey(hash) => Some(hash),
            Caller::User(_) => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let owners = if hashes.is_empty() { HashMap::new() } else { api_key::owners(&mut **tx, &hashes).await? };
    let mut resolved = Vec::with_capacity(group.len());
    let mut results = Vec::with_capacity(group.len());
    for (index, submission) in group.iter().enumerate() {
        let user_id = match submission.caller {
            Caller::User(id) => Some(id),
            Caller::ApiKey(hash) => owners.get(&hash).copied(),
        };
        results.push(Err(AppError::Unauthorized));
        if let Some(user_id) = user_id {
            resolved.push(Resolved { index, user_id, submission });
        }
    }
    Ok((resolved, results))
}

/// The periods one event is counted in: the period that applies to it (its limit and meter), and its calendar
/// month, whose counter every event feeds (see `totals.rs`).
#[derive(Debug, Clone, Copy)]
struct EventPeriods {
    applies: Period,
    month: Span,
}

/// A counter's period: its span and the rule it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Period {
    kind: PeriodKind,
    span: Span,
}

/// Locks the group's users that have a hard limit, in id order (no deadlocks between writers), and reads their
/// limits and the periods of every (user, instant) the group records, in one statement. Users without a limit are
/// not locked, so their events never wait for another writer. The periods come from `billing_period_at`, the one
/// statement of the rule, read after the shared period locks are held (the caller took them in an earlier
/// statement), so no period change can be in flight.
async fn lock_limits_read_periods(
    tx: &mut Transaction<'_, Postgres>,
    group: &[Resolved<'_>],
    timezone: &str,
) -> Result<(HashMap<Uuid, Limit>, HashMap<(Uuid, DateTime<Utc>), EventPeriods>), sqlx::Error> {
    let (mut limits, mut periods) = (HashMap::new(), HashMap::new());
    let instants: BTreeSet<(Uuid, DateTime<Utc>)> =
        group.iter().flat_map(|r| r.submission.events.iter().map(|e| (r.user_id, e.occurred_at))).collect();
    if instants.is_empty() {
        return Ok((limits, periods));
    }
    let (users, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = instants.into_iter().unzip();
    type Row = (
        Uuid,
        Option<i64>,
        Option<i16>,
        Option<i64>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "WITH limited AS (
             SELECT id, usage_limit, usage_warning_percent FROM users
             WHERE id = ANY($1) AND usage_limit IS NOT NULL
             ORDER BY id
             FOR NO KEY UPDATE
         )
         SELECT id, usage_limit, usage_warning_percent, NULL::bigint, NULL::timestamptz, NULL::timestamptz,
                NULL::text, NULL::timestamptz, NULL::timestamptz
         FROM limited
         UNION ALL
         -- Rows name their instant by position: PostgreSQL keeps microseconds, the events' times may hold more.
         SELECT w.user_id, NULL, NULL, w.position, p.period_start, p.period_end, p.period_kind, p.month_start,
                p.month_end
         FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS w (user_id, at, position)
         CROSS JOIN LATERAL billing_period_at(w.user_id, w.at, $3, $4) AS p",
    )
    .bind(&users)
    .bind(&times)
    .bind(timezone)
    .bind(crate::usage::period::LIVE_STATUSES)
    .fetch_all(&mut **tx)
    .await?;
    for (user, limit, warning_percent, position, start, end, kind, month_start, month_end) in rows {
        let at = position.and_then(|p| times.get(usize::try_from(p).ok()?.checked_sub(1)?)).copied();
        match (
            limit,
            warning_percent,
            at,
            start,
            end,
            kind.as_deref().and_then(PeriodKind::parse),
            month_start,
            month_end,
        ) {
            (Some(limit), Some(warning_percent), ..) => {
                limits.insert(user, Limit { limit, warning_percent });
            }
            (_, _, Some(at), Some(start), Some(end), Some(kind), Some(month_start), Some(month_end)) => {
                let applies = Period { kind, span: Span { start, end } };
                periods
                    .insert((user, at), EventPeriods { applies, month: Span { start: month_start, end: month_end } });
            }
            _ => {}
        }
    }
    if periods.len() != times.len() {
        // billing_period_at answers every instant; anything else is a broken schema, not a reason to guess.
        return Err(sqlx::Error::Protocol(format!("periods for {} of {} instants", periods.len(), times.len())));
    }
    Ok((limits, periods))
}

/// Current totals of the limited event type for the limited users, per (user, period that applies). Read after
/// the locks are held, so they include every commit of the other writers.
async fn period_usage(
    tx: &mut Transaction<'_, Postgres>,
    limits: &HashMap<Uuid, Limit>,
    group: &[Resolved<'_>],
    period_of: &impl Fn(Uuid, &NewEvent) -> EventPeriods,
) -> Result<HashMap<(Uuid, Period), i64>, sqlx::Error> {
    let wanted: BTreeSet<(Uuid, &'static str, DateTime<Utc>, DateTime<Utc>)> = group
        .iter()
        .filter(|s| limits.contains_key(&s.user_id))
        .flat_map(|entry| {
            entry.submission.events.iter().filter(|e| e.event_type == AI_TOKENS_EVENT).map(|event| {
                let period = period_of(entry.user_id, event).applies;
                (entry.user_id, period.kind.as_str(), period.span.start, period.span.end)
            })
        })
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let mut users = Vec::new();
    let mut kinds = Vec::new();
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for (user, kind, start, end) in wanted {
        users.push(user);
        kinds.push(kind);
        starts.push(start);
        ends.push(end);
    }
    type Row = (Uuid, String, DateTime<Utc>, DateTime<Utc>, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.user_id, t.period_kind, t.period_start, t.period_end, sum(t.quantity)::bigint
         FROM usage_period_totals t
         JOIN unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[])
           AS wanted (user_id, period_kind, period_start, period_end)
           USING (user_id, period_kind, period_start, period_end)
         WHERE t.event_type = $5
         GROUP BY t.user_id, t.period_kind, t.period_start, t.period_end",
    )
    .bind(&users)
    .bind(&kinds)
    .bind(&starts)
    .bind(&ends)
    .bind(AI_TOKENS_EVENT)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(user, kind, start, end, used)| {
            Some(((user, Period { kind: PeriodKind::parse(&kind)?, span: Span { start, end } }), used))
        })
        .collect())
}

/// Events already stored under the group's idempotency keys.
async fn existing_keys(
    tx: &mut Transaction<'_, Postgres>,
    group: &[Resolved<'_>],
) -> Result<HashMap<UserKey, Uuid>, sqlx::Error> {
    let (users, keys): (Vec<Uuid>, Vec<String>) = group
        .iter()
        .flat_map(|s| s.submission.events.iter().filter_map(|e| Some((s.user_id, e.idempotency_key.clone()?))))
        .unzip();
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    keys_to_ids(tx, &users.into_iter().zip(keys).collect()).await
}

async fn keys_to_ids(
    tx: &mut Transaction<'_, Postgres>,
    wanted: &BTreeSet<UserKey>,
) -> Result<HashMap<UserKey, Uuid>, sqlx::Error> {
    let (users, keys): (Vec<Uuid>, Vec<String>) = wanted.iter().cloned().unzip();
    let rows: Vec<(Uuid, String, Uuid)> = sqlx::query_as(
        "SELECT e.user_id, e.idempotency_key, e.id
         FROM usage_events e
         JOIN unnest($1::uuid[], $2::text[]) AS wanted (user_id, idempotency_key)
           USING (user_id, idempotency_key)",
    )
    .bind(&users)
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(user, key, id)| ((user, key), id)).collect())
}

/// Decides one submission: duplicates are answered with their first event, the rest is accepted whole (its
/// rows added to `rows`, its usage to `used`) or refused whole for passing the user's limit.
fn plan(
    entry: &Resolved<'_>,
    limit: Option<Limit>,
    used: &mut HashMap<(Uuid, Period), i64>,
    known: &mut HashMap<UserKey, Uuid>,
    period_of: &impl Fn(Uuid, &NewEvent) -> EventPeriods,
    rows: &mut EventRows,
) -> Result<Outcome, AppError> {
    let (user, submission) = (entry.user_id, entry.submission);
    let mut recorded = Vec::with_capacity(submission.events.len());
    let mut fresh = Vec::new();
    let mut keys_in_submission = HashMap::new();
    for (event, id) in submission.events.iter().zip(&submission.ids) {
        let key = event.idempotency_key.clone().map(|k| (user, k));
        let earlier = key.as_ref().and_then(|k| known.get(k).or_else(|| keys_in_submission.get(k)));
        match earlier {
            Some(id) => recorded.push(Recorded { id: *id, duplicate: true }),
            None => {
                let id = *id;
                if let Some(key) = key {
                    keys_in_submission.insert(key, id);
                }
                recorded.push(Recorded { id, duplicate: false });
                fresh.push((id, event));
            }
        }
    }

    // The hard limit: the new usage of each period must fit in what is left of it.
    let mut added: HashMap<(Uuid, Period), i64> = HashMap::new();
    for (_, event) in fresh.iter().filter(|(_, e)| e.event_type == AI_TOKENS_EVENT) {
        *added.entry((user, period_of(user, event).applies)).or_default() += event.quantity;
    }
    let mut allowance = None;
    if let Some(Limit { limit, warning_percent }) = limit {
        for (period, quantity) in &added {
            let before = used.get(period).copied().unwrap_or(0);
            if submission.policy == LimitPolicy::Enforce && before.saturating_add(*quantity) > limit {
                return Err(AppError::LimitExceeded { limit, remaining: (limit - before).max(0) });
            }
        }
        let current = submission.events.last().map(|e| (user, period_of(user, e).applies));
        let used_now = current.map_or(0, |p| used.get(&p).copied().unwrap_or(0) + added.get(&p).copied().unwrap_or(0));
        allowance = Some(Allowance { limit, used: used_now, warning_percent });
    }

    for (period, quantity) in added {
        *used.entry(period).or_default() += quantity;
    }
    known.extend(keys_in_submission);
    for (id, event) in fresh {
        rows.push(id, user, event, period_of(user, event));
    }
    Ok(Outcome { events: recorded, allowance })
}

/// Column arrays of the events to insert, for one `unnest` statement.
#[derive(Default)]
struct EventRows {
    ids: Vec<Uuid>,
    users: Vec<Uuid>,
    types: Vec<String>,
    quantities: Vec<i64>,
    metadata: Vec<Json<serde_json::Value>>,
    keys: Vec<Option<String>>,
    occurred: Vec<DateTime<Utc>>,
    period_kinds: Vec<&'static str>,
    period_starts: Vec<DateTime<Utc>>,
    period_ends: Vec<DateTime<Utc>>,
    month_starts: Vec<DateTime<Utc>>,
    month_ends: Vec<DateTime<Utc>>,
}

impl EventRows {
    fn push(&mut self, id: Uuid, user: Uuid, event: &NewEvent, periods: EventPeriods) {
        self.ids.push(id);
        self.users.push(user);
        self.types.push(event.event_type.clone());
        self.quantities.push(event.quantity);
        self.metadata.push(Json(event.metadata.clone()));
        self.keys.push(event.idempotency_key.clone());
        self.occurred.push(event.occurred_at);
        self.period_kinds.push(periods.applies.kind.as_str());
        self.period_starts.push(periods.applies.span.start);
        self.period_ends.push(periods.applies.span.end);
        self.month_starts.push(periods.month.start);
        self.month_ends.push(periods.month.end);
    }

    fn key_of(&self, id: Uuid) -> Option<UserKey> {
        let i = self.ids.iter().position(|x| *x == id)?;
        Some((self.users[i], self.keys[i].clone()?))
    }

    /// Inserts the events with their outbox rows, adds them to this writer's totals slot and notifies the live
    /// meters of their users, in one statement.
    /// Returns the idempotency keys whose events were not inserted because a concurrent writer stored them first.
    async fn insert(&self, tx: &mut Transaction<'_, Postgres>, slot: i16) -> Result<BTreeSet<UserKey>, sqlx::Error> {
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "WITH input AS (
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::jsonb[], $6::text[],
                                      $7::timestamptz[], $12::text[], $8::timestamptz[], $9::timestamptz[],
                                      $13::timestamptz[], $14::timestamptz[])
                   AS t (id, user_id, event_type, quantity, metadata, idempotency_key, occurred_at,
                         period_kind, period_start, period_end, month_start, month_end)
             ), inserted AS (
                 INSERT INTO usage_events (id, user_id, event_type, quantity, metadata, idempotency_key, occurred_at)
                 SELECT id, user_id, event_type, quantity, metadata, idempotency_key, occurred_at
                 FROM input
                 -- One insertion order for all writers, so two writers with the same keys cannot deadlock.
                 ORDER BY user_id, idempotency_key
                 -- Any conflict: an idempotency key a concurrent writer stored first, or an id this submission
                 -- already wrote in an attempt whose commit answer was lost (those count once, as written).
                 ON CONFLICT DO NOTHING
                 RETURNING id, user_id, occurred_at
             ), outbox AS (
                 INSERT INTO meter_event_outbox (usage_event_id, user_id, occurred_at, status)
                 SELECT i.id, i.user_id, i.occurred_at,
                        CASE WHEN u.stripe_customer_id IS NULL THEN 'awaiting_customer' ELSE 'pending' END
                 FROM inserted i JOIN users u ON u.id = i.user_id
             ), totals AS (
                 -- Every event into its calendar month's counter, and into its subscription period's when one
                 -- applies (a calendar period is the month itself: counted once).
                 INSERT INTO usage_period_totals
                     (user_id, event_type, period_kind, period_start, period_end, slot, quantity, event_count)
                 SELECT input.user_id, input.event_type, counter.kind, counter.start, counter.end_, $10,
                        sum(input.quantity), count(*)
                 FROM input
                 JOIN inserted USING (id)
                 CROSS JOIN LATERAL (VALUES ('calendar', input.month_start, input.month_end),
                                            (nullif(input.period_kind, 'calendar'), input.period_start,
                                             input.period_end))
                   AS counter (kind, start, end_)
                 WHERE counter.kind IS NOT NULL
                 GROUP BY input.user_id, input.event_type, counter.kind, counter.start, counter.end_
                 ON CONFLICT (user_id, event_type, period_kind, period_start, period_end, slot) DO UPDATE
                     SET quantity = usage_period_totals.quantity + EXCLUDED.quantity,
                         event_count = usage_period_totals.event_count + EXCLUDED.event_count
             ), buckets AS (
                 INSERT INTO usage_quarter_hour_totals (user_id, event_type, bucket, slot, quantity, event_count)
                 SELECT input.user_id, input.event_type, usage_bucket(input.occurred_at), $10,
                        sum(input.quantity), count(*)
                 FROM input JOIN inserted USING (id)
                 GROUP BY 1, 2, 3
                 ON CONFLICT (user_id, event_type, bucket, slot) DO UPDATE
                     SET quantity = usage_quarter_hour_totals.quantity + EXCLUDED.quantity,
                         event_count = usage_quarter_hour_totals.event_count + EXCLUDED.event_count
             ), notified AS (
                 -- Open meters of these users, on every instance (see `notify_usage`).
                 SELECT count(pg_notify($11, user_id::text)) FROM (SELECT DISTINCT user_id FROM inserted) AS changed
             )
             SELECT id FROM inserted, notified",
        )
        .bind(&self.ids)
        .bind(&self.users)
        .bind(&self.types)
        .bind(&self.quantities)
        .bind(&self.metadata)
        .bind(&self.keys)
        .bind(&self.occurred)
        .bind(&self.period_starts)
        .bind(&self.period_ends)
        .bind(slot)
        .bind(super::live::CHANNEL)
        .bind(&self.period_kinds)
        .bind(&self.month_starts)
        .bind(&self.month_ends)
        .fetch_all(&mut **tx)
        .await?;
        if inserted.len() == self.ids.len() {
            return Ok(BTreeSet::new());
        }
        let inserted: BTreeSet<Uuid> = inserted.into_iter().collect();
        Ok((0..self.ids.len())
            .filter(|i| !inserted.contains(&self.ids[*i]))
            .filter_map(|i| Some((self.users[i], self.keys[i].clone()?)))
            .collect())
    }
}

/// Why a group could not be committed.
#[derive(Debug, Clone)]
enum CommitError {
    Database(Arc<sqlx::Error>),
}

impl From<sqlx::Error> for CommitError {
    fn from(err: sqlx::Error) -> Self {
        CommitError::Database(Arc::new(err))
    }
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::Database(err) => write!(f, "{err}"),
        }
    }
}

/// The answer for a submission whose transaction failed: nothing of it was stored.
fn commit_error(err: CommitError) -> AppError {
    match err {
        CommitError::Database(db) if is_missing_user(&db) => AppError::Unauthorized,
        CommitError::Database(db) => AppError::database_unavailable(&db)
            .unwrap_or_else(|| AppError::internal(format!("usage commit failed: {db}"))),
    }
}

fn is_missing_user(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.constraint())
        .is_some_and(|c| c == "usage_events_user_id_fkey" || c == "meter_event_outbox_user_id_fkey")
}
