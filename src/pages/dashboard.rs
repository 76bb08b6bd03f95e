//! `/`: the signed-in user's dashboard with the UsageMeter.

use leptos::prelude::*;
use leptos_router::components::Redirect;

use crate::auth::{get_current_user, Logout};
use crate::components::{AiPrompt, ApiKeys, BillingHistory, UsageAlerts, UsageHistoryCard, UsageMeter};
use crate::error::AppError;
use crate::usage::{get_usage_summary, UsageSummary};

/// The dashboard; visitors without a session are sent to `/login`.
#[component]
pub fn DashboardPage() -> impl IntoView {
    let user = Resource::new(|| (), |_| get_current_user());
    view! {
        <Suspense fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match user.await {
                    Ok(Some(user)) => view! { <Dashboard email=user.email /> }.into_any(),
                    Ok(None) | Err(AppError::Unauthorized) => view! { <Redirect path="/login" /> }.into_any(),
                    Err(err) => view! { <p class="form-error" role="alert">{err.to_string()}</p> }.into_any(),
                }
            })}
        </Suspense>
    }
}

#[component]
fn Dashboard(email: String) -> impl IntoView {
    let logout = ServerAction::<Logout>::new();
    let summary = Resource::new(|| (), |_| get_usage_summary());
    let (refreshing, set_refreshing) = signal(false);
    // The newest total from the live stream (browser only); everything that shows usage follows it.
    let live = RwSignal::new(None::<UsageSummary>);
    #[cfg(feature = "hydrate")]
    live_updates(live);
    view! {
        <header class="topbar">
            <span class="topbar__brand">"Tally"</span>
            <span class="topbar__user" data-testid="user-email">{email}</span>
            <ActionForm action=logout attr:class="topbar__logout">
                <button type="submit" data-testid="logout">"Sign out"</button>
            </ActionForm>
        </header>
        <section class="card">
            <Transition
                fallback=|| view! { <p class="loading">"Loading usage…"</p> }
                set_pending=set_refreshing
            >
                {move || Suspend::new(async move {
                    match summary.await {
                        Ok(summary) => view! { <UsageCard summary live /> }.into_any(),
                        Err(AppError::Unauthorized) => view! { <Redirect path="/login" /> }.into_any(),
                        Err(err) => {
                            view! { <p class="form-error" role="alert" data-testid="usage-error">{err.to_string()}</p> }
                                .into_any()
                        }
                    }
                })}
            </Transition>
            <button
                class="button-secondary"
                data-testid="refresh-usage"
                disabled=refreshing
                on:click=move |_| summary.refetch()
            >
                {move || if refreshing.get() { "Refreshing…" } else { "Refresh" }}
            </button>
        </section>
        <UsageAlerts live />
        <UsageHistoryCard live />
        <section class="card">
            <AiPrompt on_answer=move |_| summary.refetch() />
        </section>
        <BillingHistory />
        <ApiKeys />
    }
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
    let period = move || {
        current.with(|s| format!("Billing period {} – {} ({})", s.period_first_day, s.period_last_day, s.timezone))
    };
    view! {
        <UsageMeter label="AI tokens this period" used limit />
        <p class="usage-period" data-testid="usage-period">{period}</p>
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
