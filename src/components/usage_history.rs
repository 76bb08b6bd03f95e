//! Usage history: the per-day totals of a billing period as a bar chart (server-rendered SVG, readable without
//! JavaScript through native tooltips and a table), a period selector, and the CSV download.

use leptos::either::Either;
use leptos::prelude::*;

use crate::components::ErrorNotice;
use crate::error::AppError;
use crate::i18n::{td, td_string, use_i18n};
use crate::usage::{UsageHistory, EXPORT_PATH};

/// The history card. The selected period comes from `?period=` (a plain GET form picks it); the chart, its caption
/// and its table are a region, which the live island re-reads when the total changes.
#[component]
pub fn UsageHistoryCard(history: Result<UsageHistory, AppError>) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    view! {
        <section class="card history" aria-labelledby="history-title" data-testid="history">
            <h2 id="history-title">{td!(locale, history_title)}</h2>
            {match history {
                Ok(history) => Either::Left(view! { <History history /> }),
                Err(err) => Either::Right(view! { <ErrorNotice err /> }),
            }}
        </section>
    }
}

/// Height of the chart's drawing area, in SVG units; bars are 10 units wide with a gap of 2.
const CHART_HEIGHT: i64 = 120;

#[component]
fn History(history: UsageHistory) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    let format_thousands = crate::format::thousands;
    let selected_start = history.selected.period_start.to_rfc3339();
    let options = history
        .periods
        .iter()
        .map(|p| {
            let value = p.period_start.to_rfc3339();
            let selected = value == selected_start;
            let (first, last) = (p.first_day.clone(), p.last_day.clone());
            let range = move || crate::i18n::day_range(locale, &first, &last);
            view! { <option value=value selected=selected>{range}</option> }
        })
        .collect_view();
    let export = format!("{EXPORT_PATH}?period={}", urlencode(&selected_start));
    let total: i64 = history.days.iter().map(|d| d.quantity).sum();
    let (first_day, last_day, zone) =
        (history.selected.first_day.clone(), history.selected.last_day.clone(), history.timezone.clone());
    // The caption's words, shown above the chart and given to screen readers as the chart's text alternative.
    let caption = Signal::derive(move || {
        let locale = locale;
        td_string!(
            locale,
            history_caption,
            first = crate::i18n::day(locale, &first_day),
            last = crate::i18n::day(locale, &last_day),
            tz = zone.clone(),
            total = crate::format::thousands(total)
        )
        .to_string()
    });
    let chart = if total == 0 {
        Either::Left(view! { <p class="muted" data-testid="history-empty">{td!(locale, history_empty)}</p> })
    } else {
        Either::Right(view! { <Chart days=history.days.clone() caption /> })
    };
    view! {
        <form method="get" action="/" class="history__controls">
            <label for="history-period">{td!(locale, period)}</label>
            <select id="history-period" name="period" data-testid="history-period">
                {options}
            </select>
            <button type="submit" class="button-secondary" data-testid="history-show">{td!(locale, show)}</button>
            <a class="history__export" href=export download data-testid="export-csv">
                {td!(locale, download_csv)}
            </a>
        </form>
        <div data-region="history">
        <p class="history__caption" data-testid="history-caption">
            {caption}
        </p>
        {chart}
        <details class="history__table">
            <summary>{td!(locale, table)}</summary>
            <table class="data-table">
                <thead>
                    <tr>
                        <th scope="col">{td!(locale, day)}</th>
                        <th scope="col">{td!(locale, tokens)}</th>
                    </tr>
                </thead>
                <tbody>
                    {history
                        .days
                        .into_iter()
                        .map(|d| {
                            let day = move || crate::i18n::day(locale, &d.day);
                            view! { <tr><td>{day}</td><td class="numeric">{format_thousands(d.quantity)}</td></tr> }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </details>
        </div>
    }
}

#[component]
fn Chart(days: Vec<crate::usage::DayUsage>, caption: Signal<String>) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    let max = days.iter().map(|d| d.quantity).max().unwrap_or(0).max(1);
    let width = days.len() as i64 * 12;
    let bars = days
        .iter()
        .enumerate()
        .map(|(i, day)| {
            let height = (day.quantity * CHART_HEIGHT / max).max(if day.quantity > 0 { 1 } else { 0 });
            let label = {
                let (iso_day, quantity) = (day.day.clone(), day.quantity);
                move || {
                    let locale = locale;
                    let (day, tokens) = (crate::i18n::day(locale, &iso_day), crate::format::thousands(quantity));
                    td_string!(locale, history_bar_label, day, tokens).to_string()
                }
            };
            let title = label.clone();
            view! {
                <rect
                    class="history__bar"
                    x=(i as i64 * 12).to_string()
                    y=(CHART_HEIGHT - height).to_string()
                    width="10"
                    height=height.to_string()
                    tabindex="0"
                    role="img"
                    aria-label=label
                    data-day=day.day.clone()
                    data-quantity=day.quantity.to_string()
                >
                    <title>{title}</title>
                </rect>
            }
        })
        .collect_view();
    let (first_day, last_day) = (days.first().map(|d| d.day.clone()), days.last().map(|d| d.day.clone()));
    let first = move || crate::i18n::day(locale, first_day.as_deref().unwrap_or_default());
    let last = move || crate::i18n::day(locale, last_day.as_deref().unwrap_or_default());
    view! {
        <figure class="history__chart">
            <svg
                viewBox=format!("0 0 {width} {CHART_HEIGHT}")
                preserveAspectRatio="none"
                role="group"
                aria-label=caption
                data-testid="history-chart"
            >
                {bars}
            </svg>
            <figcaption class="history__axis">
                <span>{first}</span>
                // With JavaScript, hovering or focusing a bar names its day and value here (`islands::browser`).
                <span class="history__focus" aria-live="polite" data-testid="history-focus"></span>
                <span>{last}</span>
            </figcaption>
        </figure>
    }
}

/// Percent-encodes a query value (RFC 3339 times carry `+` and `:`).
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
