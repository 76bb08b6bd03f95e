//! Usage alerts: a notice for each threshold (80 / 90 / 100 % of a meter's limit) crossed this period and for each
//! alert the user set (in units or money) that was reached, the form that sets those, and where alerts are also
//! POSTed (a signed webhook).

use leptos::either::Either;
use leptos::prelude::*;

use crate::components::ErrorNotice;
use crate::format::thousands;
use crate::i18n::{money, td, td_string, use_i18n};
use crate::usage::{AddAlertRule, AlertRuleInfo, AlertsOverview, RemoveAlertRule, SetAlertWebhook};

/// Notices and webhook settings. The notices are a region: the live island re-reads them when the total changes,
/// so a crossing shows up at once.
#[component]
pub fn UsageAlerts(overview: AlertsOverview) -> impl IntoView {
    let save = ServerAction::<SetAlertWebhook>::new();
    let locale = use_i18n().get_locale_untracked();
    view! {
        <section class="card alerts" aria-labelledby="alerts-title" data-testid="alerts">
            <h2 id="alerts-title">{td!(locale, alerts_title)}</h2>
            <Alerts overview save />
        </section>
    }
}

#[component]
fn Alerts(overview: AlertsOverview, save: ServerAction<SetAlertWebhook>) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    let lang = crate::i18n::lang(locale);
    let words = |event_type: &str| -> (String, String) {
        match overview.meter(event_type) {
            Some(meter) => {
                let (label, unit) = meter.label.words(lang);
                (label.to_owned(), unit.to_owned())
            }
            None => (event_type.to_owned(), String::new()),
        }
    };
    let currency_of = |event_type: &str| overview.meter(event_type).and_then(|m| m.currency.clone());
    // What an alert the user set is "at": units, or money in its meter's currency.
    let amount_text = |rule: &AlertRuleInfo| match (rule.unit.as_str(), currency_of(&rule.event_type)) {
        ("money", Some(currency)) => money(locale, rule.amount, &currency),
        _ => format!("{} {}", thousands(rule.amount), words(&rule.event_type).1),
    };
    let tz = overview.timezone.clone();
    let mut notices: Vec<AnyView> = overview
        .alerts
        .iter()
        .map(|alert| {
            let level = match alert.threshold {
                100.. => "alerts__notice--full",
                90.. => "alerts__notice--critical",
                _ => "alerts__notice--warning",
            };
            let (label, unit) = words(&alert.event_type);
            let text = td_string!(
                locale,
                alert_notice,
                label = label,
                threshold = alert.threshold,
                used = thousands(alert.used),
                limit = thousands(alert.usage_limit),
                unit = unit,
                at = alert.crossed_local.clone(),
                tz = tz.clone()
            )
            .to_string();
            view! {
                <li
                    class=format!("alerts__notice {level}")
                    role="status"
                    data-testid="alert-notice"
                    data-threshold=alert.threshold.to_string()
                    data-meter=alert.event_type.clone()
                >
                    {text}
                </li>
            }
            .into_any()
        })
        .collect();
    for rule in overview.rules.iter().filter(|rule| rule.crossed_at.is_some()) {
        let (label, unit) = words(&rule.event_type);
        let cost = rule.cost.zip(currency_of(&rule.event_type)).map(|(cost, currency)| money(locale, cost, &currency));
        let used = format!("{} {unit}", thousands(rule.used.unwrap_or_default()));
        let text = td_string!(
            locale,
            alert_rule_notice,
            label = label,
            amount = amount_text(rule),
            used = cost.map_or(used.clone(), |cost| format!("{used}, {cost}")),
            at = rule.crossed_local.clone().unwrap_or_default(),
            tz = tz.clone()
        )
        .to_string();
        notices.push(
            view! {
                <li class="alerts__notice alerts__notice--rule" role="status" data-testid="alert-rule-notice">
                    {text}
                </li>
            }
            .into_any(),
        );
    }
    let notices = if notices.is_empty() {
        Either::Left(view! { <p class="muted" data-testid="no-alerts">{td!(locale, no_alerts)}</p> })
    } else {
        Either::Right(view! { <ul class="alerts__list">{notices}</ul> })
    };
    let add = ServerAction::<AddAlertRule>::new();
    let remove = ServerAction::<RemoveAlertRule>::new();
    let rules = overview
        .rules
        .iter()
        .map(|rule| {
            let text = format!("{}: {}", words(&rule.event_type).0, amount_text(rule));
            let (id, unit) = (rule.id.to_string(), rule.unit.clone());
            view! {
                <li class="alerts__rule" data-testid="alert-rule" data-unit=unit>
                    <span>{text}</span>
                    <ActionForm action=remove>
                        <input type="hidden" name="id" value=id />
                        <button type="submit" class="button-link" data-testid="alert-rule-remove">
                            {td!(locale, remove)}
                        </button>
                    </ActionForm>
                </li>
            }
        })
        .collect_view();
    let meter_options = overview
        .meters
        .iter()
        .map(|meter| {
            let label = meter.label.words(lang).0.to_owned();
            view! { <option value=meter.event_type.clone()>{label}</option> }
        })
        .collect_view();
    // Money alerts are offered when a meter has a price; its currency's sign is shown beside the choice.
    let currencies: Vec<String> = overview.meters.iter().filter_map(|m| m.currency.clone()).collect();
    let money_choice = (!currencies.is_empty()).then(|| {
        let sign = money(locale, 0, &currencies[0]).replace('0', "");
        view! { <option value="money">{td_string!(locale, alert_unit_money, sign = sign.trim().to_owned()).to_string()}</option> }
    });
    let set = view! {
        <div data-region="alerts">
            {notices}
            <ul class="alerts__rules" data-testid="alert-rules">{rules}</ul>
        </div>
        <ActionForm action=add attr:class="alerts__add">
            <label for="alert-amount">{td!(locale, alert_add_label)}</label>
            <div class="alerts__row">
                <select name="eventType" aria-label=td_string!(locale, alert_meter_label) data-testid="alert-meter">
                    {meter_options}
                </select>
                <input
                    id="alert-amount"
                    name="amount"
                    inputmode="decimal"
                    required
                    placeholder="50000"
                    data-testid="alert-amount"
                />
                <select name="unit" aria-label=td_string!(locale, alert_unit_label) data-testid="alert-unit">
                    <option value="units">{td!(locale, alert_unit_units)}</option>
                    {money_choice}
                </select>
                <button type="submit" data-testid="alert-add">{td!(locale, alert_add)}</button>
            </div>
            {move || add.value().get().and_then(Result::err).map(|err| view! { <ErrorNotice err /> })}
        </ActionForm>
    };
    let secret = overview.webhook_secret.filter(|_| overview.webhook_url.is_some());
    view! {
        {set}
        <ActionForm action=save attr:class="alerts__webhook">
            <label for="alert-url">{td!(locale, alert_url_label)}</label>
            <div class="alerts__row">
                <input
                    id="alert-url"
                    name="url"
                    type="url"
                    inputmode="url"
                    placeholder="https://example.com/tally-alerts"
                    value=overview.webhook_url.clone().unwrap_or_default()
                    data-testid="alert-url"
                />
                <button type="submit" data-testid="alert-url-save">
                    {td!(locale, save)}
                </button>
            </div>
            {move || {
                save.value()
                    .get()
                    .and_then(Result::err)
                    .map(|err| view! { <ErrorNotice err /> })
            }}
        </ActionForm>
        {secret
            .map(|secret| {
                view! {
                    <p class="alerts__secret">
                        {td!(locale, signing_secret)}
                        <code data-testid="alert-secret">{secret}</code>
                    </p>
                }
            })}
    }
}
