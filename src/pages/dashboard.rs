//! `/`: the signed-in user's dashboard with the UsageMeter.
//!
//! Rendered on the server from one read ([`get_dashboard`]; a second only when `?period=` picks an older period
//! for the history). The [`LiveUpdates`] island keeps the parts marked `data-region` current by re-reading this
//! page; everything else is plain HTML: links, and forms that post to their server functions.

use leptos::either::EitherOf3;
use leptos::prelude::*;
use leptos_router::components::Redirect;
use leptos_router::hooks::use_query_map;

use crate::auth::Logout;
use crate::components::{ApiKeys, BillingHistory, ErrorNotice, UsageAlerts, UsageHistoryCard, UsageMeter};
use crate::dashboard::{get_dashboard, DashboardData};
use crate::error::AppError;
use crate::i18n::{td, td_string, use_i18n, Locale};
use crate::islands::{AiPrompt, LiveUpdates};
use crate::usage::{get_usage_history, UsageHistory, UsageSummary};

/// The dashboard; visitors without a session are sent to `/login`.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let period = use_query_map().with_untracked(|query| query.get("period"));
    let page = OnceResource::new(read(period));
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match page.await {
                    Ok((data, history)) => EitherOf3::A(view! { <Dashboard data history /> }),
                    Err(AppError::Unauthorized) => EitherOf3::B(view! { <Redirect path="/login" /> }),
                    Err(err) => EitherOf3::C(view! { <ErrorNotice err test_id="usage-error" /> }),
                }
            })}
        </Suspense>
    }
}

/// The page's data, and the history of the period `?period=` picked (the current one's is in the data).
async fn read(period: Option<String>) -> Result<(DashboardData, Result<UsageHistory, AppError>), AppError> {
    let data = get_dashboard().await?;
    let history = match period {
        Some(period) => get_usage_history(Some(period)).await,
        None => Ok(data.history.clone()),
    };
    Ok((data, history))
}

#[component]
fn Dashboard(data: DashboardData, history: Result<UsageHistory, AppError>) -> impl IntoView {
    let logout = ServerAction::<Logout>::new();
    let locale = use_i18n().get_locale_untracked();
    let other = if locale == Locale::en { "ja" } else { "en" };
    let lang = if locale == Locale::ja { "ja" } else { "en" };
    let unreachable = td_string!(locale, error_unreachable).to_string();
    view! {
        <header class="topbar">
            <span class="topbar__brand">"Tally"</span>
            <span class="topbar__user" data-testid="user-email">{data.user.email}</span>
            // The server sets the language cookie and sends the reader back here.
            <a
                class="topbar__language"
                data-testid="language"
                href=format!("/language/{other}")
                aria-label=td_string!(locale, other_language_label)
            >
                {td!(locale, other_language)}
            </a>
            <ActionForm action=logout attr:class="topbar__logout">
                <button type="submit" data-testid="logout">{td!(locale, sign_out)}</button>
            </ActionForm>
        </header>
        <section class="card">
            <UsageCard meters=data.meters />
            <LiveUpdates
                refresh=td_string!(locale, refresh).to_string()
                refreshing=td_string!(locale, refreshing).to_string()
                interrupted=td_string!(locale, live_interrupted).to_string()
                refresh_failed=td_string!(locale, refresh_failed).to_string()
            />
        </section>
        <UsageAlerts overview=data.alerts />
        <UsageHistoryCard history />
        <section class="card">
            <AiPrompt
                lang
                label=td_string!(locale, ai_label).to_string()
                generate=td_string!(locale, generate).to_string()
                thinking=td_string!(locale, thinking).to_string()
                tokens_line=td_string!(locale,
                    ai_tokens_line,
                    total = "{total}",
                    prompt = "{prompt}",
                    completion = "{completion}",
                    model = "{model}"
                )
                    .to_string()
                unreachable=unreachable.clone()
            />
        </section>
        <BillingHistory overview=data.billing />
        <ApiKeys keys=data.api_keys lang unreachable />
    }
}

/// The meters and their period: the region the live island re-reads when a total changes. Each meter's
/// `data-used` and `data-period` tell the island what the page shows, so a stream message that changes nothing
/// costs no re-read.
#[component]
fn UsageCard(meters: Vec<UsageSummary>) -> impl IntoView {
    let locale = use_i18n().get_locale_untracked();
    // Every meter shares the user's billing period.
    let period = meters.first().map(|summary| {
        let first = crate::i18n::day(locale, &summary.period_first_day);
        let last = crate::i18n::day(locale, &summary.period_last_day);
        let tz = summary.timezone.clone();
        view! {
            <p class="usage-period" data-testid="usage-period">
                {td!(locale, billing_period, first = move || first.clone(), last = move || last.clone(), tz = move || tz.clone())}
            </p>
        }
    });
    view! {
        <div data-region="meters" class="usage-meters">
            {meters.into_iter().map(|summary| view! { <UsageMeter summary /> }).collect_view()}
            {period}
        </div>
    }
}
