//! Deciding a submission, without the database: which events are new, which repeat an idempotency key, whether
//! the whole submission fits the user's hard limit, and the rows to insert. Pure, so it is unit-tested below.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::WriteError;
use super::{Allowance, LimitPolicy, NewEvent, Outcome, Recorded, Submission};
use crate::usage::period::{Period, Span};

/// One meter of one user in one period: what limits, alerts and the usage so far are kept by.
pub(super) type MeterKey = (Uuid, String, Period);

/// A user's hard limit on one event type, as locked for this transaction.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limit {
    pub(super) limit: i64,
    pub(super) warning_percent: i16,
}

pub(super) type UserKey = (Uuid, String);

/// The periods one event is counted in: the period that applies to it (its limit and meter), and its calendar
/// month, whose counter every event feeds (see `totals.rs`).
#[derive(Debug, Clone, Copy)]
pub(super) struct EventPeriods {
    pub(super) applies: Period,
    pub(super) month: Span,
}

/// Decides one submission: duplicates are answered with their first event, the rest is accepted whole (its
/// rows added to `rows`, its usage to `used`) or refused whole for passing one of the user's limits (each event
/// type has its own).
pub(super) fn plan(
    user: Uuid,
    submission: &Submission,
    limits: &HashMap<(Uuid, String), Limit>,
    used: &mut HashMap<MeterKey, i64>,
    known: &mut HashMap<UserKey, Uuid>,
    period_of: &impl Fn(Uuid, &NewEvent) -> EventPeriods,
    rows: &mut EventRows,
) -> Result<Outcome, WriteError> {
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

    // The hard limits: the new usage of each event type and period must fit in what is left of it.
    let mut added: HashMap<MeterKey, i64> = HashMap::new();
    for (_, event) in &fresh {
        *added.entry((user, event.event_type.clone(), period_of(user, event).applies)).or_default() += event.quantity;
    }
    if submission.policy == LimitPolicy::Enforce {
        for (key @ (_, event_type, _), quantity) in &added {
            let Some(Limit { limit, .. }) = limits.get(&(user, event_type.clone())) else { continue };
            let before = used.get(key).copied().unwrap_or(0);
            if before.saturating_add(*quantity) > *limit {
                return Err(WriteError::LimitExceeded {
                    event_type: event_type.clone(),
                    limit: *limit,
                    remaining: (limit - before).max(0),
                });
            }
        }
    }
    // Where the caller stands on the meter of the submission's last event.
    let allowance = submission.events.last().and_then(|last| {
        let Limit { limit, warning_percent } = *limits.get(&(user, last.event_type.clone()))?;
        let key = (user, last.event_type.clone(), period_of(user, last).applies);
        let used_now = used.get(&key).copied().unwrap_or(0) + added.get(&key).copied().unwrap_or(0);
        Some(Allowance { limit, used: used_now, warning_percent })
    });

    for (key, quantity) in added {
        *used.entry(key).or_default() += quantity;
    }
    known.extend(keys_in_submission);
    for (id, event) in fresh {
        rows.push(id, user, event, period_of(user, event));
    }
    Ok(Outcome { events: recorded, allowance })
}

/// Column arrays of the events to insert, for one `unnest` statement.
#[derive(Default)]
pub(super) struct EventRows {
    pub(super) ids: Vec<Uuid>,
    pub(super) users: Vec<Uuid>,
    pub(super) types: Vec<String>,
    pub(super) quantities: Vec<i64>,
    pub(super) metadata: Vec<Json<serde_json::Value>>,
    pub(super) keys: Vec<Option<String>>,
    pub(super) occurred: Vec<DateTime<Utc>>,
    pub(super) period_kinds: Vec<&'static str>,
    pub(super) period_starts: Vec<DateTime<Utc>>,
    pub(super) period_ends: Vec<DateTime<Utc>>,
    pub(super) month_starts: Vec<DateTime<Utc>>,
    pub(super) month_ends: Vec<DateTime<Utc>>,
}

impl EventRows {
    pub(super) fn push(&mut self, id: Uuid, user: Uuid, event: &NewEvent, periods: EventPeriods) {
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

    pub(super) fn key_of(&self, id: Uuid) -> Option<UserKey> {
        let i = self.ids.iter().position(|x| *x == id)?;
        Some((self.users[i], self.keys[i].clone()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::caller::Caller;
    use crate::usage::period::PeriodKind;

    const USER: Uuid = Uuid::from_u128(7);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    const TOKENS: &str = crate::usage::AI_TOKENS_EVENT;

    fn event(quantity: i64, key: Option<&str>) -> NewEvent {
        NewEvent {
            event_type: TOKENS.into(),
            quantity,
            metadata: serde_json::json!({}),
            idempotency_key: key.map(str::to_owned),
            occurred_at: at(0),
        }
    }

    fn submission(events: Vec<NewEvent>, policy: LimitPolicy) -> Submission {
        Submission {
            caller: Caller::User(USER),
            ids: (0..events.len() as u128).map(|n| Uuid::from_u128(100 + n)).collect(),
            events,
            policy,
            reply: tokio::sync::oneshot::channel().0,
        }
    }

    /// Every event in one subscription period.
    fn period_of(_: Uuid, _: &NewEvent) -> EventPeriods {
        let span = Span { start: at(-100), end: at(100) };
        EventPeriods { applies: Period { kind: PeriodKind::Subscription, span }, month: span }
    }

    fn key() -> MeterKey {
        (USER, TOKENS.into(), period_of(USER, &event(1, None)).applies)
    }

    fn token_limit(limit: i64) -> HashMap<(Uuid, String), Limit> {
        HashMap::from([((USER, TOKENS.to_owned()), Limit { limit, warning_percent: 80 })])
    }

    /// What a writer keeps across the submissions of one group: the usage so far, the keys seen, the rows to write.
    #[derive(Default)]
    struct Group {
        used: HashMap<MeterKey, i64>,
        known: HashMap<UserKey, Uuid>,
        rows: EventRows,
    }

    impl Group {
        fn plan(
            &mut self,
            events: Vec<NewEvent>,
            policy: LimitPolicy,
            limits: &HashMap<(Uuid, String), Limit>,
        ) -> Result<Outcome, WriteError> {
            let submission = submission(events, policy);
            plan(USER, &submission, limits, &mut self.used, &mut self.known, &period_of, &mut self.rows)
        }
    }

    #[test]
    fn a_repeated_key_is_answered_with_the_first_event_and_counted_once() {
        let mut group = Group::default();
        group.known.insert((USER, "stored".to_owned()), Uuid::from_u128(1));
        let events = vec![event(5, Some("stored")), event(7, Some("a")), event(9, Some("a")), event(11, None)];
        let outcome = group.plan(events, LimitPolicy::Enforce, &HashMap::new()).unwrap();
        let answers: Vec<(u128, bool)> = outcome.events.iter().map(|r| (r.id.as_u128(), r.duplicate)).collect();
        assert_eq!(answers, [(1, true), (101, false), (101, true), (103, false)]);
        assert_eq!(group.rows.quantities, [7, 11], "only new events become rows");
        assert_eq!(group.known[&(USER, "a".to_owned())], Uuid::from_u128(101), "later submissions see the new key");
        assert_eq!(outcome.allowance, None, "no limit, no allowance");
    }

    #[test]
    fn past_the_limit_a_submission_is_refused_whole_and_changes_nothing() {
        let limit = token_limit(100);
        let mut group = Group { used: HashMap::from([(key(), 90)]), ..Group::default() };
        let refused = group.plan(vec![event(5, Some("k")), event(6, None)], LimitPolicy::Enforce, &limit);
        assert!(matches!(refused, Err(WriteError::LimitExceeded { limit: 100, remaining: 10, .. })));
        assert_eq!((group.used[&key()], group.rows.ids.len(), group.known.len()), (90, 0, 0));
    }

    #[test]
    fn exactly_up_to_the_limit_fits_and_the_allowance_says_so() {
        let limit = token_limit(100);
        let mut group = Group { used: HashMap::from([(key(), 90)]), ..Group::default() };
        let outcome = group.plan(vec![event(10, None)], LimitPolicy::Enforce, &limit).unwrap();
        let allowance = outcome.allowance.unwrap();
        assert_eq!((allowance.used, allowance.remaining(), allowance.warning()), (100, 0, true));
        assert_eq!(group.used[&key()], 100);
    }

    #[test]
    fn usage_that_already_happened_is_recorded_past_the_limit() {
        let limit = token_limit(100);
        let mut group = Group { used: HashMap::from([(key(), 90)]), ..Group::default() };
        let outcome = group.plan(vec![event(50, None)], LimitPolicy::RecordAnyway, &limit).unwrap();
        assert_eq!(outcome.allowance.map(|a| (a.used, a.remaining())), Some((140, 0)));
        assert_eq!(group.rows.quantities, [50]);
    }

    #[test]
    fn each_event_type_is_held_to_its_own_limit() {
        let mut limits = token_limit(10);
        limits.insert((USER, "image_generated".into()), Limit { limit: 3, warning_percent: 80 });
        let mut group = Group::default();
        let image = |n| NewEvent { event_type: "image_generated".into(), ..event(n, None) };
        // 1,000 images do not touch the token limit, but pass the image limit.
        let refused = group.plan(vec![image(4)], LimitPolicy::Enforce, &limits);
        assert!(
            matches!(&refused, Err(WriteError::LimitExceeded { event_type, limit: 3, remaining: 3 }) if event_type == "image_generated")
        );
        let outcome = group.plan(vec![image(3), event(10, None)], LimitPolicy::Enforce, &limits).unwrap();
        assert_eq!(outcome.allowance.map(|a| (a.limit, a.used)), Some((10, 10)), "the last event's meter");
        let image_key = (USER, "image_generated".to_owned(), key().2);
        assert_eq!((group.used[&key()], group.used[&image_key]), (10, 3));
        assert_eq!(group.rows.period_kinds, ["subscription", "subscription"]);
    }
}
