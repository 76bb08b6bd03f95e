//! What a meter shows, from its counter: label, limit, cost so far and forecast. The one place where the catalog,
//! the price (Stripe's when Tally has read it, else the configured one) and the counters meet, for the dashboard,
//! the live stream, the summary and allowance APIs alike.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{MeterLabel, UsageCost, UsageSummary};
use crate::meters::Catalog;
use crate::pricing::{Price, Rate};

/// One meter's counters as the reads return them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterRow {
    pub event_type: String,
    /// The effective limit (`usage_limit_of`).
    pub limit: Option<i64>,
    pub used: i64,
    /// Stripe's price, from `meter_prices`.
    pub price: Option<serde_json::Value>,
}

/// The period every meter of a summary shares.
#[derive(Debug, Clone)]
pub struct PeriodFacts {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub first_day: String,
    pub last_day: String,
    pub timezone: String,
}

/// The rate `event_type` is billed at: Stripe's price when Tally has read one (a price it cannot read gives no
/// cost rather than a guess), else the price configured in the catalog.
pub fn rate_for(catalog: &Catalog, event_type: &str, stripe_price: Option<&serde_json::Value>) -> Option<Rate> {
    match stripe_price {
        Some(json) => match serde_json::from_value::<Price>(json.clone())
            .map_err(|e| e.to_string())
            .and_then(|p| p.rate().map_err(|e| e.to_string()))
        {
            Ok(rate) => Some(rate),
            Err(err) => {
                tracing::warn!(event_type, error = %err, "Stripe's price cannot be read; the meter shows no cost");
                None
            }
        },
        None => catalog.configured_rate(event_type).cloned(),
    }
}

/// The summary of one meter at `at`.
pub fn summarize(
    catalog: &Catalog,
    row: MeterRow,
    period: &PeriodFacts,
    warning_percent: i16,
    at: DateTime<Utc>,
) -> UsageSummary {
    let label = catalog
        .get(&row.event_type)
        .map(|meter| MeterLabel {
            en: meter.label.en.clone(),
            ja: meter.label.ja.clone(),
            unit_en: meter.unit.en.clone(),
            unit_ja: meter.unit.ja.clone(),
        })
        .unwrap_or_else(|| MeterLabel {
            en: row.event_type.clone(),
            ja: row.event_type.clone(),
            ..MeterLabel::default()
        });
    let cost = rate_for(catalog, &row.event_type, row.price.as_ref()).map(|rate| {
        let elapsed = (at - period.start).num_seconds();
        let length = (period.end - period.start).num_seconds();
        // The hard limit stops usage at the limit, so no pace takes the period past it (usage recorded past it
        // regardless, as AI calls are, is already in `used`).
        let forecast = crate::pricing::forecast_quantity(row.used, elapsed, length);
        let forecast_capped = forecast.zip(row.limit).is_some_and(|(f, limit)| f > limit.max(row.used));
        let forecast_used = forecast.map(|f| match row.limit {
            Some(limit) if forecast_capped => limit.max(row.used),
            _ => f,
        });
        UsageCost {
            currency: rate.currency.clone(),
            so_far: rate.cost(row.used),
            forecast: forecast_used.map(|used| rate.cost(used)),
            forecast_used,
            forecast_capped,
            unit_amount: rate.unit_amount(),
        }
    });
    UsageSummary {
        event_type: row.event_type,
        label,
        used: row.used,
        limit: row.limit,
        cost,
        warning_percent,
        period_start: period.start,
        period_end: period.end,
        period_first_day: period.first_day.clone(),
        period_last_day: period.last_day.clone(),
        timezone: period.timezone.clone(),
    }
}

/// The meters the dashboard shows: the primary one always, the others once the period has usage of them.
pub fn shown(catalog: &Catalog, summaries: Vec<UsageSummary>) -> Vec<UsageSummary> {
    let primary = &catalog.primary().event_type;
    summaries.into_iter().filter(|s| &s.event_type == primary || s.used > 0).collect()
}

/// The catalog's event types (all, or only `only`) and their default limits, as the reads bind them
/// (`unnest($types, $defaults)`).
pub fn meter_params(catalog: &Catalog, only: Option<&str>) -> (Vec<String>, Vec<Option<i64>>) {
    catalog
        .meters()
        .iter()
        .filter(|m| only.is_none_or(|only| only == m.event_type))
        .map(|m| (m.event_type.clone(), m.limit))
        .unzip()
}
