//! `/`: the signed-in user's dashboard with the UsageMeter.

use leptos::prelude::*;
use leptos_router::components::Redirect;

use crate::auth::{get_current_user, CurrentUser, Logout};
use crate::components::{AiPrompt, ApiKeys, BillingHistory, UsageAlerts, UsageHistoryCard, UsageMeter};
use crate::error::AppError;
use crate::i18n::{t, t_string, use_i18n, Locale};
use crate::usage::{get_usage_summary, UsageSummary};

/// The dashboard; visitors without a session are sent to `/login`.
///
/// The dashboard's own resources are created here, next to the session check rather than inside it: created
/// inside the check's `Suspend`, they were created again whenever it re-ran (server rendering did every query
/// twice on some requests, and disposed resources were read). Without a session they all answer `Unauthorized`
/// at the cost of a session lookup, and the page is a redirect either way.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let user = Resource::new(|| (), |_| get_current_user());
    view! {
        <Suspense fallback=|| ()>
            {move || Suspend::new(async move {
                match user.await {
                    Ok(Some(_)) => ().into_any(),
                    Ok(None) | Err(AppError::Unauthorized) => view! { <Redirect path="/login" /> }.into_any(),
                    Err(err) => view! { <p class="form-error" role="alert">{err.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
        <Dashboard user />
    }
}

#[component]
fn Dashboard(user: Resource<Result<Option<CurrentUser>, AppError>>) -> impl IntoView {
    let email = move || Suspend::new(async move { user.await.ok().flatten().map(|user| user.email) });
    let logout = ServerAction::<Logout>::new();
    let summary = Resource::new(|| (), |_| get_usage_summary());
    // The newest total from the live stream or a refresh (browser only); everything that shows usage follows it.
    let live = RwSignal::new(None::<UsageSummary>);
    // "Refresh" re-reads the total into `live`, like a stream message. (Not `Transition`'s `set_pending`: that
    // creates an isomorphic effect, which on the server ran on a tokio task after the request's reactive owner was
    // disposed and panicked about once per 7,500 dashboard renders, dropping the connection.)
    let refresh = Action::new(|_: &()| get_usage_summary());
    Effect::new(move |_| {
        if let Some(Ok(summary)) = refresh.value().get() {
            // A stream message may have overtaken the refresh's answer: within a period the total only grows.
            let stale = live.with_untracked(|latest| {
                latest.as_ref().is_some_and(|l| l.period_start == summary.period_start && l.used > summary.used)
            });
            if !stale {
                live.set(Some(summary));
            }
        }
    });
    let refreshing = refresh.pending();
    // After a failed first read there is no meter to update: read the resource again instead.
    let reread = move || {
        if summary.get_untracked().is_some_and(|read| read.is_err()) {
            summary.refetch();
        } else {
            refresh.dispatch(());
        }
    };
    let i18n = use_i18n();
    let switch_language = move |ev: leptos::ev::MouseEvent| {
        ev.prevent_default();
        i18n.set_locale(if i18n.get_locale() == Locale::en { Locale::ja } else { Locale::en });
    };
    #[cfg(feature = "hydrate")]
    live_updates(live);
    view! {
        <header class="topbar">
            <span class="topbar__brand">"Tally"</span>
            <span class="topbar__user" data-testid="user-email">
                <Suspense fallback=|| ()>{email}</Suspense>
            </span>
            // A link, so that it also works without JavaScript (the server sets the cookie and sends you back);
            // with JavaScript the page switches in place.
            <a
                class="topbar__language"
                data-testid="language"
                href=move || format!("/language/{}", if i18n.get_locale() == Locale::en { "ja" } else { "en" })
                aria-label=move || t_string!(i18n, other_language_label)
                on:click=switch_language
            >
                {t!(i18n, other_language)}
            </a>
            <ActionForm action=logout attr:class="topbar__logout">
                <button type="submit" data-testid="logout">{t!(i18n, sign_out)}</button>
            </ActionForm>
        </header>
        <section class="card">
            <Transition fallback=move || view! { <p class="loading">{t!(i18n, loading)}</p> }>
                {move || Suspend::new(async move {
                    match summary.await {
                        Ok(summary) => view! { <UsageCard summary live /> }.into_any(),
                        Err(AppError::Unauthorized) => view! { <Redirect path="/login" /> }.into_any(),
                        Err(err) => usage_error(err).into_any(),
                    }
                })}
            </Transition>
            <button
                class="button-secondary"
                data-testid="refresh-usage"
                disabled=refreshing
                on:click=move |_| reread()
            >
                {move || if refreshing.get() { t_string!(i18n, refreshing) } else { t_string!(i18n, refresh) }}
            </button>
            {move || refresh.value().get().and_then(Result::err).map(usage_error)}
        </section>
        <UsageAlerts live />
        <UsageHistoryCard live />
        <section class="card">
            <AiPrompt on_answer=move |_| reread() />
        </section>
        <BillingHistory />
        <ApiKeys />
    }
}

/// Why the usage could not be read (first read or a refresh).
fn usage_error(err: AppError) -> impl IntoView {
    view! { <p class="form-error" role="alert" data-testid="usage-error">{err.to_string()}</p> }
}

/// The meter, kept current by the live stream: it starts from the server-rendered summary and takes every newer
/// total the stream delivers (only changes after it was created, so a fresh refetch is never overwritten by an
/// older stream value).
#[component]
fn UsageCard(summary: UsageSummary, live: RwSignal<Option<UsageSummary>>) -> impl IntoView {
    let current = RwSignal::new(summary);
    Effect::watch(
        move || live.get(),
        move |latest, _, _| {
            if let Some(latest) = latest {
                current.set(latest.clone());
            }
        },
        false,
    );
    let used = Signal::derive(move || current.with(|s| s.used));
    let limit = Signal::derive(move || current.with(|s| s.limit));
    let i18n = use_i18n();
    let first = move || crate::i18n::day(i18n.get_locale(), &current.with(|s| s.period_first_day.clone()));
    let last = move || crate::i18n::day(i18n.get_locale(), &current.with(|s| s.period_last_day.clone()));
    let tz = move || current.with(|s| s.timezone.clone());
    view! {
        <UsageMeter used limit />
        <p class="usage-period" data-testid="usage-period">{t!(i18n, billing_period, first, last, tz)}</p>
    }
}

/// Opens the live usage stream (server-sent events) and writes each summary into `live`. `EventSource`
/// reconnects by itself after a network error; the stream starts with the current total, so nothing is missed.
#[cfg(feature = "hydrate")]
fn live_updates(live: RwSignal<Option<UsageSummary>>) {
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;

    let Ok(source) = web_sys::EventSource::new(crate::usage::LIVE_PATH) else { return };
    let on_usage = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
        if let Some(summary) = event.data().as_string().and_then(|text| serde_json::from_str(&text).ok()) {
            live.set(Some(summary));
        }
    });
    let _ = source.add_event_listener_with_callback("usage", on_usage.as_ref().unchecked_ref());
    let held = StoredValue::new_local(Some((source, on_usage)));
    on_cleanup(move || {
        let _ = held.try_update_value(|held| {
            if let Some((source, _listener)) = held.take() {
                source.close();
            }
        });
    });
}
