//! Settling meter events whose outcome is unknown, without ever counting one twice.
//!
//! A call that timed out, lost its answer, got a 5xx or died with its worker may or may not have been counted by
//! Stripe. While the first such attempt is younger than [`super::delivery::IDENTIFIER_SAFE_AGE`] the worker simply re-sends it under
//! the same identifier (Stripe refuses a repeat within its 24-hour window, and that refusal means "counted").
//! After that, or when Stripe says not to retry, the delivery is `uncertain` and nothing is sent under its
//! identifier again. This module then asks Stripe what it counted: the meter event summary of the exact minute the
//! delivery is stamped in, for its customer and meter, compared with what Tally knows it delivered in that minute.
//! - The difference equals exactly one combination of the minute's undetermined deliveries: those are counted
//!   (`delivered`), the rest provably are not and are sent again under a **new** identifier.
//! - Anything else (summaries not caught up, Stripe unreachable, a total no combination explains): nothing
//!   changes; it is looked at again an hour later and shown by `tally stripe status` meanwhile.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::delivery::{outbox_follows, SUMMARY_SETTLE};
use super::stripe::StripeClient;
use crate::billing::error::BillingError;

/// Uncertain deliveries looked at per worker step.
const PER_STEP: i64 = 20;
/// Most undetermined deliveries of one minute whose combinations are tried (2^16 sums).
const MAX_UNDETERMINED: usize = 16;
/// How long an uncertain delivery that could not be settled waits before it is looked at again.
const RECHECK: chrono::Duration = chrono::Duration::hours(1);

#[derive(Debug)]
struct Due {
    id: Uuid,
    stripe_customer_id: String,
    event_name: String,
    event_timestamp: DateTime<Utc>,
    attempt_started_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
struct InMinute {
    id: Uuid,
    quantity: i64,
    status: String,
    undetermined: bool,
}

/// Which of the undetermined deliveries (by quantity) Stripe counted, given that it counted `unexplained` more
/// than Tally knows of: the one combination whose sum is exactly that, or `None` when no combination or more than
/// one explains it (then nothing may be decided).
pub fn counted_combination(unexplained: i64, quantities: &[i64]) -> Option<Vec<bool>> {
    if unexplained < 0 || quantities.len() > MAX_UNDETERMINED {
        return None;
    }
    let mut found = None;
    for mask in 0_u32..(1 << quantities.len()) {
        let sum: i64 = quantities.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, q)| q).sum();
        if sum == unexplained {
            if found.is_some() {
                return None;
            }
            found = Some(mask);
        }
    }
    found.map(|mask| (0..quantities.len()).map(|i| mask & (1 << i) != 0).collect())
}

/// Settles the uncertain deliveries that are due; returns how many were settled (counted or resent).
pub async fn resolve_due(pool: &PgPool, stripe: &StripeClient, now: DateTime<Utc>) -> Result<u64, BillingError> {
    let due = sqlx::query_as!(
        Due,
        r#"SELECT id, stripe_customer_id, event_name, event_timestamp AS "event_timestamp: _",
                  attempt_started_at AS "attempt_started_at: _"
           FROM meter_deliveries
           WHERE status = 'uncertain' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2"#,
        now as _,
        PER_STEP
    )
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let meters = match stripe.list_meters().await {
        Ok(meters) => meters,
        Err(err) => {
            let ids: Vec<Uuid> = due.iter().map(|d| d.id).collect();
            postpone(pool, &ids, now + RECHECK, &format!("could not read Stripe's meters to settle it: {err}")).await?;
            return Ok(0);
        }
    };
    let mut settled = 0;
    for delivery in due {
        // Stripe aggregates asynchronously: a summary read too soon after the call may not include it yet.
        if let Some(started) = delivery.attempt_started_at.filter(|s| *s + SUMMARY_SETTLE > now) {
            postpone(pool, &[delivery.id], started + SUMMARY_SETTLE, "waiting for Stripe's summaries to settle")
                .await?;
            continue;
        }
        let Some(meter) = meters.iter().find(|m| m.event_name == delivery.event_name) else {
            let reason = format!("Stripe has no meter for {}", delivery.event_name);
            postpone(pool, &[delivery.id], now + RECHECK, &reason).await?;
            continue;
        };
        let minute = delivery.event_timestamp.timestamp().div_euclid(60) * 60;
        let observed = match stripe.meter_usage(&meter.id, &delivery.stripe_customer_id, minute, minute + 60).await {
            Ok(observed) => observed,
            Err(err) => {
                let reason = format!("could not read Stripe's meter summary to settle it: {err}");
                postpone(pool, &[delivery.id], now + RECHECK, &reason).await?;
                continue;
            }
        };
        settled += settle_minute(pool, &delivery, minute, observed, now).await?;
    }
    Ok(settled)
}

/// Decides every undetermined delivery of the customer, meter and minute of `delivery` from Stripe's `observed`
/// total, when exactly one combination explains it.
async fn settle_minute(
    pool: &PgPool,
    delivery: &Due,
    minute: i64,
    observed: i64,
    now: DateTime<Utc>,
) -> Result<u64, BillingError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query_as!(
        InMinute,
        r#"SELECT id, quantity, status,
                status = 'uncertain' OR (status IN ('pending', 'failed') AND uncertain_since IS NOT NULL)
                    AS "undetermined!"
         FROM meter_deliveries
         WHERE stripe_customer_id = $1 AND event_name = $2
           AND event_timestamp >= to_timestamp($3) AND event_timestamp < to_timestamp($3 + 60)
         ORDER BY id
         FOR UPDATE"#,
        &delivery.stripe_customer_id,
        &delivery.event_name,
        minute as f64
    )
    .fetch_all(&mut *tx)
    .await?;
    let known: i64 = rows.iter().filter(|r| r.status == "delivered").map(|r| r.quantity).sum();
    let undetermined: Vec<&InMinute> = rows.iter().filter(|r| r.undetermined).collect();
    // One still being sent may yet be counted by its own retry: decide the minute once every call has ended.
    if undetermined.iter().any(|r| r.status == "pending") {
        drop(tx);
        postpone(pool, &[delivery.id], now + RECHECK, "another meter event of the same minute is still being sent")
            .await?;
        return Ok(0);
    }
    let quantities: Vec<i64> = undetermined.iter().map(|r| r.quantity).collect();
    let Some(counted) = counted_combination(observed - known, &quantities) else {
        drop(tx);
        let reason = format!(
            "Stripe's meter shows {observed} in that minute, Tally delivered {known} there and cannot tell which of \
             {} undetermined meter events make up the rest; check the meter in Stripe's dashboard",
            quantities.len()
        );
        postpone(pool, &[delivery.id], now + RECHECK, &reason).await?;
        return Ok(0);
    };
    let (mut counted_ids, mut resend_ids, mut cleared_ids) = (Vec::new(), Vec::new(), Vec::new());
    for (row, was_counted) in undetermined.iter().zip(counted) {
        match (was_counted, row.status.as_str()) {
            (true, _) => counted_ids.push(row.id),
            (false, "uncertain") => resend_ids.push(row.id),
            // A failed delivery proven not counted: `tally stripe retry` may now send it under a new identifier.
            (false, _) => cleared_ids.push(row.id),
        }
    }
    sqlx::query!(
        "UPDATE meter_deliveries
         SET status = 'delivered', delivered_at = $2, leased_until = NULL, last_error = NULL, updated_at = now(),
             resolution = 'counted, per Stripe''s meter event summary of its minute'
         WHERE id = ANY($1)",
        &counted_ids,
        now as _
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE meter_deliveries
         SET status = 'pending', previous_identifiers = previous_identifiers || identifier,
             identifier = gen_random_uuid()::text, uncertain_since = NULL, next_attempt_at = $2,
             leased_until = NULL, last_error = NULL, updated_at = now(),
             resolution = 'not counted, per Stripe''s meter event summary of its minute; sent again under a new identifier'
         WHERE id = ANY($1)",
        &resend_ids,
        now as _
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE meter_deliveries SET uncertain_since = NULL, updated_at = now(),
             resolution = 'not counted, per Stripe''s meter event summary of its minute'
         WHERE id = ANY($1)",
        &cleared_ids
    )
    .execute(&mut *tx)
    .await?;
    outbox_follows(&mut tx, &counted_ids, "delivered", None).await?;
    outbox_follows(&mut tx, &resend_ids, "pending", None).await?;
    tx.commit().await?;
    tracing::info!(
        customer = %delivery.stripe_customer_id,
        counted = counted_ids.len(),
        resent = resend_ids.len(),
        "settled meter events of unknown outcome from Stripe's summaries"
    );
    Ok((counted_ids.len() + resend_ids.len() + cleared_ids.len()) as u64)
}

async fn postpone(pool: &PgPool, ids: &[Uuid], until: DateTime<Utc>, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE meter_deliveries SET next_attempt_at = $2, last_error = $3, updated_at = now()
         WHERE id = ANY($1) AND status = 'uncertain'",
        ids,
        until as _,
        reason
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// `tally stripe retry`: sends failed deliveries again. One that Stripe provably never counted goes out under a
/// new identifier (the old one may be past Stripe's memory); one with an attempt of unknown outcome is settled
/// from the summaries first (it becomes `uncertain`). Returns (re-queued, to settle first).
pub async fn retry_failed(pool: &PgPool, now: DateTime<Utc>) -> Result<(u64, u64), BillingError> {
    let mut tx = pool.begin().await?;
    let requeued = sqlx::query_scalar!(
        "UPDATE meter_deliveries
         SET status = 'pending', previous_identifiers = previous_identifiers || identifier,
             identifier = gen_random_uuid()::text, next_attempt_at = $1, attempts = 0, leased_until = NULL,
             last_error = NULL, updated_at = now()
         WHERE status = 'failed' AND uncertain_since IS NULL
         RETURNING id",
        now as _
    )
    .fetch_all(&mut *tx)
    .await?;
    let to_settle = sqlx::query_scalar!(
        "UPDATE meter_deliveries SET status = 'uncertain', next_attempt_at = $1, updated_at = now()
         WHERE status = 'failed' AND uncertain_since IS NOT NULL
         RETURNING id",
        now as _
    )
    .fetch_all(&mut *tx)
    .await?;
    outbox_follows(&mut tx, &requeued, "pending", None).await?;
    outbox_follows(&mut tx, &to_settle, "uncertain", None).await?;
    tx.commit().await?;
    Ok((requeued.len() as u64, to_settle.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::counted_combination;

    #[test]
    fn only_a_unique_combination_decides() {
        assert_eq!(counted_combination(0, &[5]), Some(vec![false]));
        assert_eq!(counted_combination(5, &[5]), Some(vec![true]));
        assert_eq!(counted_combination(7, &[5, 7]), Some(vec![false, true]));
        assert_eq!(counted_combination(12, &[5, 7]), Some(vec![true, true]));
        // Two events of 5: which one counted is unknowable, so neither is decided.
        assert_eq!(counted_combination(5, &[5, 5]), None);
        // Stripe shows less than Tally knows it delivered, or a sum nothing explains: not decided.
        assert_eq!(counted_combination(-1, &[5]), None);
        assert_eq!(counted_combination(3, &[5, 7]), None);
    }
}
