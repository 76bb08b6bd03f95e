//! Deciding a submission, without the database: which events are new, which repeat an idempotency key, whether
//! the whole submission fits the user's hard limit, and the rows to insert. Pure, so it is unit-tested below.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::WriteError;
use super::{Allowance, LimitPolicy, NewEvent, Outcome, Recorded, Submission};
use crate::usage::period::{Period, Span};
use crate::usage::AI_TOKENS_EVENT;

/// A user's hard limit, as locked for this transaction.
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
/// rows added to `rows`, its usage to `used`) or refused whole for passing the user's limit.
pub(super) fn plan(
    user: Uuid,
    submission: &Submission,
    limit: Option<Limit>,
    used: &mut HashMap<(Uuid, Period), i64>,
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
                return Err(WriteError::LimitExceeded { limit, remaining: (limit - before).max(0) });
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

    fn event(quantity: i64, key: Option<&str>) -> NewEvent {
        NewEvent {
            event_type: AI_TOKENS_EVENT.into(),
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

    fn key() -> (Uuid, Period) {
        (USER, period_of(USER, &event(1, None)).applies)
    }

    /// What a writer keeps across the submissions of one group: the usage so far, the keys seen, the rows to write.
    #[derive(Default)]
    struct Group {
        used: HashMap<(Uuid, Period), i64>,
        known: HashMap<UserKey, Uuid>,
        rows: EventRows,
    }

    impl Group {
        fn plan(
            &mut self,
            events: Vec<NewEvent>,
            policy: LimitPolicy,
            limit: Option<Limit>,
        ) -> Result<Outcome, WriteError> {
            let submission = submission(events, policy);
            plan(USER, &submission, limit, &mut self.used, &mut self.known, &period_of, &mut self.rows)
        }
    }

    #[test]
    fn a_repeated_key_is_answered_with_the_first_event_and_counted_once() {
        let mut group = Group::default();
        group.known.insert((USER, "stored".to_owned()), Uuid::from_u128(1));
        let events = vec![event(5, Some("stored")), event(7, Some("a")), event(9, Some("a")), event(11, None)];
        let outcome = group.plan(events, LimitPolicy::Enforce, None).unwrap();
        let answers: Vec<(u128, bool)> = outcome.events.iter().map(|r| (r.id.as_u128(), r.duplicate)).collect();
        assert_eq!(answers, [(1, true), (101, false), (101, true), (103, false)]);
        assert_eq!(group.rows.quantities, [7, 11], "only new events become rows");
        assert_eq!(group.known[&(USER, "a".to_owned())], Uuid::from_u128(101), "later submissions see the new key");
        assert_eq!(outcome.allowance, None, "no limit, no allowance");
    }

    #[test]
    fn past_the_limit_a_submission_is_refused_whole_and_changes_nothing() {
        let limit = Some(Limit { limit: 100, warning_percent: 80 });
        let mut group = Group { used: HashMap::from([(key(), 90)]), ..Group::default() };
        let refused = group.plan(vec![event(5, Some("k")), event(6, None)], LimitPolicy::Enforce, limit);
        assert!(matches!(refused, Err(WriteError::LimitExceeded { limit: 100, remaining: 10 })));
        assert_eq!((group.used[&key()], group.rows.ids.len(), group.known.len()), (90, 0, 0));
    }

    #[test]
    fn exactly_up_to_the_limit_fits_and_the_allowance_says_so() {
        let limit = Some(Limit { limit: 100, warning_percent: 80 });
        let mut group = Group { used: HashMap::from([(key(), 90)]), ..Group::default() };
        let outcome = group.plan(vec![event(10, None)], LimitPolicy::Enforce, limit).unwrap();
        let allowance = outcome.allowance.unwrap();
        assert_eq!((allowance.used, allowance.remaining(), allowance.warning()), (100, 0, true));
        assert_eq!(group.used[&key()], 100);
    }

    #[test]
    fn usage_that_already_happened_is_recorded_past_the_limit() {
        let limit = Some(Limit { limit: 100, warning_percent: 80 });
        let mut group = Group { used: HashMap::from([(key(), 90)]), ..Group::default() };
        let outcome = group.plan(vec![event(50, None)], LimitPolicy::RecordAnyway, limit).unwrap();
        assert_eq!(outcome.allowance.map(|a| (a.used, a.remaining())), Some((140, 0)));
        assert_eq!(group.rows.quantities, [50]);
    }

    #[test]
    fn other_event_types_do_not_count_against_the_token_limit() {
        let limit = Some(Limit { limit: 10, warning_percent: 80 });
        let mut group = Group::default();
        let image = NewEvent { event_type: "image_generated".into(), ..event(1_000, None) };
        let outcome = group.plan(vec![image], LimitPolicy::Enforce, limit).unwrap();
        assert_eq!(outcome.events.len(), 1);
        assert!(group.used.is_empty());
        assert_eq!(group.rows.period_kinds, ["subscription"]);
    }
}
