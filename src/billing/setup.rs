//! `tally stripe setup` and `tally stripe reconcile`: the Stripe objects Tally needs, and a check that Stripe's
//! meter holds what Tally delivered.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::billing::stripe::{NewMeteredPrice, StripeClient};
use crate::error::AppError;

/// What `tally stripe setup` creates (or finds).
#[derive(Debug, Clone)]
pub struct SetupPlan {
    /// The meter's event name: the usage event type.
    pub event_name: String,
    pub meter_display_name: String,
    pub product_name: String,
    /// Lower-case ISO 4217.
    pub currency: String,
    /// Per token, in the currency's smallest unit (yen for JPY, which has no minor unit): ¥0.05 per 1,000
    /// tokens is `0.00005`. Stripe multiplies by the period's sum and rounds the line once.
    pub unit_amount_decimal: String,
    /// Finds the price again on the next run.
    pub lookup_key: String,
}

/// The ids to put in `.env`, and whether this run created them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupResult {
    pub meter_id: String,
    pub meter_created: bool,
    pub price_id: String,
    pub product_id: String,
    pub price_created: bool,
}

/// Finds or creates the meter and the metered price. Lookups come first, so a second run creates nothing; the
/// Idempotency-Keys are derived from the names, so a run interrupted between product and price reuses the
/// product when it is run again.
pub async fn setup(stripe: &StripeClient, plan: &SetupPlan) -> Result<SetupResult, AppError> {
    let upstream = |err| AppError::Upstream(format!("Stripe: {err}"));
    let existing = stripe.list_meters().await.map_err(upstream)?;
    let (meter_id, meter_created) = match existing.into_iter().find(|m| m.event_name == plan.event_name) {
        Some(meter) => (meter.id, false),
        None => {
            let key = format!("tally-setup-meter-{}", plan.event_name);
            let meter =
                stripe.create_meter(&plan.meter_display_name, &plan.event_name, &key).await.map_err(upstream)?;
            (meter.id, true)
        }
    };
    if let Some(price) = stripe.find_price(&plan.lookup_key).await.map_err(upstream)? {
        return Ok(SetupResult {
            meter_id,
            meter_created,
            price_id: price.id,
            product_id: price.product,
            price_created: false,
        });
    }
    let product_key = format!("tally-setup-product-{}", plan.lookup_key);
    let product = stripe.create_product(&plan.product_name, &product_key).await.map_err(upstream)?;
    let price = NewMeteredPrice {
        product: &product,
        meter: &meter_id,
        currency: &plan.currency,
        unit_amount_decimal: &plan.unit_amount_decimal,
        lookup_key: &plan.lookup_key,
        nickname: &plan.meter_display_name,
    };
    let price_key = format!("tally-setup-price-{}", plan.lookup_key);
    let price = stripe.create_metered_price(&price, &price_key).await.map_err(upstream)?;
    Ok(SetupResult { meter_id, meter_created, price_id: price.id, product_id: product, price_created: true })
}

/// One customer, meter and billing period, compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub customer: String,
    pub event_name: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The delivered sum Tally holds for the compared window.
    pub delivered: i64,
    /// What Stripe's meter event summaries hold for it.
    pub stripe: i64,
    /// Usage recorded in the period but not delivered yet (pending, failed, expired or awaiting a customer).
    pub undelivered: i64,
}

impl Reconciliation {
    pub fn matches(&self) -> bool {
        self.delivered == self.stripe
    }
}

/// Compares, for every customer, meter and billing period that ends after `since`, the usage Tally delivered with
/// what Stripe's meter reports. Stripe's summaries take whole minutes, so each period is widened to whole minutes
/// and Tally's side is summed over the same window.
pub async fn reconcile(
    pool: &PgPool,
    stripe: &StripeClient,
    since: DateTime<Utc>,
) -> Result<Vec<Reconciliation>, AppError> {
    let meters = stripe.list_meters().await.map_err(|err| AppError::Upstream(format!("Stripe: {err}")))?;
    #[derive(sqlx::FromRow)]
    struct DeliveredPeriod {
        customer: String,
        event_name: String,
        period_start: DateTime<Utc>,
        period_end: DateTime<Utc>,
        undelivered: i64,
    }
    let periods: Vec<DeliveredPeriod> = sqlx::query_as(
        "SELECT d.stripe_customer_id AS customer, d.event_name, d.period_start, d.period_end,
                coalesce((SELECT sum(e.quantity) FROM meter_event_outbox o JOIN usage_events e ON e.id = o.usage_event_id
                          WHERE o.user_id = d.user_id AND o.status <> 'delivered' AND e.event_type = d.event_name
                            AND e.occurred_at >= d.period_start AND e.occurred_at < d.period_end), 0)::bigint
                AS undelivered
         FROM (SELECT DISTINCT user_id, stripe_customer_id, event_name, period_start, period_end
               FROM meter_deliveries WHERE status = 'delivered' AND period_end > $1) AS d
         ORDER BY d.stripe_customer_id, d.event_name, d.period_start",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    let mut results = Vec::with_capacity(periods.len());
    for DeliveredPeriod { customer, event_name, period_start, period_end, undelivered } in periods {
        let window_start = period_start.timestamp().div_euclid(60) * 60;
        let window_end = (period_end.timestamp() + 59).div_euclid(60) * 60;
        let delivered: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM meter_deliveries
             WHERE status = 'delivered' AND stripe_customer_id = $1 AND event_name = $2
               AND event_timestamp >= to_timestamp($3) AND event_timestamp < to_timestamp($4)",
        )
        .bind(&customer)
        .bind(&event_name)
        .bind(window_start as f64)
        .bind(window_end as f64)
        .fetch_one(pool)
        .await?;
        let held = match meters.iter().find(|m| m.event_name == event_name) {
            Some(meter) => stripe
                .meter_usage(&meter.id, &customer, window_start, window_end)
                .await
                .map_err(|err| AppError::Upstream(format!("Stripe: {err}")))?,
            None => 0,
        };
        results.push(Reconciliation {
            customer,
            event_name,
            period_start,
            period_end,
            delivered,
            stripe: held,
            undelivered,
        });
    }
    Ok(results)
}
