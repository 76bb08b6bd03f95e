//! The UsageMeter: `used / limit` for the current period and a bar that turns red at 90 %.

use leptos::prelude::*;

use crate::i18n::{td, td_string, use_i18n};
use crate::usage::meter::MeterFill;

/// Shows `used / limit` with a progress bar; with no limit, only the number. Rendered on the server; the live
/// island re-reads it from there when the total changes.
#[component]
pub fn UsageMeter(
    /// Units used in the period.
    used: i64,
    /// The period's limit, `None` for unlimited.
    limit: Option<i64>,
) -> impl IntoView {
    let fill = MeterFill::new(used, limit);
    let locale = use_i18n().get_locale_untracked();
    let thousands = crate::format::thousands;
    let limit_text = limit.map(thousands).unwrap_or_else(|| td_string!(locale, no_limit).into());
    let label_id = "usage-meter-label";
    let reached = crate::usage::meter::limit_reached(used, limit);
    let bar = fill.zip(limit).map(|(fill, limit)| {
        let value_text = td_string!(
            locale,
            meter_value_text,
            used = thousands(used),
            limit = thousands(limit),
            percent = fill.percent
        )
        .to_string();
        view! {
            <div
                class="usage-meter__track"
                role="progressbar"
                aria-labelledby=label_id
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
    view! {
        <section class="usage-meter" data-testid="usage-meter" aria-labelledby=label_id>
            <h2 class="usage-meter__label" id=label_id>{td!(locale, meter_label)}</h2>
            <p class="usage-meter__numbers">
                <span class="usage-meter__used" data-testid="usage-used">{thousands(used)}</span>
                " / "
                <span class="usage-meter__limit" data-testid="usage-limit">{limit_text}</span>
            </p>
            {reached.then(|| view! {
                <p class="usage-meter__reached" role="status" data-testid="limit-reached">{td!(locale, limit_reached)}</p>
            })}
            {bar}
        </section>
    }
}
