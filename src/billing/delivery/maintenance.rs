//! Housekeeping before batching: meter error details, expiry, unsafe re-sends stopped, late usage moved on.

use super::*;

impl DeliveryWorker {
    /// Fetches the details of meter error reports received as thin webhooks: which identifiers Stripe could not
    /// count, and why. A report Stripe cannot give now is tried again on a later step (and its error kept).
    pub(super) async fn fetch_meter_error_details(&self) -> Result<(), BillingError> {
        let reports = sqlx::query_scalar!(
            "SELECT stripe_event_id FROM meter_error_reports WHERE details_fetched_at IS NULL
             ORDER BY reported_at LIMIT 10"
        )
        .fetch_all(&self.pool)
        .await?;
        for report in reports {
            match self.stripe.get_v2_event(&report).await {
                Ok(event) => crate::billing::events::store_meter_error_details(&self.pool, &report, &event).await?,
                Err(err) => {
                    tracing::warn!(event = %report, error = %err, "could not fetch a meter error report");
                    sqlx::query!(
                        "UPDATE meter_error_reports SET fetch_error = $2 WHERE stripe_event_id = $1",
                        &report,
                        err.to_string()
                    )
                    .execute(&self.pool)
                    .await?;
                    if !err.is_retryable() {
                        // Not going to change: stop asking.
                        sqlx::query!(
                            "UPDATE meter_error_reports SET details_fetched_at = now() WHERE stripe_event_id = $1",
                            &report
                        )
                        .execute(&self.pool)
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks unsent rows older than Stripe's window as expired: Stripe would refuse them, so they are kept, with
    /// the reason, instead of sent.
    pub(super) async fn expire_old_rows(&self) -> Result<u64, BillingError> {
        let expired = sqlx::query!(
            "UPDATE meter_event_outbox o
             SET status = 'expired', updated_at = now(),
                 last_error = 'older than the 35 days Stripe accepts meter events for'
             FROM usage_events e
             WHERE e.id = o.usage_event_id AND o.status IN ('pending', 'awaiting_customer')
               AND o.delivery_id IS NULL AND e.occurred_at < $1",
            (self.clock.now() - STRIPE_WINDOW + EXPIRY_MARGIN) as _
        )
        .execute(&self.pool)
        .await?;
        Ok(expired.rows_affected())
    }

    /// Deliveries whose first unknown attempt is older than [`IDENTIFIER_SAFE_AGE`], or whose period's invoice
    /// deadline has passed, are not sent again under their identifier: they become `uncertain` (with their outbox rows) and are settled from the meter event
    /// summaries ([`super::uncertain`]). A lease that ran out without being released is an attempt whose outcome
    /// nobody learnt (its worker died mid-call), so it counts as unknown too.
    pub(super) async fn stop_unsafe_resends(&self) -> Result<u64, BillingError> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let stopped: Vec<Uuid> = sqlx::query_scalar!(
            "UPDATE meter_deliveries d
             SET status = 'uncertain',
                 uncertain_since = coalesce(d.uncertain_since, d.attempt_started_at),
                 leased_until = NULL, next_attempt_at = $1,
                 last_error = 'outcome unknown for longer than is safe to re-send under the same identifier; '
                              || 'checking Stripe''s meter event summaries',
                 updated_at = now()
             WHERE d.status = 'pending'
               AND (d.leased_until IS NULL OR d.leased_until <= now())
               AND coalesce(d.uncertain_since, CASE WHEN d.leased_until IS NOT NULL THEN d.attempt_started_at END)
                   < CASE WHEN d.period_kind = 'subscription'
                               AND d.period_end + $3::float8 * interval '1 minute' <= $1::timestamptz + $4::float8 * interval '1 second'
                          -- Past its invoice's deadline a re-send under the old stamp would bill nothing: settle it
                          -- now, and if Stripe did not count it, it goes on the next invoice (restamp_late).
                          THEN 'infinity'::timestamptz
                          ELSE $2::timestamptz END
             RETURNING d.id",
            now as _,
            (now - IDENTIFIER_SAFE_AGE) as _,
            f64::from(self.settings.invoice_grace_minutes),
            DEADLINE_MARGIN.num_seconds() as f64
        )
        .fetch_all(&mut *tx)
        .await?;
        if !stopped.is_empty() {
            outbox_follows(&mut tx, &stopped, "uncertain", None).await?;
            tracing::warn!(
                deliveries = stopped.len(),
                "meter events with an unknown outcome past the safe re-send age"
            );
        }
        tx.commit().await?;
        Ok(stopped.len() as u64)
    }

    /// The late-usage rule. A delivery of a subscription period that has not reached Stripe by the period's
    /// invoice deadline (period end + grace − [`DEADLINE_MARGIN`]) would be accepted and billed on no invoice, so
    /// it is moved to the invoice after: stamped now, into the period containing now, under a new identifier, its
    /// own period kept in `late_from_period_*`. Only deliveries Stripe provably has not counted move (no unknown
    /// attempt, no lease left behind); the others are settled first.
    pub(super) async fn restamp_late(&self) -> Result<u64, BillingError> {
        let now = self.clock.now();
        let restamped = sqlx::query!(
            "UPDATE meter_deliveries d
             SET late_from_period_start = coalesce(d.late_from_period_start, d.period_start),
                 late_from_period_end = coalesce(d.late_from_period_end, d.period_end),
                 period_start = x.period_start, period_end = x.period_end, period_kind = x.period_kind,
                 event_timestamp = $1,
                 previous_identifiers = d.previous_identifiers || d.identifier,
                 identifier = gen_random_uuid()::text,
                 next_attempt_at = $1, updated_at = now()
             FROM (SELECT c.id, p.* FROM meter_deliveries c
                   CROSS JOIN LATERAL billing_period_at(c.user_id, $1, $3, $4) AS p
                   WHERE c.status = 'pending' AND c.period_kind = 'subscription' AND c.uncertain_since IS NULL
                     AND c.leased_until IS NULL
                     AND c.period_end + $2::float8 * interval '1 minute' <= $1::timestamptz + $5::float8 * interval '1 second'
                   FOR UPDATE OF c SKIP LOCKED) AS x
             WHERE d.id = x.id",
            now as _,
            f64::from(self.settings.invoice_grace_minutes),
            &self.timezone,
            LIVE_STATUSES as _,
            DEADLINE_MARGIN.num_seconds() as f64
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        if restamped > 0 {
            metrics::counter!(crate::telemetry::DELIVERY_LATE).increment(restamped);
            tracing::warn!(deliveries = restamped, "usage missed its invoice's deadline; billed on the next invoice");
        }
        Ok(restamped)
    }
}
