//! Usage alerts: a notice for each threshold (80 / 90 / 100 % of the limit) crossed this period, and where the
//! alerts are also POSTed (a signed webhook).

use leptos::either::Either;
use leptos::prelude::*;

use crate::components::ErrorNotice;
use crate::i18n::{td, use_i18n};
use crate::usage::{AlertsOverview, SetAlertWebhook};

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
    let notices = if overview.alerts.is_empty() {
        Either::Left(view! { <p class="muted" data-testid="no-alerts">{td!(locale, no_alerts)}</p> })
    } else {
        let timezone = overview.timezone.clone();
        Either::Right(view! {
            <ul class="alerts__list">
                {overview
                    .alerts
                    .into_iter()
                    .map(|alert| {
                        let level = match alert.threshold {
                            100.. => "alerts__notice--full",
                            90.. => "alerts__notice--critical",
                            _ => "alerts__notice--warning",
                        };
                        let threshold = alert.threshold;
                        let used = move || crate::format::thousands(alert.used);
                        let limit = move || crate::format::thousands(alert.usage_limit);
                        let at = alert.crossed_local.clone();
                        let at = move || at.clone();
                        let tz = timezone.clone();
                        let tz = move || tz.clone();
                        view! {
                            <li
                                class=format!("alerts__notice {level}")
                                role="status"
                                data-testid="alert-notice"
                                data-threshold=alert.threshold.to_string()
                            >
                                {td!(locale, alert_notice, threshold, used, limit, at, tz)}
                            </li>
                        }
                    })
                    .collect_view()}
            </ul>
        })
    };
    let secret = overview.webhook_secret.filter(|_| overview.webhook_url.is_some());
    view! {
        <div data-region="alerts">{notices}</div>
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
