//! `tally stripe setup`: the Stripe objects Tally needs.

use crate::billing::error::BillingError;
#[cfg(doc)]
use crate::billing::stripe::Meter;
use crate::billing::stripe::{NewMeteredPrice, Price, StripeClient};

/// What `tally stripe setup` creates (or finds).
#[derive(Debug, Clone)]
pub struct SetupPlan {
    /// The meter's event name: the usage event type.
    pub event_name: String,
    pub meter_display_name: String,
    pub product_name: String,
    /// The price to create when none has `lookup_key` yet (`meters.toml`): Stripe multiplies the period's sum by
    /// it and rounds the line once. `None`: setup only finds one.
    pub price: Option<crate::pricing::Price>,
    /// Finds the price again on the next run.
    pub lookup_key: String,
}

/// What setup found or created, and whether this run created it.
#[derive(Debug, Clone)]
pub struct SetupResult {
    pub meter_id: String,
    pub meter_created: bool,
    /// The price, as Stripe has it (what `meter_prices` keeps).
    pub price: Price,
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
                     (event_type in meters.toml), then run setup again.",
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
        let meter = price.recurring.as_ref().and_then(|r| r.meter.as_deref());
        if meter != Some(meter_id.as_str()) {
            return Err(BillingError::Invalid(format!(
                "Stripe's price {} (lookup key {:?}) bills meter {}, not {meter_id} of event {:?}: give this meter \
                 another lookup_key in meters.toml, or move the key in Stripe's dashboard",
                price.id,
                plan.lookup_key,
                meter.unwrap_or("none"),
                plan.event_name
            )));
        }
        return Ok(SetupResult { meter_id, meter_created, price, price_created: false });
    }
    let configured = plan.price.as_ref().ok_or_else(|| {
        BillingError::Invalid(format!(
            "no Stripe price has lookup key {:?} and meters.toml gives {:?} no price to create one",
            plan.lookup_key, plan.event_name
        ))
    })?;
    let unit_amount_decimal = match (configured.billing_scheme.as_str(), &configured.unit_amount_decimal) {
        ("per_unit", Some(amount)) if configured.transform_quantity.is_none() => amount,
        _ => {
            return Err(BillingError::Invalid(format!(
                "setup creates per-unit prices only; create the tiered or transformed price of {:?} in Stripe's \
                 dashboard with lookup key {:?} (setup then finds it and Tally reads it)",
                plan.event_name, plan.lookup_key
            )))
        }
    };
    let product_key = format!("tally-setup-product-{}", plan.lookup_key);
    let product = stripe.create_product(&plan.product_name, &product_key).await?;
    let new_price = NewMeteredPrice {
        product: &product,
        meter: &meter_id,
        currency: &configured.currency,
        unit_amount_decimal,
        lookup_key: &plan.lookup_key,
        nickname: &plan.meter_display_name,
    };
    let price_key = format!("tally-setup-price-{}", plan.lookup_key);
    let price = stripe.create_metered_price(&new_price, &price_key).await?;
    Ok(SetupResult { meter_id, meter_created, price, price_created: true })
}
