//! The UsageMeter: one meter's `used / limit` for the current period, a bar that turns red at 90 %, and what the
//! period costs so far with a forecast to its end.

use leptos::prelude::*;

use crate::format::thousands;
use crate::i18n::{money, td, td_string, use_i18n};
use crate::usage::meter::MeterFill;
use crate::usage::UsageSummary;

/// Shows one meter: its label, `used / limit` with a progress bar (with no limit, only the number), the cost so
/// far and, once the period is old enough, the forecast with its assumption. Rendered on the server; the live
/// island re-reads it from there when a total changes (`data-used` and `data-period` tell it what is shown).
#[component]
pub fn UsageMeter(summary: UsageSummary) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    let (used, limit) = (summary.used, summary.limit);
    let fill = MeterFill::new(used, limit);
    let (label, unit) = summary.label.words(crate::i18n::lang(locale));
    let (label, unit) = (label.to_owned(), unit.to_owned());
    let limit_text = limit.map(thousands).unwrap_or_else(|| td_string!(locale, no_limit).into());
    let label_id = format!("usage-meter-label-{}", summary.event_type);
    let reached = crate::usage::meter::limit_reached(used, limit);
    let bar = fill.zip(limit).map(|(fill, limit)| {
        let value_text = td_string!(
            locale,
            meter_value_text,
            used = thousands(used),
            limit = thousands(limit),
            unit = unit.clone(),
            percent = fill.percent
        )
        .to_string();
        view! {
            <div
                class="usage-meter__track"
                role="progressbar"
                aria-labelledby=label_id.clone()
                aria-valuemin="0"
                // Within [0, max] as ARIA requires; the value text says how far past it.
                aria-valuenow=used.clamp(0, limit.max(0)).to_string()
                aria-valuemax=limit.to_string()
                aria-valuetext=value_text
                data-testid="usage-bar"
            >
                <div
                    class="usage-meter__bar"
                    class:usage-meter__bar--critical=fill.critical
                    data-critical=fill.critical.to_string()
                    style=format!("width: {}", fill.css_width())
                ></div>
            </div>
        }
    });
    let last_day = crate::i18n::day(locale, &summary.period_last_day);
    let cost = summary.cost.map(|cost| {
        let so_far = money(locale, cost.so_far, &cost.currency);
        let capped = cost.forecast_capped;
        let forecast = cost.forecast.zip(cost.forecast_used).map(|(amount, forecast_used)| {
            let (amount_text, used) = (money(locale, amount, &cost.currency), thousands(forecast_used));
            let text = if capped {
                td_string!(
                    locale,
                    meter_forecast_capped,
                    cost = amount_text,
                    day = last_day.clone(),
                    used = used,
                    unit = unit.clone()
                )
                .to_string()
            } else {
                td_string!(
                    locale,
                    meter_forecast,
                    cost = amount_text,
                    day = last_day.clone(),
                    used = used,
                    unit = unit.clone()
                )
                .to_string()
            };
            view! {
                <p class="usage-meter__forecast muted" data-testid="usage-forecast" data-amount=amount.to_string()>
                    {text}
                </p>
            }
        });
        view! {
            <p class="usage-meter__cost" data-testid="usage-cost" data-amount=cost.so_far.to_string()>
                {td_string!(locale, meter_cost, cost = so_far).to_string()}
            </p>
            {forecast}
        }
    });
    // The period as the stream's JSON writes it (serde's RFC 3339), so the island can compare the two as text.
    let period = serde_json::to_value(summary.period_start).ok().and_then(|v| v.as_str().map(str::to_owned));
    view! {
        <section
            class="usage-meter"
            data-testid="usage-meter"
            aria-labelledby=label_id.clone()
            data-meter=summary.event_type.clone()
            data-used=used.to_string()
            data-period=period
        >
            <h2 class="usage-meter__label" id=label_id.clone()>{td_string!(locale, meter_label, label = label).to_string()}</h2>
            <p class="usage-meter__numbers">
                <span class="usage-meter__used" data-testid="usage-used">{thousands(used)}</span>
                " / "
                <span class="usage-meter__limit" data-testid="usage-limit">{limit_text}</span>
                " "
                <span class="usage-meter__unit">{unit.clone()}</span>
            </p>
            {reached.then(|| view! {
                <p class="usage-meter__reached" role="status" data-testid="limit-reached">{td!(locale, limit_reached)}</p>
            })}
            {bar}
            {cost}
        </section>
    }
}
