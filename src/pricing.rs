//! What usage costs: the one owner of the price arithmetic the meter's "so far", its forecast, money alerts and the
//! allowance API share, written to give the number Stripe's invoice will give for the same usage.
//!
//! Stripe's rules, as its documentation states them ("Decimal amounts for pricing", the Price object):
//! - amounts are in the currency's minor unit (yen for JPY, which has none); `unit_amount_decimal` may have up to
//!   12 decimal places, so ¥0.05 per 1,000 tokens is `0.00005` per token;
//! - the period's usage is summed first and the line's amount is computed from the sum, and rounding happens once,
//!   on the line, to the nearest minor unit (halves are rounded up here: Stripe documents "nearest" without
//!   naming a tie rule);
//! - `transform_quantity` divides the sum and rounds the quotient `up` or `down` before the price applies;
//! - tiered prices: `volume` prices the whole quantity at the tier it reaches, `graduated` prices each tier's
//!   share at its own rate; each tier may add a flat amount;
//! - a negative period sum is billed as 0.
//!
//! Integer arithmetic only (picounits of the minor unit in `i128`): a billing number is never rounded by a float.

use serde::{Deserialize, Serialize};

/// Decimal places `unit_amount_decimal` may have (Stripe's limit), and the fixed-point scale used here.
const PLACES: u32 = 12;
const SCALE: i128 = 10_i128.pow(PLACES);

/// A metered price, in Stripe's own field names, so both Stripe's Price JSON and `meters.toml` deserialize into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Lower-case ISO 4217.
    pub currency: String,
    /// `per_unit` (default) or `tiered`.
    #[serde(default = "per_unit")]
    pub billing_scheme: String,
    /// Per unit, in the minor unit (for `per_unit`).
    #[serde(default)]
    pub unit_amount_decimal: Option<String>,
    /// `graduated` or `volume` (for `tiered`).
    #[serde(default)]
    pub tiers_mode: Option<String>,
    #[serde(default)]
    pub tiers: Option<Vec<Tier>>,
    #[serde(default)]
    pub transform_quantity: Option<TransformQuantity>,
}

fn per_unit() -> String {
    "per_unit".into()
}

/// One tier of a tiered price; `up_to` `None` is the last ("inf").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    #[serde(default, deserialize_with = "up_to")]
    pub up_to: Option<i64>,
    #[serde(default)]
    pub unit_amount_decimal: Option<String>,
    #[serde(default)]
    pub flat_amount_decimal: Option<String>,
}

/// Stripe answers `null` for the last tier and takes `"inf"` when creating one; `meters.toml` may write either.
fn up_to<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum UpTo {
        Number(i64),
        Text(String),
    }
    match Option::<UpTo>::deserialize(deserializer)? {
        None => Ok(None),
        Some(UpTo::Number(n)) => Ok(Some(n)),
        Some(UpTo::Text(t)) if t == "inf" => Ok(None),
        Some(UpTo::Text(t)) => Err(serde::de::Error::custom(format!("up_to must be a number or \"inf\", not {t:?}"))),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformQuantity {
    pub divide_by: i64,
    /// `up` or `down`.
    pub round: String,
}

/// Why a price cannot be used to compute costs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PriceError(String);

/// A price checked once, ready to compute costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub currency: String,
    scheme: Scheme,
    transform: Option<(i64, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    PerUnit(i128),
    Tiered { graduated: bool, tiers: Vec<(Option<i64>, i128, i128)> },
}

impl Price {
    /// Checks the price and makes it a [`Rate`].
    pub fn rate(&self) -> Result<Rate, PriceError> {
        let currency = self.currency.trim().to_ascii_lowercase();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(PriceError(format!("currency must be a three-letter ISO code, not {:?}", self.currency)));
        }
        let scheme = match self.billing_scheme.as_str() {
            "per_unit" => {
                let amount = self.unit_amount_decimal.as_deref().ok_or_else(|| {
                    PriceError("a per_unit price needs unit_amount_decimal (in the currency's minor unit)".into())
                })?;
                Scheme::PerUnit(decimal(amount)?)
            }
            "tiered" => {
                let graduated = match self.tiers_mode.as_deref() {
                    Some("graduated") => true,
                    Some("volume") => false,
                    other => return Err(PriceError(format!("tiers_mode must be graduated or volume, not {other:?}"))),
                };
                let tiers = self.tiers.as_deref().unwrap_or_default();
                if tiers.is_empty() || tiers.last().is_some_and(|t| t.up_to.is_some()) {
                    return Err(PriceError("a tiered price needs tiers, the last one up to \"inf\"".into()));
                }
                let mut checked = Vec::with_capacity(tiers.len());
                let mut previous = 0;
                for tier in tiers {
                    if let Some(up_to) = tier.up_to {
                        if up_to <= previous {
                            return Err(PriceError("tiers' up_to must increase".into()));
                        }
                        previous = up_to;
                    }
                    let unit = tier.unit_amount_decimal.as_deref().map(decimal).transpose()?.unwrap_or(0);
                    let flat = tier.flat_amount_decimal.as_deref().map(decimal).transpose()?.unwrap_or(0);
                    checked.push((tier.up_to, unit, flat));
                }
                Scheme::Tiered { graduated, tiers: checked }
            }
            other => return Err(PriceError(format!("billing_scheme must be per_unit or tiered, not {other:?}"))),
        };
        let transform = match &self.transform_quantity {
            None => None,
            Some(t) if t.divide_by > 0 && (t.round == "up" || t.round == "down") => {
                Some((t.divide_by, t.round == "up"))
            }
            Some(t) => {
                return Err(PriceError(format!(
                    "transform_quantity needs a positive divide_by and round up or down, not {} / {:?}",
                    t.divide_by, t.round
                )))
            }
        };
        Ok(Rate { currency, scheme, transform })
    }
}

impl Rate {
    /// What `quantity` (a period's sum) costs on one invoice line, in the currency's minor unit.
    pub fn cost(&self, quantity: i64) -> i64 {
        let mut quantity = i128::from(quantity.max(0));
        if let Some((divide_by, up)) = self.transform {
            let divide_by = i128::from(divide_by);
            quantity = if up { (quantity + divide_by - 1) / divide_by } else { quantity / divide_by };
        }
        let exact = match &self.scheme {
            Scheme::PerUnit(unit) => quantity * unit,
            Scheme::Tiered { graduated: false, tiers } => {
                let (_, unit, flat) = tiers
                    .iter()
                    .find(|(up_to, ..)| up_to.is_none_or(|up_to| quantity <= i128::from(up_to)))
                    .copied()
                    .unwrap_or((None, 0, 0));
                quantity * unit + flat
            }
            Scheme::Tiered { graduated: true, tiers } => {
                let (mut total, mut floor) = (0, 0_i128);
                for (up_to, unit, flat) in tiers {
                    if quantity <= floor && floor > 0 {
                        break;
                    }
                    let ceiling = up_to.map_or(quantity, |u| quantity.min(i128::from(u)));
                    total += (ceiling - floor).max(0) * unit + flat;
                    floor = up_to.map_or(i128::MAX, i128::from);
                }
                total
            }
        };
        // Nearest minor unit, halves up; saturating, as no i64 amount is larger.
        i64::try_from((exact + SCALE / 2) / SCALE).unwrap_or(i64::MAX)
    }

    /// The price of one unit without rounding, in the minor unit, as Stripe writes it (`"0.00005"`): for per-unit
    /// prices without a transform, the rate a person reads next to the cost.
    pub fn unit_amount(&self) -> Option<String> {
        match (&self.scheme, self.transform) {
            (Scheme::PerUnit(unit), None) => Some(plain(*unit)),
            _ => None,
        }
    }
}

/// A decimal string of the minor unit (`"0.00005"`, `"3"`) in picounits; at most 12 places, not negative.
fn decimal(text: &str) -> Result<i128, PriceError> {
    let refuse = || PriceError(format!("{text:?} is not a non-negative decimal with at most {PLACES} places"));
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && fraction.is_empty()
        || fraction.len() > PLACES as usize
        || !whole.chars().chain(fraction.chars()).all(|c| c.is_ascii_digit())
        || whole.len() > 18
    {
        return Err(refuse());
    }
    let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| refuse())? };
    let fraction_value: i128 = if fraction.is_empty() { 0 } else { fraction.parse().map_err(|_| refuse())? };
    Ok(whole * SCALE + fraction_value * 10_i128.pow(PLACES - fraction.len() as u32))
}

/// Picounits back to the shortest decimal text.
fn plain(picounits: i128) -> String {
    let (whole, fraction) = (picounits / SCALE, picounits % SCALE);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:012}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A linear forecast of the period's quantity at its end: the usage so far, at the pace of the time so far. `None`
/// while less than a tenth of the period has passed, when one busy hour would say too much about the month.
pub fn forecast_quantity(used: i64, elapsed_seconds: i64, period_seconds: i64) -> Option<i64> {
    if period_seconds <= 0 || elapsed_seconds <= 0 || elapsed_seconds * 10 < period_seconds {
        return None;
    }
    if elapsed_seconds >= period_seconds {
        return Some(used.max(0));
    }
    let projected = i128::from(used.max(0)) * i128::from(period_seconds) / i128::from(elapsed_seconds);
    Some(i64::try_from(projected).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_unit(amount: &str) -> Rate {
        Price {
            currency: "jpy".into(),
            billing_scheme: "per_unit".into(),
            unit_amount_decimal: Some(amount.into()),
            tiers_mode: None,
            tiers: None,
            transform_quantity: None,
        }
        .rate()
        .unwrap()
    }

    #[test]
    fn the_line_is_rounded_once_to_the_nearest_yen() {
        let rate = per_unit("0.00005"); // ¥0.05 per 1,000 tokens
        assert_eq!(rate.cost(0), 0);
        assert_eq!(rate.cost(9_999), 0); // ¥0.49995
        assert_eq!(rate.cost(10_000), 1); // ¥0.5: halves up
        assert_eq!(rate.cost(85_600), 4); // ¥4.28
        assert_eq!(rate.cost(1_000_000), 50);
        // 1,000 calls of 999 tokens: rounding each call would bill ¥0 a call; the line rounds ¥49.95 once.
        assert_eq!(rate.cost(999 * 1_000), 50);
        assert_eq!(rate.cost(-5), 0, "a negative period sum is billed as 0");
    }

    #[test]
    fn transform_quantity_rounds_the_quotient_before_the_price() {
        let mut price = Price {
            currency: "usd".into(),
            billing_scheme: "per_unit".into(),
            unit_amount_decimal: Some("5".into()),
            tiers_mode: None,
            tiers: None,
            transform_quantity: Some(TransformQuantity { divide_by: 1_000, round: "up".into() }),
        };
        assert_eq!(price.rate().unwrap().cost(1_001), 10);
        price.transform_quantity = Some(TransformQuantity { divide_by: 1_000, round: "down".into() });
        assert_eq!(price.rate().unwrap().cost(1_999), 5);
    }

    #[test]
    fn tiers_price_volume_and_graduated_quantities() {
        let tiers = vec![
            Tier { up_to: Some(100), unit_amount_decimal: Some("0".into()), flat_amount_decimal: None },
            Tier { up_to: Some(1_000), unit_amount_decimal: Some("2".into()), flat_amount_decimal: Some("10".into()) },
            Tier { up_to: None, unit_amount_decimal: Some("1".into()), flat_amount_decimal: None },
        ];
        let price = |mode: &str| Price {
            currency: "jpy".into(),
            billing_scheme: "tiered".into(),
            unit_amount_decimal: None,
            tiers_mode: Some(mode.into()),
            tiers: Some(tiers.clone()),
            transform_quantity: None,
        };
        let graduated = price("graduated").rate().unwrap();
        assert_eq!(graduated.cost(50), 0);
        assert_eq!(graduated.cost(150), 50 * 2 + 10);
        assert_eq!(graduated.cost(1_500), 900 * 2 + 10 + 500);
        let volume = price("volume").rate().unwrap();
        assert_eq!(volume.cost(50), 0);
        assert_eq!(volume.cost(150), 150 * 2 + 10);
        assert_eq!(volume.cost(1_500), 1_500);
    }

    #[test]
    fn prices_are_read_from_stripes_json() {
        let json = serde_json::json!({
            "id": "price_1", "object": "price", "currency": "jpy", "billing_scheme": "per_unit",
            "unit_amount": null, "unit_amount_decimal": "0.00005", "tiers_mode": null, "transform_quantity": null,
            "recurring": {"usage_type": "metered", "meter": "mtr_1"}
        });
        let price: Price = serde_json::from_value(json).unwrap();
        assert_eq!(price.rate().unwrap().cost(85_600), 4);
        assert_eq!(price.rate().unwrap().unit_amount().as_deref(), Some("0.00005"));
    }

    #[test]
    fn malformed_prices_are_refused_with_a_reason() {
        for bad in ["-1", "1.0000000000001", "abc", "", "."] {
            let mut price: Price = serde_json::from_value(serde_json::json!({"currency": "jpy"})).unwrap();
            price.unit_amount_decimal = Some(bad.into());
            assert!(price.rate().is_err(), "{bad:?}");
        }
        let no_amount: Price = serde_json::from_value(serde_json::json!({"currency": "jpy"})).unwrap();
        assert!(no_amount.rate().unwrap_err().to_string().contains("unit_amount_decimal"));
    }

    #[test]
    fn forecasts_wait_for_a_tenth_of_the_period() {
        let day = 86_400;
        assert_eq!(forecast_quantity(1_000, 2 * day, 30 * day), None);
        assert_eq!(forecast_quantity(1_000, 3 * day, 30 * day), Some(10_000));
        assert_eq!(forecast_quantity(1_000, 30 * day, 30 * day), Some(1_000));
    }
}
