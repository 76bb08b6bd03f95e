//! `tally stripe setup`: the Stripe objects Tally needs.

use crate::billing::error::BillingError;
#[cfg(doc)]
use crate::billing::stripe::Meter;
use crate::billing::stripe::{NewMeteredPrice, StripeClient};

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

/// Finds or creates the meter and the metered price. An existing meter for the event name is used only if it bills
/// Tally's events right (sum, customer by id, the value key, raw events: see [`Meter::differences`]); otherwise
/// setup stops and says what differs. Lookups come first, so a second run creates nothing; the
/// Idempotency-Keys are derived from the names, so a run interrupted between product and price reuses the
/// product when it is run again.
pub async fn setup(stripe: &StripeClient, plan: &SetupPlan) -> Result<SetupResult, BillingError> {
    let existing = stripe.list_meters().await?;
    let (meter_id, meter_created) = match existing.into_iter().find(|m| m.event_name == plan.event_name) {
        Some(meter) => {
            let differences = meter.differences();
            if !differences.is_empty() {
                return Err(BillingError::Invalid(format!(
                    "Stripe's meter {} for event {:?} would not bill Tally's usage correctly: {}. A meter cannot be \
                     changed once created: deactivate it in Stripe's dashboard and choose another event name \
                     (--event-name, TALLY_EVENT_TYPES), then run setup again.",
                    meter.id,
                    plan.event_name,
                    differences.join("; ")
                )));
            }
            (meter.id, false)
        }
        None => {
            let key = format!("tally-setup-meter-{}", plan.event_name);
            let meter = stripe.create_meter(&plan.meter_display_name, &plan.event_name, &key).await?;
            (meter.id, true)
        }
    };
    if let Some(price) = stripe.find_price(&plan.lookup_key).await? {
        return Ok(SetupResult {
            meter_id,
            meter_created,
            price_id: price.id,
            product_id: price.product,
            price_created: false,
        });
    }
    let product_key = format!("tally-setup-product-{}", plan.lookup_key);
    let product = stripe.create_product(&plan.product_name, &product_key).await?;
    let price = NewMeteredPrice {
        product: &product,
        meter: &meter_id,
        currency: &plan.currency,
        unit_amount_decimal: &plan.unit_amount_decimal,
        lookup_key: &plan.lookup_key,
        nickname: &plan.meter_display_name,
    };
    let price_key = format!("tally-setup-price-{}", plan.lookup_key);
    let price = stripe.create_metered_price(&price, &price_key).await?;
    Ok(SetupResult { meter_id, meter_created, price_id: price.id, product_id: product, price_created: true })
}
