//! Claiming deliveries under a lease and the call budget, sending them, and settling each by its answer.

use super::*;

impl DeliveryWorker {
    /// Leases up to `max_in_flight` due deliveries (and at most a second's worth of calls), one per customer and
    /// meter, none whose customer and meter already has a call in flight anywhere. Each is a call reserved from
    /// the shared budget, which may go into debt: the calls beyond what it held wait for their slot
    /// ([`CallBudget::slot`]), and every worker waits until the debt is paid. With less than one call in the
    /// budget, claims nothing and says how long until it holds one.
    pub(super) async fn claim(&self) -> Result<(Vec<Claimed>, Budget), BillingError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!("SELECT pg_advisory_xact_lock($1)", CLAIM_LOCK).fetch_one(&mut *tx).await?;
        let milli_calls = self.budget.refill(&mut tx).await?;
        if milli_calls < 1_000 {
            tx.commit().await?;
            return Ok((Vec::new(), Budget::Empty { wait: self.budget.wait_for_one(milli_calls) }));
        }
        let claimed = sqlx::query_as!(
            Claimed,
            r#"WITH claimed AS (
                 UPDATE meter_deliveries d
                 SET leased_until = now() + $2 * interval '1 millisecond', lease_token = gen_random_uuid(),
                     attempts = d.attempts + 1, updated_at = now(),
                     -- A lease never released: the previous attempt's worker died mid-call, outcome unknown.
                     uncertain_since = CASE WHEN d.leased_until IS NOT NULL
                                            THEN coalesce(d.uncertain_since, d.attempt_started_at)
                                            ELSE d.uncertain_since END,
                     attempt_started_at = $4
                 WHERE d.id IN (
                     SELECT id FROM (
                         -- Per customer and meter the closing period's delivery first (its invoice is due first).
                         SELECT DISTINCT ON (c.stripe_customer_id, c.event_name) c.id, c.period_end, c.next_attempt_at
                         FROM meter_deliveries c
                         WHERE c.status = 'pending' AND c.next_attempt_at <= $4
                           AND (c.leased_until IS NULL OR c.leased_until <= now())
                           AND NOT EXISTS (
                               SELECT 1 FROM meter_deliveries f
                               WHERE f.status = 'pending' AND f.stripe_customer_id = c.stripe_customer_id
                                 AND f.event_name = c.event_name AND f.leased_until > now())
                         ORDER BY c.stripe_customer_id, c.event_name, c.period_end, c.next_attempt_at, c.created_at
                     ) AS one_per_customer
                     ORDER BY period_end, next_attempt_at
                     LIMIT $1)
                 RETURNING d.id, d.identifier, d.stripe_customer_id, d.event_name, d.quantity, d.event_timestamp,
                           d.attempts, d.lease_token, d.attempt_started_at
             ),
             spent AS (
                 UPDATE stripe_call_budget SET milli_calls = milli_calls - 1000 * (SELECT count(*) FROM claimed)
                 WHERE name = $3
             )
             SELECT id AS "id!", identifier AS "identifier!", stripe_customer_id AS "stripe_customer_id!",
                    event_name AS "event_name!", quantity AS "quantity!", event_timestamp AS "event_timestamp!: _",
                    attempts AS "attempts!", lease_token AS "lease_token!", attempt_started_at AS "attempt_started_at!: _"
             FROM claimed"#,
            i64::from(self.settings.max_in_flight.min(self.budget.rate.get())),
            self.settings.lease_ms as f64,
            CallBudget::NAME,
            self.clock.now() as _
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((claimed, Budget::Held { milli_calls }))
    }

    /// Sends one claimed delivery after waiting `slot` (its place in the shared call budget) and records how it
    /// ended ([`CallVerdict`]).
    pub(super) async fn deliver(&self, delivery: Claimed, slot: Duration) -> Result<Outcome, BillingError> {
        if delivery.event_timestamp < self.clock.now() - STRIPE_WINDOW + chrono::Duration::minutes(1) {
            self.settle(&delivery, "expired", Some("older than the 35 days Stripe accepts meter events for")).await?;
            return Ok(Outcome::Expired);
        }
        tokio::time::sleep(slot).await;
        let event = MeterEvent {
            event_name: &delivery.event_name,
            customer: &delivery.stripe_customer_id,
            value: delivery.quantity,
            identifier: &delivery.identifier,
            timestamp: delivery.event_timestamp.timestamp(),
        };
        let idempotency_key = format!("{}-attempt-{}", delivery.identifier, delivery.attempts);
        let started = std::time::Instant::now();
        let result = self.stripe.create_meter_event(&event, &idempotency_key).await;
        let seconds = started.elapsed().as_secs_f64();
        if matches!(&result, Err(crate::billing::stripe::StripeError::Api { status: 429, .. })) {
            metrics::counter!(crate::telemetry::STRIPE_RATE_LIMITED).increment(1);
        }
        let outcome = self.judge(delivery, result).await;
        let label = match &outcome {
            Ok(Outcome::Delivered) => "delivered",
            Ok(Outcome::Retry) => "retry",
            Ok(Outcome::Failed) => "failed",
            Ok(Outcome::Expired) => "expired",
            Ok(Outcome::Uncertain) => "uncertain",
            Err(_) => "error",
        };
        metrics::histogram!(crate::telemetry::STRIPE_CALL_SECONDS, "outcome" => label).record(seconds);
        outcome
    }

    /// Records how a call ended ([`CallVerdict`]).
    async fn judge(
        &self,
        delivery: Claimed,
        result: Result<(), crate::billing::stripe::StripeError>,
    ) -> Result<Outcome, BillingError> {
        match (CallVerdict::of(&result), result) {
            (CallVerdict::Counted, Ok(())) => {
                self.settle(&delivery, "delivered", None).await?;
                Ok(Outcome::Delivered)
            }
            (CallVerdict::Counted, Err(_)) => {
                // An earlier attempt reached Stripe but its answer did not reach us.
                self.settle(&delivery, "delivered", Some("Stripe already held this identifier")).await?;
                Ok(Outcome::Delivered)
            }
            (CallVerdict::RefusedRetry, Err(err)) => {
                self.retry_later(&delivery, &err, false).await?;
                Ok(Outcome::Retry)
            }
            (CallVerdict::Unknown { retry: true }, Err(err)) => {
                self.retry_later(&delivery, &err, true).await?;
                Ok(Outcome::Retry)
            }
            (CallVerdict::Unknown { retry: false }, Err(err)) => {
                tracing::warn!(
                    identifier = %delivery.identifier,
                    customer = %delivery.stripe_customer_id,
                    error = %err,
                    "meter event outcome unknown and not to be re-sent; settling it from the meter summaries"
                );
                self.mark_uncertain(&delivery, &err).await?;
                Ok(Outcome::Uncertain)
            }
            (_, err) => {
                let err = err.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(
                    identifier = %delivery.identifier,
                    customer = %delivery.stripe_customer_id,
                    error = %err,
                    "Stripe refused a meter event; marked failed"
                );
                self.settle(&delivery, "failed", Some(&err)).await?;
                Ok(Outcome::Failed)
            }
        }
    }

    /// Ends a delivery and its outbox rows in `status`. Only a pending delivery changes: a second worker that
    /// took over an expired lease may have settled it already.
    pub(super) async fn settle(
        &self,
        delivery: &Claimed,
        status: &str,
        note: Option<&str>,
    ) -> Result<(), BillingError> {
        let mut tx = self.pool.begin().await?;
        let settled = sqlx::query!(
            "UPDATE meter_deliveries
             SET status = $2, last_error = $3, leased_until = NULL, updated_at = now(),
                 delivered_at = CASE WHEN $2 = 'delivered' THEN $4::timestamptz END
             WHERE id = $1 AND status = 'pending'",
            delivery.id,
            status,
            note,
            self.clock.now() as _
        )
        .execute(&mut *tx)
        .await?;
        if settled.rows_affected() == 1 {
            outbox_follows(&mut tx, &[delivery.id], status, if status == "delivered" { None } else { note }).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An attempt whose outcome is unknown and that must not be repeated: the delivery waits as `uncertain` until
    /// the meter event summaries can say whether it counted.
    pub(super) async fn mark_uncertain(&self, delivery: &Claimed, err: &StripeError) -> Result<(), BillingError> {
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query!(
            "UPDATE meter_deliveries
             SET status = 'uncertain', uncertain_since = coalesce(uncertain_since, $3), leased_until = NULL,
                 next_attempt_at = $4, last_error = $5, updated_at = now()
             WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
            delivery.id,
            delivery.lease_token,
            delivery.attempt_started_at as _,
            (self.clock.now() + SUMMARY_SETTLE) as _,
            err.to_string()
        )
        .execute(&mut *tx)
        .await?;
        if marked.rows_affected() == 1 {
            outbox_follows(&mut tx, &[delivery.id], "uncertain", None).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Releases the lease and schedules the next attempt: exponential backoff with jitter. `unknown`: this attempt
    /// may have been counted, which starts the identifier's safe re-send age if nothing had before.
    pub(super) async fn retry_later(
        &self,
        delivery: &Claimed,
        err: &StripeError,
        unknown: bool,
    ) -> Result<(), BillingError> {
        let delay = backoff(
            delivery.attempts,
            Duration::from_millis(self.settings.retry_base_ms),
            Duration::from_millis(self.settings.retry_max_ms),
            random_unit(),
        );
        tracing::debug!(identifier = %delivery.identifier, attempts = delivery.attempts, error = %err, ?delay, "meter event retry");
        sqlx::query!(
            "UPDATE meter_deliveries
             SET next_attempt_at = $5::timestamptz + $3::float8 * interval '1 millisecond', leased_until = NULL, last_error = $4,
                 uncertain_since = CASE WHEN $6 THEN coalesce(uncertain_since, $7::timestamptz) ELSE uncertain_since END,
                 updated_at = now()
             WHERE id = $1 AND lease_token = $2 AND status = 'pending'",
            delivery.id,
            delivery.lease_token,
            delay.as_millis() as f64,
            err.to_string(),
            self.clock.now() as _,
            unknown as _,
            delivery.attempt_started_at as _
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The outbox rows of `deliveries` take their delivery's new `status`, with `note` as their last error (cleared when
/// `None`): the one statement by which a delivery's state reaches the usage events it carries.
pub(crate) async fn outbox_follows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deliveries: &[Uuid],
    status: &str,
    note: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE meter_event_outbox SET status = $2, last_error = $3, updated_at = now() WHERE delivery_id = ANY($1)",
        deliveries,
        status,
        note
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
