//! The writer's statements: who the callers are, the limits and periods under their locks, the usage so far, the
//! idempotency keys already stored, and the one statement that inserts a group.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::plan::{EventPeriods, EventRows, Limit, MeterKey, UserKey};
use super::WriteError;
use super::{NewEvent, Outcome, Submission};
use crate::auth::api_key;
use crate::auth::caller::Caller;
use crate::meters::Catalog;
use crate::usage::alerts::AlertRule;
use crate::usage::period::{Period, PeriodKind, Span};
use crate::usage::summary::meter_params;

/// A submission whose caller is known to be `user_id`.
pub(super) struct Resolved<'a> {
    /// Position in the group (and in its results).
    pub(super) index: usize,
    pub(super) user_id: Uuid,
    pub(super) submission: &'a Submission,
}

/// Finds each submission's user; API keys are looked up all at once. Submissions with an unknown or revoked key
/// are answered [`WriteError::UnknownCaller`] in the returned results and take no further part.
pub(super) async fn resolve_callers<'a>(
    tx: &mut Transaction<'_, Postgres>,
    group: &'a [Submission],
) -> Result<(Vec<Resolved<'a>>, Vec<Result<Outcome, WriteError>>), sqlx::Error> {
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
        results.push(Err(WriteError::UnknownCaller));
        if let Some(user_id) = user_id {
            resolved.push(Resolved { index, user_id, submission });
        }
    }
    Ok((resolved, results))
}

/// Locks the group's users that have a hard limit on any of the catalog's meters, in id order (no deadlocks
/// between writers), and reads, in one statement, those limits (`usage_limit_of`: the account's own, else the
/// meter's default), the periods of every (user, instant) the group records, and the alerts the users set. Users
/// without a limit are not locked: their writes need no serialising. Periods come from `billing_period_at`, the one statement of the
/// rule, read after the shared period locks are held (the caller took them in an earlier statement), so no period
/// change can be in flight.
pub(super) async fn lock_limits_read_periods(
    tx: &mut Transaction<'_, Postgres>,
    group: &[Resolved<'_>],
    timezone: &str,
    catalog: &Catalog,
) -> Result<Locked, sqlx::Error> {
    let mut locked = Locked::default();
    let instants: BTreeSet<(Uuid, DateTime<Utc>)> =
        group.iter().flat_map(|r| r.submission.events.iter().map(|e| (r.user_id, e.occurred_at))).collect();
    if instants.is_empty() {
        return Ok(locked);
    }
    let (users, times): (Vec<Uuid>, Vec<DateTime<Utc>>) = instants.into_iter().unzip();
    let (types, defaults) = meter_params(catalog, None);
    let rows = sqlx::query!(
        r#"WITH limited AS (
             SELECT u.id, m.event_type, l.usage_limit, u.usage_warning_percent
             FROM users u
             CROSS JOIN unnest($5::text[], $6::bigint[]) AS m (event_type, default_limit)
             CROSS JOIN LATERAL usage_limit_of(u.id, m.event_type, m.default_limit) AS l
             WHERE u.id = ANY($1) AND l.usage_limit IS NOT NULL
             ORDER BY u.id
             FOR NO KEY UPDATE OF u
         )
         SELECT id AS "user_id!", event_type AS "event_type?", usage_limit AS "limit?",
                usage_warning_percent AS "warning_percent?",
                NULL::bigint AS "position?", NULL::timestamptz AS "start?: DateTime<Utc>",
                NULL::timestamptz AS "end?: DateTime<Utc>", NULL::text AS "kind?",
                NULL::timestamptz AS "month_start?: DateTime<Utc>", NULL::timestamptz AS "month_end?: DateTime<Utc>",
                NULL::uuid AS "rule_id?", NULL::text AS "rule_unit?", NULL::bigint AS "rule_amount?",
                NULL::jsonb AS "price?"
         FROM limited
         UNION ALL
         -- Rows name their instant by position: PostgreSQL keeps microseconds, the events' times may hold more.
         SELECT w.user_id, NULL, NULL, NULL, w.position, p.period_start, p.period_end, p.period_kind, p.month_start,
                p.month_end, NULL, NULL, NULL, NULL
         FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS w (user_id, at, position)
         CROSS JOIN LATERAL billing_period_at(w.user_id, w.at, $3, $4) AS p
         UNION ALL
         -- The alerts the users set, with their meter's Stripe price (money alerts are priced like the meter).
         SELECT r.user_id, r.event_type, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, r.id, r.unit, r.amount,
                mp.price
         FROM usage_alert_rules r LEFT JOIN meter_prices mp USING (event_type)
         WHERE r.user_id = ANY($1)"#,
        &users,
        &times as _,
        timezone,
        crate::usage::period::LIVE_STATUSES as _,
        &types,
        &defaults as &[Option<i64>]
    )
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        if let (Some(id), Some(event_type), Some(unit), Some(amount)) =
            (row.rule_id, row.event_type.clone(), row.rule_unit, row.rule_amount)
        {
            locked.rules.push(AlertRule { id, user_id: row.user_id, event_type, unit, amount, price: row.price });
            continue;
        }
        let at = row.position.and_then(|p| times.get(usize::try_from(p).ok()?.checked_sub(1)?)).copied();
        match (
            row.event_type,
            row.limit,
            row.warning_percent,
            at,
            row.start,
            row.end,
            row.kind.as_deref().and_then(PeriodKind::parse),
            row.month_start,
            row.month_end,
        ) {
            (Some(event_type), Some(limit), Some(warning_percent), ..) => {
                locked.limits.insert((row.user_id, event_type), Limit { limit, warning_percent });
            }
            (_, _, _, Some(at), Some(start), Some(end), Some(kind), Some(month_start), Some(month_end)) => {
                let applies = Period { kind, span: Span { start, end } };
                locked.periods.insert(
                    (row.user_id, at),
                    EventPeriods { applies, month: Span { start: month_start, end: month_end } },
                );
            }
            _ => {}
        }
    }
    if locked.periods.len() != times.len() {
        // billing_period_at answers every instant; anything else is a broken schema, not a reason to guess.
        let found = locked.periods.len();
        return Err(sqlx::Error::Protocol(format!("periods for {found} of {} instants", times.len())));
    }
    Ok(locked)
}

/// What the writer reads under the locks, in one statement: the limits (per user and event type), the period of
/// every (user, instant), and the alerts the users set.
#[derive(Default)]
pub(super) struct Locked {
    pub(super) limits: HashMap<(Uuid, String), Limit>,
    pub(super) periods: HashMap<(Uuid, DateTime<Utc>), EventPeriods>,
    pub(super) rules: Vec<AlertRule>,
}

/// Current totals of the watched meters (limited, or with alerts) per (user, event type, period that applies).
/// Read after the locks are held, so they include every commit of the other writers.
pub(super) async fn period_usage(
    tx: &mut Transaction<'_, Postgres>,
    watched: &HashSet<(Uuid, String)>,
    group: &[Resolved<'_>],
    period_of: &impl Fn(Uuid, &NewEvent) -> EventPeriods,
) -> Result<HashMap<MeterKey, i64>, sqlx::Error> {
    // (user, event type, period kind, start, end)
    type Wanted<'a> = (Uuid, &'a str, &'static str, DateTime<Utc>, DateTime<Utc>);
    let wanted: BTreeSet<Wanted> = group
        .iter()
        .flat_map(|entry| {
            entry.submission.events.iter().filter(|e| watched.contains(&(entry.user_id, e.event_type.clone()))).map(
                |event| {
                    let period = period_of(entry.user_id, event).applies;
                    (entry.user_id, event.event_type.as_str(), period.kind.as_str(), period.span.start, period.span.end)
                },
            )
        })
        .collect();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let (mut users, mut types, mut kinds, mut starts, mut ends) = (vec![], vec![], vec![], vec![], vec![]);
    for (user, event_type, kind, start, end) in wanted {
        users.push(user);
        types.push(event_type);
        kinds.push(kind);
        starts.push(start);
        ends.push(end);
    }
    let rows = sqlx::query!(
        r#"SELECT t.user_id, t.event_type, t.period_kind, t.period_start AS "period_start: DateTime<Utc>",
                  t.period_end AS "period_end: DateTime<Utc>", sum(t.quantity)::bigint AS "used!"
         FROM usage_period_totals t
         JOIN unnest($1::uuid[], $5::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
           AS wanted (user_id, event_type, period_kind, period_start, period_end)
           USING (user_id, event_type, period_kind, period_start, period_end)
         GROUP BY t.user_id, t.event_type, t.period_kind, t.period_start, t.period_end"#,
        &users,
        &kinds as &[&str],
        &starts as _,
        &ends as _,
        &types as &[&str]
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let span = Span { start: row.period_start, end: row.period_end };
            let period = Period { kind: PeriodKind::parse(&row.period_kind)?, span };
            Some(((row.user_id, row.event_type, period), row.used))
        })
        .collect())
}

/// Events already stored under the group's idempotency keys.
pub(super) async fn existing_keys(
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

pub(super) async fn keys_to_ids(
    tx: &mut Transaction<'_, Postgres>,
    wanted: &BTreeSet<UserKey>,
) -> Result<HashMap<UserKey, Uuid>, sqlx::Error> {
    let (users, keys): (Vec<Uuid>, Vec<String>) = wanted.iter().cloned().unzip();
    let rows = sqlx::query!(
        r#"SELECT e.user_id, e.idempotency_key AS "idempotency_key!", e.id
         FROM usage_events e
         JOIN unnest($1::uuid[], $2::text[]) AS wanted (user_id, idempotency_key)
           USING (user_id, idempotency_key)"#,
        &users,
        &keys
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|row| ((row.user_id, row.idempotency_key), row.id)).collect())
}

impl EventRows {
    /// Inserts the events with their outbox rows, adds them to this writer's totals slot and notifies the live
    /// meters of their users, in one statement.
    /// Returns the idempotency keys whose events were not inserted because a concurrent writer stored them first.
    pub(super) async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        slot: i16,
    ) -> Result<BTreeSet<UserKey>, sqlx::Error> {
        let inserted: Vec<Uuid> = sqlx::query_scalar!(
            r#"WITH input AS (
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
             SELECT id AS "id!" FROM inserted, notified"#,
            &self.ids,
            &self.users,
            &self.types as _,
            &self.quantities,
            &self.metadata as _,
            &self.keys as _,
            &self.occurred as _,
            &self.period_starts as _,
            &self.period_ends as _,
            slot,
            crate::usage::live::CHANNEL,
            &self.period_kinds as _,
            &self.month_starts as _,
            &self.month_ends as _
        )
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
