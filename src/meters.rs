//! The meter catalog: which event types Tally meters, and for each its label, unit, default limit and the price
//! it bills with when Stripe is off. One file (`meters.toml`, or `TALLY_METERS_FILE`) is its only source; without
//! the file Tally meters AI tokens alone, as [`Catalog::builtin`] says.
//!
//! Each event type is also the event name of its Stripe meter (`tally stripe setup` creates or checks one per
//! type). The first meter is the primary one: the dashboard always shows it, and it is what the AI route records.

use std::path::Path;

use serde::Deserialize;

use crate::pricing::{Price, Rate};

/// A text in both of Tally's languages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Words {
    pub en: String,
    pub ja: String,
}

/// One metered event type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSpec {
    /// The event type callers record, and the Stripe meter's event name.
    pub event_type: String,
    /// What the meter is called on the dashboard ("AI tokens").
    pub label: Words,
    /// What one unit is called ("tokens").
    pub unit: Words,
    /// Units per billing period for accounts without a limit of their own (`tally user set-limit`); absent for
    /// none.
    #[serde(default)]
    pub limit: Option<i64>,
    /// The price used when Stripe is off. With Stripe, the price `tally stripe setup` creates or finds is read
    /// from Stripe (and again on `price.updated`), and that one counts.
    #[serde(default)]
    pub price: Option<Price>,
    /// The Stripe price's lookup key, by which `tally stripe setup` finds it again (default `tally_<event_type>`).
    #[serde(default)]
    pub lookup_key: Option<String>,
}

impl MeterSpec {
    pub fn lookup_key(&self) -> String {
        self.lookup_key.clone().unwrap_or_else(|| format!("tally_{}", self.event_type))
    }
}

/// The configured meters, in order; never empty.
#[derive(Debug, Clone)]
pub struct Catalog {
    meters: Vec<MeterSpec>,
    rates: Vec<Option<Rate>>,
    types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(rename = "meter")]
    meters: Vec<MeterSpec>,
}

/// Why the catalog cannot be used; the message names the file and the meter.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CatalogError(String);

/// Event types are Stripe event names: short, and safe in URLs, CSV and logs.
fn valid_event_type(name: &str) -> bool {
    (1..=100).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Catalog {
    /// AI tokens alone: ¥0.05 per 1,000 tokens, 1,000,000 tokens per period.
    pub fn builtin() -> Catalog {
        Catalog::parse(include_str!("../meters.toml"), "meters.toml (built in)")
            .map(|full| Catalog::new(full.meters.into_iter().take(1).collect()).expect("the built-in meter is valid"))
            .expect("the built-in catalog parses")
    }

    /// The catalog in `path`.
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| CatalogError(format!("cannot read the meter catalog {}: {err}", path.display())))?;
        Catalog::parse(&text, &path.display().to_string())
    }

    /// The catalog written in `text` (TOML), `origin` naming it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|err| CatalogError(format!("{origin}: {}", err.message())))?;
        Catalog::new(file.meters).map_err(|CatalogError(why)| CatalogError(format!("{origin}: {why}")))
    }

    /// Checks and orders `meters`.
    pub fn new(meters: Vec<MeterSpec>) -> Result<Catalog, CatalogError> {
        if meters.is_empty() {
            return Err(CatalogError("at least one [[meter]] is needed".into()));
        }
        let mut rates = Vec::with_capacity(meters.len());
        for (index, meter) in meters.iter().enumerate() {
            let name = &meter.event_type;
            if !valid_event_type(name) {
                return Err(CatalogError(format!(
                    "meter {}: event_type {name:?} must be 1 to 100 letters, digits, '_', '-' or '.'",
                    index + 1
                )));
            }
            if meters[..index].iter().any(|m| &m.event_type == name) {
                return Err(CatalogError(format!("event_type {name:?} is configured twice")));
            }
            if meter.limit.is_some_and(|limit| limit <= 0) {
                return Err(CatalogError(format!("meter {name}: limit must be positive (leave it out for none)")));
            }
            let rate = meter
                .price
                .as_ref()
                .map(Price::rate)
                .transpose()
                .map_err(|err| CatalogError(format!("meter {name}: price: {err}")))?;
            rates.push(rate);
        }
        let types = meters.iter().map(|m| m.event_type.clone()).collect();
        Ok(Catalog { meters, rates, types })
    }

    pub fn meters(&self) -> &[MeterSpec] {
        &self.meters
    }

    /// The primary meter: always shown, recorded by the AI route.
    pub fn primary(&self) -> &MeterSpec {
        &self.meters[0]
    }

    pub fn get(&self, event_type: &str) -> Option<&MeterSpec> {
        self.meters.iter().find(|m| m.event_type == event_type)
    }

    pub fn contains(&self, event_type: &str) -> bool {
        self.get(event_type).is_some()
    }

    /// The event types, in order.
    pub fn event_types(&self) -> &[String] {
        &self.types
    }

    /// The limit of accounts without their own.
    pub fn default_limit(&self, event_type: &str) -> Option<i64> {
        self.get(event_type).and_then(|m| m.limit)
    }

    /// The configured price's rate (used when Stripe's price is not known).
    pub fn configured_rate(&self, event_type: &str) -> Option<&Rate> {
        let index = self.meters.iter().position(|m| m.event_type == event_type)?;
        self.rates[index].as_ref()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_and_the_builtin_catalog_are_valid() {
        let shipped = Catalog::parse(include_str!("../meters.toml"), "meters.toml").unwrap();
        assert!(shipped.meters().len() >= 2, "the shipped file shows a second meter");
        let builtin = Catalog::builtin();
        assert_eq!(builtin.event_types(), ["ai_token_consumed"]);
        assert_eq!(builtin.default_limit("ai_token_consumed"), Some(1_000_000));
        assert_eq!(builtin.configured_rate("ai_token_consumed").unwrap().cost(1_000_000), 50);
    }

    #[test]
    fn mistakes_are_named() {
        let twice = "[[meter]]\nevent_type='a'\nlabel={en='A',ja='A'}\nunit={en='u',ja='u'}\n".repeat(2);
        assert!(Catalog::parse(&twice, "f").unwrap_err().to_string().contains("configured twice"));
        let bad_price = "[[meter]]\nevent_type='a'\nlabel={en='A',ja='A'}\nunit={en='u',ja='u'}\n\
                         price={currency='jpy',unit_amount_decimal='x'}\n";
        assert!(Catalog::parse(bad_price, "f").unwrap_err().to_string().contains("meter a: price"));
        let unknown = "[[meter]]\nevent_type='a'\nlabel={en='A',ja='A'}\nunit={en='u',ja='u'}\nlimt=5\n";
        assert!(Catalog::parse(unknown, "f").unwrap_err().to_string().contains("limt"));
        assert!(Catalog::parse("", "f").is_err());
    }
}
