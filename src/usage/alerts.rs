//! Usage alerts: crossing 80 %, 90 % and 100 % of the limit in a billing period is recorded once per threshold
//! and period, in the transaction that records the crossing usage (so concurrent writers and instances cannot
//! fire one twice: `usage_alerts` has the threshold in its primary key). A user with an alert webhook URL also
//! gets an `alert_webhooks` row, delivered by the alert worker (`src/usage/alert_webhooks.rs`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// Shares of the limit, in percent, at which an alert fires.
pub const THRESHOLDS: [i16; 3] = [80, 90, 100];

/// The thresholds passed when usage went from `before` to `after` (integer arithmetic: 79.99 % is not 80 %).
pub fn crossed(before: i64, after: i64, limit: i64) -> Vec<i16> {
    if limit <= 0 {
        return Vec::new();
    }
    let reached = |used: i64, threshold: i16| i128::from(used) * 100 >= i128::from(limit) * i128::from(threshold);
    THRESHOLDS.into_iter().filter(|t| !reached(before, *t) && reached(after, *t)).collect()
}

/// Records the thresholds the usage of limited users crossed in this transaction, and queues their webhooks.
/// `before` and `after` are the totals per (user, period start) of `event_type`.
pub async fn record_crossings(
    tx: &mut Transaction<'_, Postgres>,
    event_type: &str,
    limits: &HashMap<Uuid, i64>,
    before: &HashMap<(Uuid, DateTime<Utc>), i64>,
    after: &HashMap<(Uuid, DateTime<Utc>), i64>,
) -> Result<(), sqlx::Error> {
    let (mut users, mut starts, mut thresholds, mut used, mut caps) = (vec![], vec![], vec![], vec![], vec![]);
    for (&(user, start), &now) in after {
        let Some(&limit) = limits.get(&user) else { continue };
        for threshold in crossed(before.get(&(user, start)).copied().unwrap_or(0), now, limit) {
            users.push(user);
            starts.push(start);
            thresholds.push(threshold);
            used.push(now);
            caps.push(limit);
        }
    }
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"WITH crossed AS (
             INSERT INTO usage_alerts (user_id, event_type, period_start, threshold, used, usage_limit)
             SELECT c.user_id, $6, c.period_start, c.threshold, c.used, c.usage_limit
             FROM unnest($1::uuid[], $2::timestamptz[], $3::smallint[], $4::bigint[], $5::bigint[])
                  AS c (user_id, period_start, threshold, used, usage_limit)
             ON CONFLICT DO NOTHING
             RETURNING user_id, event_type, period_start, threshold, used, usage_limit, crossed_at
         )
         INSERT INTO alert_webhooks (id, user_id, url, body)
         SELECT gen_random_uuid(), c.user_id, u.alert_webhook_url,
                jsonb_build_object(
                    'type', 'usage.threshold_crossed',
                    'timestamp', to_char(c.crossed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                    'data', jsonb_build_object(
                        'user_id', c.user_id, 'email', u.email, 'event_type', c.event_type,
                        'threshold_percent', c.threshold, 'used', c.used, 'limit', c.usage_limit,
                        'period_start', to_char(c.period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
                )::text
         FROM crossed c JOIN users u ON u.id = c.user_id
         WHERE u.alert_webhook_url IS NOT NULL"#,
        &users,
        &starts as _,
        &thresholds,
        &used,
        &caps,
        event_type
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::crossed;

    #[test]
    fn each_threshold_is_crossed_once_on_the_way_up() {
        assert_eq!(crossed(0, 799, 1_000), Vec::<i16>::new());
        assert_eq!(crossed(0, 800, 1_000), [80]);
        assert_eq!(crossed(799, 1_000, 1_000), [80, 90, 100]);
        assert_eq!(crossed(850, 950, 1_000), [90]);
        assert_eq!(crossed(1_000, 5_000, 1_000), Vec::<i16>::new());
        // 79.99 % is not 80 %.
        assert_eq!(crossed(0, 7_999, 10_000), Vec::<i16>::new());
        assert_eq!(crossed(0, 10, 0), Vec::<i16>::new());
    }
}
