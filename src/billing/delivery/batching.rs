//! Batching due outbox rows into deliveries: the rules (pure, unit-tested) and the statements.

use super::*;

impl DeliveryWorker {
    /// Puts due outbox rows of customers without an open delivery into new deliveries; returns (rows, deliveries).
    pub(super) async fn form_batches(&self) -> Result<(u64, u64), BillingError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let users: Vec<Uuid> = sqlx::query_scalar!(
            "SELECT DISTINCT o.user_id FROM meter_event_outbox o
             WHERE o.status = 'pending' AND o.delivery_id IS NULL AND o.next_attempt_at <= $2
               AND NOT EXISTS (SELECT 1 FROM meter_deliveries d WHERE d.user_id = o.user_id AND d.status = 'pending')
             LIMIT $1",
            CUSTOMERS_PER_STEP,
            now as _
        )
        .fetch_all(&mut *tx)
        .await?;
        if users.is_empty() {
            return Ok((0, 0));
        }
        // Periods must not move while they are read: the same shared lock usage writers take.
        crate::usage::period::lock_users_shared(&mut tx, &users).await?;
        let rows = sqlx::query_as!(
            DueRow,
            r#"SELECT o.usage_event_id, o.user_id, u.stripe_customer_id AS "stripe_customer_id!", e.event_type,
                    e.quantity, e.occurred_at AS "occurred_at: _",
                    p.period_start AS "period_start!: _", p.period_end AS "period_end!: _",
                    p.period_kind AS "period_kind!",
                    c.period_start AS "current_start!: _", c.period_end AS "current_end!: _",
                    c.period_kind AS "current_kind!"
             FROM meter_event_outbox o
             JOIN usage_events e ON e.id = o.usage_event_id
             JOIN users u ON u.id = o.user_id
             CROSS JOIN LATERAL billing_period_at(o.user_id, e.occurred_at, $3, $4) AS p
             CROSS JOIN LATERAL billing_period_at(o.user_id, $5, $3, $4) AS c
             WHERE o.user_id = ANY($1) AND o.status = 'pending' AND o.delivery_id IS NULL
               AND o.next_attempt_at <= $5 AND u.stripe_customer_id IS NOT NULL
             ORDER BY o.user_id, e.occurred_at, o.usage_event_id
             LIMIT $2
             FOR UPDATE OF o SKIP LOCKED"#,
            &users,
            ROWS_PER_STEP,
            &self.timezone,
            LIVE_STATUSES as _,
            now as _
        )
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
}

/// A due outbox row with what batching needs.
#[derive(Debug, Clone)]
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
    pub(super) fn missed_invoice(&self, period_end: DateTime<Utc>) -> bool {
        crate::usage::period::invoice_closed(period_end, self.invoice_grace, self.now)
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
pub(super) struct NewDeliveries {
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
    pub(super) fn push(&mut self, batch: &Batch) {
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
    pub(super) async fn insert(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        sqlx::query!(
            "INSERT INTO meter_deliveries (id, identifier, user_id, stripe_customer_id, event_name, period_start,
                                           period_end, event_timestamp, quantity, event_count, period_kind,
                                           late_from_period_start, late_from_period_end, next_attempt_at)
             SELECT *, $14 FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[],
                                       $7::timestamptz[], $8::timestamptz[], $9::bigint[], $10::int[], $11::text[],
                                       $12::timestamptz[], $13::timestamptz[])",
            &self.ids,
            &self.identifiers,
            &self.users,
            &self.customers,
            &self.event_names,
            &self.period_starts as _,
            &self.period_ends as _,
            &self.timestamps as _,
            &self.quantities,
            &self.counts,
            &self.period_kinds,
            &self.late_starts as _,
            &self.late_ends as _,
            now as _
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query!(
            "UPDATE meter_event_outbox o SET delivery_id = m.delivery_id, updated_at = now()
             FROM unnest($1::uuid[], $2::uuid[]) AS m (usage_event_id, delivery_id)
             WHERE o.usage_event_id = m.usage_event_id",
            &self.members,
            &self.member_deliveries
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
