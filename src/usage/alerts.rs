//! Usage alerts: crossing 80 %, 90 % and 100 % of a meter's limit in a billing period is recorded once per
//! threshold and period, and so is reaching an alert the user set (units, or money as the invoice will state
//! it). Both are recorded in the transaction that records the crossing usage, so concurrent writers and
//! instances cannot fire one twice (the threshold or rule is in the primary key). A user with an alert webhook URL also
//! gets an `alert_webhooks` row, delivered by the alert worker (`src/usage/alert_webhooks.rs`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::meters::Catalog;
use crate::pricing::Rate;

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

/// One meter of one user in one period, by the period's start: what alerts are kept by.
pub type AlertKey = (Uuid, String, DateTime<Utc>);

/// Records the thresholds the usage of limited meters crossed in this transaction, and queues their webhooks.
/// `before` and `after` are the totals per (user, event type, period start); `limits` per (user, event type).
pub async fn record_crossings(
    tx: &mut Transaction<'_, Postgres>,
    limits: &HashMap<(Uuid, String), i64>,
    before: &HashMap<AlertKey, i64>,
    after: &HashMap<AlertKey, i64>,
) -> Result<(), sqlx::Error> {
    let (mut users, mut types, mut starts, mut thresholds, mut used, mut caps) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (key @ (user, event_type, start), &now) in after {
        let Some(&limit) = limits.get(&(*user, event_type.clone())) else { continue };
        for threshold in crossed(before.get(key).copied().unwrap_or(0), now, limit) {
            users.push(*user);
            types.push(event_type.clone());
            starts.push(*start);
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
             SELECT c.user_id, c.event_type, c.period_start, c.threshold, c.used, c.usage_limit
             FROM unnest($1::uuid[], $6::text[], $2::timestamptz[], $3::smallint[], $4::bigint[], $5::bigint[])
                  AS c (user_id, event_type, period_start, threshold, used, usage_limit)
             ON CONFLICT DO NOTHING
             RETURNING user_id, event_type, period_start, threshold, used, usage_limit, crossed_at
         )
         INSERT INTO alert_webhooks (id, user_id, url, body)
         SELECT gen_random_uuid(), c.user_id, u.alert_webhook_url,
                alert_webhook_body('usage.threshold_crossed', c.crossed_at, c.period_start, jsonb_build_object(
                    'user_id', c.user_id, 'email', u.email, 'event_type', c.event_type,
                    'threshold_percent', c.threshold, 'used', c.used, 'limit', c.usage_limit))
         FROM crossed c JOIN users u ON u.id = c.user_id
         WHERE u.alert_webhook_url IS NOT NULL"#,
        &users,
        &starts as _,
        &thresholds,
        &used,
        &caps,
        &types
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An alert a user set: `amount` units, or `amount` in the minor unit of the meter's currency (`unit = money`).
#[derive(Debug, Clone)]
pub struct AlertRule {
    pub id: Uuid,
    pub user_id: Uuid,
    pub event_type: String,
    pub unit: String,
    pub amount: i64,
    /// Stripe's price of the meter, when Tally has read one.
    pub price: Option<serde_json::Value>,
}

/// Whether a rule is crossed when the period's usage goes from `before` to `after`: its units, or its money as the
/// invoice line would state the cost (`rate`). A money rule of a meter without a known price never fires.
pub fn rule_crossed(rule: &AlertRule, rate: Option<&Rate>, before: i64, after: i64) -> Option<Option<i64>> {
    match rule.unit.as_str() {
        "units" => (before < rule.amount && after >= rule.amount).then_some(None),
        "money" => {
            let rate = rate?;
            let cost = rate.cost(after);
            (rate.cost(before) < rule.amount && cost >= rule.amount).then_some(Some(cost))
        }
        _ => None,
    }
}

/// Records the user-set alerts this transaction's usage crossed (once per rule and period) and queues their
/// webhooks.
pub async fn record_rule_crossings(
    tx: &mut Transaction<'_, Postgres>,
    catalog: &Catalog,
    rules: &[AlertRule],
    before: &HashMap<AlertKey, i64>,
    after: &HashMap<AlertKey, i64>,
) -> Result<(), sqlx::Error> {
    let (mut ids, mut starts, mut used, mut costs) = (vec![], vec![], vec![], vec![]);
    for rule in rules {
        let rate = crate::usage::summary::rate_for(catalog, &rule.event_type, rule.price.as_ref());
        for (key @ (user, event_type, start), &now) in after {
            if *user != rule.user_id || *event_type != rule.event_type {
                continue;
            }
            if let Some(cost) = rule_crossed(rule, rate.as_ref(), before.get(key).copied().unwrap_or(0), now) {
                ids.push(rule.id);
                starts.push(*start);
                used.push(now);
                costs.push(cost);
            }
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"WITH crossed AS (
             INSERT INTO usage_alert_rule_crossings (rule_id, period_start, used, cost)
             SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[], $4::bigint[])
             ON CONFLICT DO NOTHING
             RETURNING rule_id, period_start, used, cost, crossed_at
         )
         INSERT INTO alert_webhooks (id, user_id, url, body)
         SELECT gen_random_uuid(), r.user_id, u.alert_webhook_url,
                alert_webhook_body('usage.alert_reached', c.crossed_at, c.period_start, jsonb_build_object(
                    'user_id', r.user_id, 'email', u.email, 'event_type', r.event_type,
                    'alert_unit', r.unit, 'alert_amount', r.amount, 'used', c.used, 'cost', c.cost))
         FROM crossed c JOIN usage_alert_rules r ON r.id = c.rule_id JOIN users u ON u.id = r.user_id
         WHERE u.alert_webhook_url IS NOT NULL"#,
        &ids,
        &starts as _,
        &used,
        &costs as &[Option<i64>]
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
