//! `tally stripe reconcile`: Tally's numbers against Stripe's, two ways.
//!
//! - **The meter** ([`meter`]): per customer and billing period, what Tally delivered against what Stripe's meter
//!   event summaries hold. Proves every delivery arrived once, but not that it was billed: usage that reached the
//!   meter after its invoice was finalized is on the meter and on no invoice.
//! - **The invoices** ([`invoices`]): per metered invoice line (recorded from Stripe's invoice webhooks), the
//!   quantity Stripe billed against what Tally delivered stamped inside the line's period. Stripe's invoice is the
//!   judge; a difference comes with what explains it (usage moved to the next invoice, uncertain or undelivered
//!   usage, a draft that Stripe may still add to).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::billing::error::BillingError;
use crate::billing::stripe::{StripeClient, StripeError};

/// What a long comparison reports as it goes (the command line draws a progress bar from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// How many steps there are.
    Total(usize),
    /// One more is done.
    Done,
}

/// One customer, meter and billing period: what Tally delivered against what Stripe's meter holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reconciliation {
    pub customer: String,
    pub event_name: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The delivered sum Tally holds for the compared window.
    pub delivered: i64,
    /// What Stripe's meter event summaries hold for it; `None` when Stripe could not be asked (see `error`).
    pub stripe: Option<i64>,
    /// Why Stripe's side is unknown: its last answer after retries.
    pub error: Option<String>,
    /// Usage recorded in the period but not delivered yet (pending, failed, expired or awaiting a customer).
    pub undelivered: i64,
}

impl Reconciliation {
    pub fn matches(&self) -> bool {
        self.stripe == Some(self.delivered)
    }
}

/// Stripe calls of a reconciliation: tried this often, backing off from 0.5 s to 8 s, while Stripe's error is
/// retryable (429, 5xx, network).
const STRIPE_ATTEMPTS: i32 = 5;

async fn with_retries<T, F, Fut>(operation: F) -> Result<T, StripeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StripeError>>,
{
    let (base, max) = (std::time::Duration::from_millis(500), std::time::Duration::from_secs(8));
    crate::retry::retrying(STRIPE_ATTEMPTS, base, max, StripeError::is_retryable, operation).await
}

/// Compares, for every customer, meter and billing period that ends after `since`, the usage Tally delivered with
/// what Stripe's meter reports. Stripe's summaries take whole minutes, so each period is widened to whole minutes
/// and Tally's side is summed over the same window. Stripe's calls are retried with backoff; a period Stripe
/// still cannot answer for is reported with the error (and counts as a difference) and the others are compared:
/// one bad answer never hides the rest. `progress` is told the number of periods, then each one done.
pub async fn meter(
    pool: &PgPool,
    stripe: &StripeClient,
    since: DateTime<Utc>,
    progress: &dyn Fn(Progress),
) -> Result<Vec<Reconciliation>, BillingError> {
    let meters = with_retries(|| stripe.list_meters()).await?;
    struct DeliveredPeriod {
        customer: String,
        event_name: String,
        period_start: DateTime<Utc>,
        period_end: DateTime<Utc>,
        undelivered: i64,
    }
    let periods = sqlx::query_as!(
        DeliveredPeriod,
        r#"SELECT d.stripe_customer_id AS "customer!", d.event_name AS "event_name!",
                d.period_start AS "period_start!: _", d.period_end AS "period_end!: _",
                coalesce((SELECT sum(e.quantity) FROM meter_event_outbox o JOIN usage_events e ON e.id = o.usage_event_id
                          WHERE o.user_id = d.user_id AND o.status <> 'delivered' AND e.event_type = d.event_name
                            AND e.occurred_at >= d.period_start AND e.occurred_at < d.period_end), 0)::bigint
                AS "undelivered!"
         FROM (SELECT DISTINCT user_id, stripe_customer_id, event_name, period_start, period_end
               FROM meter_deliveries WHERE status = 'delivered' AND period_end > $1) AS d
         ORDER BY d.stripe_customer_id, d.event_name, d.period_start"#,
        since as _
    )
    .fetch_all(pool)
    .await?;
    progress(Progress::Total(periods.len()));
    let mut results = Vec::with_capacity(periods.len());
    for DeliveredPeriod { customer, event_name, period_start, period_end, undelivered } in periods {
        let window_start = period_start.timestamp().div_euclid(60) * 60;
        let window_end = (period_end.timestamp() + 59).div_euclid(60) * 60;
        let delivered = sqlx::query_scalar!(
            r#"SELECT coalesce(sum(quantity), 0)::bigint AS "delivered!" FROM meter_deliveries
             WHERE status = 'delivered' AND stripe_customer_id = $1 AND event_name = $2
               AND event_timestamp >= to_timestamp($3) AND event_timestamp < to_timestamp($4)"#,
            &customer,
            &event_name,
            window_start as f64,
            window_end as f64
        )
        .fetch_one(pool)
        .await?;
        let held = match meters.iter().find(|m| m.event_name == event_name) {
            Some(meter) => with_retries(|| stripe.meter_usage(&meter.id, &customer, window_start, window_end)).await,
            None => Ok(0),
        };
        let (stripe_held, error) = match held {
            Ok(held) => (Some(held), None),
            Err(err) => (None, Some(err.to_string())),
        };
        results.push(Reconciliation {
            customer,
            event_name,
            period_start,
            period_end,
            delivered,
            stripe: stripe_held,
            error,
            undelivered,
        });
        progress(Progress::Done);
    }
    Ok(results)
}

/// One metered line of one Stripe invoice against Tally's deliveries for its period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvoiceCheck {
    pub invoice: String,
    /// Stripe's status of the invoice when last seen (`draft` until it is finalized, then `open`, `paid`, ...).
    pub invoice_status: Option<String>,
    pub customer: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The line's quantity: what Stripe billed.
    pub invoiced: i64,
    /// What Tally delivered stamped inside the period: what Stripe should have billed.
    pub delivered: i64,
    /// Usage of this period that missed its invoice and was billed on the next one instead (not a difference).
    pub moved_to_next: i64,
    /// Stamped inside the period with an outcome not known yet: Stripe may or may not have counted it.
    pub uncertain: i64,
    /// Recorded in the period and not delivered yet (waiting, failed or expired).
    pub undelivered: i64,
}

impl InvoiceCheck {
    pub fn matches(&self) -> bool {
        self.invoiced == self.delivered
    }

    /// Why the line differs, and what the operator should do, or `None` when it matches.
    pub fn reason(&self) -> Option<String> {
        if self.matches() {
            return None;
        }
        let draft = self.invoice_status.as_deref() == Some("draft");
        let mut reasons = Vec::new();
        if draft {
            reasons.push("the invoice is still a draft: Stripe adds usage until it finalizes it".to_owned());
        }
        if self.uncertain > 0 {
            reasons.push(format!(
                "{} units are uncertain (the worker settles them from Stripe's meter summaries)",
                self.uncertain
            ));
        }
        if self.invoiced < self.delivered && !draft {
            reasons.push(
                "Stripe billed less than Tally delivered in this period: deliveries reached Stripe after the invoice \
                 was finalized (is STRIPE_INVOICE_GRACE_MINUTES longer than the account's finalization grace?)"
                    .to_owned(),
            );
        }
        if self.invoiced > self.delivered && self.uncertain == 0 {
            reasons.push(
                "Stripe billed usage Tally has no delivery for: meter events sent by something else, or a second \
                 subscription reading the same meter"
                    .to_owned(),
            );
        }
        if self.undelivered > 0 {
            reasons.push(format!("{} units recorded in the period are not delivered yet", self.undelivered));
        }
        Some(reasons.join("; "))
    }
}

/// Which invoice lines [`invoices`] compares.
#[derive(Debug, Clone, Copy)]
pub struct InvoiceFilter<'a> {
    /// Lines of periods that end after this.
    pub since: DateTime<Utc>,
    /// The meter's event name whose deliveries are compared (all of the customer's when `None`).
    pub event_name: Option<&'a str>,
    /// Only lines of this price (the metered price Tally bills with), so flat-fee lines of the same subscription
    /// are not compared with usage.
    pub price: Option<&'a str>,
    /// Only this invoice's lines.
    pub invoice: Option<&'a str>,
}

/// Every metered invoice line `filter` selects, against Tally's deliveries stamped in the line's period. The one
/// comparison of invoices with Tally: `tally stripe reconcile`, `tally stripe status` and the invoice webhooks'
/// log all use it.
pub async fn invoices<'e>(
    db: impl sqlx::PgExecutor<'e>,
    filter: &InvoiceFilter<'_>,
) -> Result<Vec<InvoiceCheck>, sqlx::Error> {
    sqlx::query_as!(
        InvoiceCheck,
        r#"SELECT l.stripe_invoice_id AS invoice, l.invoice_status, l.stripe_customer_id AS customer,
                l.period_start AS "period_start: _", l.period_end AS "period_end: _", l.quantity AS invoiced,
                coalesce((SELECT sum(d.quantity) FROM meter_deliveries d
                          WHERE d.stripe_customer_id = l.stripe_customer_id AND ($2::text IS NULL OR d.event_name = $2)
                            AND d.status = 'delivered'
                            AND d.event_timestamp >= l.period_start AND d.event_timestamp < l.period_end), 0)::bigint
                    AS "delivered!",
                coalesce((SELECT sum(d.quantity) FROM meter_deliveries d
                          WHERE d.stripe_customer_id = l.stripe_customer_id AND ($2::text IS NULL OR d.event_name = $2)
                            AND d.late_from_period_start = l.period_start
                            AND d.late_from_period_end = l.period_end), 0)::bigint AS "moved_to_next!",
                coalesce((SELECT sum(d.quantity) FROM meter_deliveries d
                          WHERE d.stripe_customer_id = l.stripe_customer_id AND ($2::text IS NULL OR d.event_name = $2)
                            AND d.status = 'uncertain'
                            AND d.event_timestamp >= l.period_start AND d.event_timestamp < l.period_end), 0)::bigint
                    AS "uncertain!",
                coalesce((SELECT sum(e.quantity) FROM meter_event_outbox o JOIN usage_events e ON e.id = o.usage_event_id
                          WHERE o.user_id = l.user_id AND o.status NOT IN ('delivered', 'uncertain')
                            AND ($2::text IS NULL OR e.event_type = $2)
                            AND e.occurred_at >= l.period_start AND e.occurred_at < l.period_end), 0)::bigint
                    AS "undelivered!"
         FROM invoice_lines l
         WHERE l.period_end > $1 AND ($3::text IS NULL OR l.stripe_price_id = $3)
           AND ($4::text IS NULL OR l.stripe_invoice_id = $4)
         ORDER BY l.stripe_customer_id, l.period_start, l.stripe_invoice_id"#,
        filter.since as _,
        filter.event_name,
        filter.price,
        filter.invoice
    )
    .fetch_all(db)
    .await
}
